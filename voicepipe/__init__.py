"""voicepipe: the Celery worker side of a voice-note AI pipeline.

The plain functions that do the work live in this package (events, metrics,
usage, pipeline, retry); the Celery app is in ``worker``, the task wrappers in
``tasks``, the tables in ``models``.
"""

from __future__ import annotations

__version__ = "0.1.0"
