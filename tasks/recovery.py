"""voicepipe.maintenance.requeue_stalled: the sweeper that recovers stalled artifacts."""

from __future__ import annotations
