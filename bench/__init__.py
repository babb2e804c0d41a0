"""Benchmarks: every performance claim measured as a ratio against a baseline in the same run."""
