"""Maintenance: retention cleanup (cleanup.py). Stalled-artifact re-queueing lives in recovery."""
