"""Event validation, additive counters, and recording."""
