"""Alembic migrations (one chain). Applied by `voicepipe migrate`."""
