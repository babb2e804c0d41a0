"""The worker's consumer: Celery's own, with these changes.

- A message whose body cannot be decoded is parked as a dead letter (reason
  `undecodable`) instead of logged and dropped.
- A signed message (a staff grant, a retry) shows its arguments in task events (Flower)
  without its signature and email, whatever repr its producer sent.
- A message larger than its task may be (VOICEPIPE_MAX_MESSAGE_BYTES; a single-event
  message SINGLE_EVENT_MESSAGE_BYTES) is parked (reason `too_large`, without its body)
  before it is decoded: no producer decides how much memory a worker holds.
- On Redis, the messages a lost connection held unacknowledged are restored through the
  next connection as soon as it is up, instead of by kombu as the lost one closes: that
  restore goes through the broker that is gone, and kombu 5.7 then raises an
  AttributeError that stops the worker (the messages would have waited out the
  visibility timeout). RabbitMQ requeues them itself when the connection closes. Their
  requests are then settled: a task that ends later does not answer them through the
  lost connection (kombu's closed Redis channel raises the same AttributeError).
- The messages a lost connection held come back flagged as redelivered (restored as
  above, or requeued by RabbitMQ). Of those, the ones that were waiting in or being
  written by a batch (first deliveries) are batched again, once, instead of each running
  alone with a delivery counted: the consumer keeps their task ids (`returned_ids`,
  worker/batching.py). A message already running alone keeps its path.
"""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import active_requests, reserved_requests
from kombu.transport import redis as kombu_redis

from voicepipe.authority import signed_tasks

log = logging.getLogger(__name__)

# The returned ids kept at most, the oldest dropped first: a few losses' worth of what an
# events worker holds (MAX_HELD_PER_PROCESS per pool process). A dropped id's message,
# should it still come back, runs alone: correct, and counted.
RETURNED_IDS_KEPT = 50_000

# The start of an undecodable body that its dead letter keeps (base64), for inspection.
KEPT_BODY_BYTES = 65_536
# A single event (its metadata at most VOICEPIPE_MAX_METADATA_BYTES) fits well within this.
SINGLE_EVENT_MESSAGE_BYTES = 262_144
SINGLE_EVENT_TASKS = frozenset({"voicepipe.events.record", "voicepipe.usage.record"})


def byte_limit(task_name: Any) -> int:
    from voicepipe.settings import get_settings

    limit = get_settings().max_message_bytes
    return min(limit, SINGLE_EVENT_MESSAGE_BYTES) if task_name in SINGLE_EVENT_TASKS else limit


def _redact_repr(message: Any, headers: dict[str, Any]) -> None:
    """What task events (Flower, its persistent file) show of a signed message: no signature, no email."""
    from voicepipe.authority import REDACTED_FIELDS, redact

    try:
        _, kwargs, _ = message.decode()
    except Exception:  # left to Celery's own decoding, which parks it (on_decode_error)
        return
    if isinstance(kwargs, dict):
        headers["kwargsrepr"] = repr(redact(kwargs, REDACTED_FIELDS))


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost_tags: list[str] = []
        self.lost_ids: list[str] = []
        # The task ids of batched messages connection losses handed back, not yet seen
        # again (worker/batching.py), oldest first.
        self.returned_ids: dict[str, None] = {}

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        channel = getattr(self.task_consumer, "channel", None)
        qos = getattr(channel, "qos", None)
        from worker.batching import requests_batched, requests_in_batches

        held = set() if channel is None else {
            req for req in {*reserved_requests, *active_requests}
            if not req.acknowledged and req.message.channel is channel}
        batched = [req.id for req in requests_batched() if req in held]
        lost = []
        if isinstance(qos, kombu_redis.QoS):
            qos.restore_at_shutdown = False  # kombu's public switch: restore_lost does it instead
            lost = list(held)
            self.lost_tags.extend(req.message.delivery_tag for req in lost)
            self.lost_ids.extend(batched)
        else:  # RabbitMQ requeues them as the connection closes
            self.keep_returned(batched)

        # Celery cancels each unacknowledged running task; a batch is one job, left to end on
        # its own (its messages are restored anyway, and a second recording is a no-op).
        for req in requests_in_batches():
            active_requests.discard(req)
        super().on_connection_error_after_connected(exc)
        # Their messages are handed back (restore_lost): settled for this worker. The task's
        # ack or reject, when it ends (cancelled above, or still reserved), would go through
        # the lost connection's channel, whose AttributeError stops the worker.
        for req in lost:
            req.acknowledged = True

    def restore_lost(self) -> None:
        """Put back on their queues the messages a lost connection held (worker/batching.py's HandBack.start)."""
        tags, self.lost_tags = self.lost_tags, []
        ids, self.lost_ids = self.lost_ids, []
        if not tags:
            return
        self.keep_returned(ids)  # before the first one comes back
        try:
            qos = self.connection.default_channel.qos
            for tag in tags:
                qos.restore_by_tag(tag, leftmost=True)  # atomic: only if still unacknowledged
        except Exception:  # the broker went away again: the visibility timeout returns them
            log.exception("restoring %d messages held across a connection loss failed", len(tags))
            return
        log.warning("restored %d messages held across a connection loss", len(tags))

    def keep_returned(self, ids: list[str]) -> None:
        self.returned_ids.update(dict.fromkeys(ids))
        for oldest in list(self.returned_ids)[:max(0, len(self.returned_ids) - RETURNED_IDS_KEPT)]:
            del self.returned_ids[oldest]

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            headers = message.headers if isinstance(message.headers, dict) else {}
            size, limit = len(message.body or b""), byte_limit(headers.get("task"))
            if size > limit:
                return self._park(message, "too_large", f"MessageTooLarge: {size} bytes, at most {limit}",
                                  {"body_bytes": size})
            if headers.get("task") in signed_tasks():
                _redact_repr(message, headers)
            return handle(message)

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode("utf-8", "replace")
        self._park(message, "undecodable", f"UndecodableMessage: {type(exc).__name__}: {exc}", {
            "undecodable_body": base64.b64encode(body[:KEPT_BODY_BYTES]).decode("ascii"), "body_bytes": len(body),
            "content_type": message.content_type, "content_encoding": message.content_encoding})

    def _park(self, message: Any, reason: str, error: str, kept: dict[str, Any]) -> None:
        """Park a message no task can run as a dead letter, then acknowledge it."""
        from worker.deadletters import park

        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = str(headers.get("id") or uuid.uuid4())[:255]
        try:
            parked = park(
                task_name=str(headers.get("task") or "(unknown)")[:255], task_id=task_id,
                queue=str((message.delivery_info or {}).get("routing_key") or "")[:64],
                kwargs=kept, reason=reason, error=error, attempts=0,
            )
        except Exception:  # the database is away: left unacknowledged, the broker gives it back later
            log.exception("%s task_id=%r could not be parked; left unacknowledged", error.split(":")[0], task_id)
            return
        log.error("%s task_id=%r parked as dead letter %s", error, task_id, parked.id)
        message.ack()
