"""Retry operations for platform staff (service.py) and an artifact's retry history (history.py)."""
