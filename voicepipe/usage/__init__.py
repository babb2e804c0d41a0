"""AI usage: recording one row per LLM call, daily rollups, and usage queries."""
