"""pipeline tasks (see worker/routes.py for the names)."""

from __future__ import annotations
