"""Celery task modules: thin wrappers that validate arguments, open a session and
call the plain functions of the ``voicepipe`` package."""
