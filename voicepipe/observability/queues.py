"""Messages waiting in each queue, read through kombu (Redis and RabbitMQ alike).

kombu knows each transport's layout: on Redis the priority lists of a queue
(``<queue>\\x06\\x16<priority>``) and any ``global_keyprefix``; on RabbitMQ the
passive ``queue.declare`` answer. Nothing here knows Redis keys by hand.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

# The worker's queues (worker/routes.py QUEUES; tests/unit pins the two equal). Kept
# here so `voicepipe status` and the exporter need no worker import.
QUEUE_NAMES: tuple[str, ...] = ("metrics", "pipeline", "retry", "events")
# A status command facing a dead broker answers in seconds (worker/config.py's bound).
TIMEOUT_S = 5.0


def queue_depths(
    broker_url: str,
    queues: Iterable[str] = QUEUE_NAMES,
    transport_options: Mapping[str, Any] | None = None,
) -> dict[str, int | None]:
    """Messages waiting in each queue; None for all when the broker cannot be read.

    On RabbitMQ a queue never declared (no worker ever consumed it) is None; on Redis a
    queue is a list that exists only while it holds messages, so an absent one is 0.
    """
    names = list(queues)
    try:
        return _depths(broker_url, names, transport_options or {})
    except Exception as exc:
        print(f"warning: cannot read queue depths from the broker: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return dict.fromkeys(names)


def _depths(broker_url: str, names: list[str], transport_options: Mapping[str, Any]) -> dict[str, int | None]:
    from kombu import Connection
    from kombu.exceptions import ChannelError

    options = {"socket_timeout": TIMEOUT_S, "socket_connect_timeout": TIMEOUT_S,
               "max_retries": 1, **transport_options}
    depths: dict[str, int | None] = {}
    with Connection(broker_url, connect_timeout=TIMEOUT_S, transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, timeout=TIMEOUT_S)
        virtual = conn.transport.driver_type != "amqp"
        channel = conn.channel()
        try:
            for name in names:
                try:
                    depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except ChannelError:
                    # Not found. RabbitMQ closes the channel after a failed passive declare.
                    depths[name] = 0 if virtual else None
                    if not virtual:
                        channel.close()
                        channel = conn.channel()
        finally:
            channel.close()
    return depths
