"""kombu's Redis transport for the worker's consumer, taking many waiting messages per round trip.

kombu's Redis transport delivers one message per BRPOP and then records it as unacked
(ZADD to the unacked index, HSET of the message: its visibility-timeout emulation) in a
MULTI/EXEC of its own: two round trips per message, 58 % of a worker's main-process
time when producers send one event per task (py-spy on bench/recording.py's single-event
drain; the pool process was waiting for it).

Here, after each BRPOP the consumer takes up to MAX_EXTRA more messages of the same
list in one Lua script, which pops them (RPOP with a count, Redis >= 6.2) and records
each as unacked in the same atomic step, exactly as kombu's QoS.append records it
(ZADD of its delivery tag, HSET of ``[payload, exchange, routing_key]``): no message is
ever outside both the queue and the unacked set, which is a smaller window than
kombu's own (BRPOP, then MULTI). It never takes more than the channel's prefetch
allows (QoS.can_consume_max_estimate), so tasks that are not batched still get one
message per process. Everything else (acks, rejects, restore of unacked messages at
shutdown and after the visibility timeout) is kombu's, unchanged.

Only the worker uses it (worker/signals.py points the ``redis`` transport alias here
when a worker starts); producers keep kombu's transport. With a global key prefix
or an older Redis the consumer reads as kombu does.
"""

from __future__ import annotations

import logging
from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger(__name__)

# At most this many messages besides the BRPOP's own per round trip.
MAX_EXTRA = 100

# KEYS: the list, the unacked index, the unacked hash. ARGV: how many, the time.
# The payload is stored as it came (not re-encoded: cjson would round numbers).
_POP_AND_HOLD = """
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if not items then return {} end
local now = tonumber(ARGV[2])
for _, item in ipairs(items) do
  local properties = cjson.decode(item)['properties']
  local info = properties['delivery_info']
  local tag = properties['delivery_tag']
  redis.call('ZADD', KEYS[2], now, tag)
  redis.call('HSET', KEYS[3], tag,
    '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key']) .. ']')
end
return items
"""


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, except for messages the pop script already recorded as unacked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held_by_script: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.held_by_script:
            self.held_by_script.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # kombu's in-memory bookkeeping only
            return
        super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _pop_script: Any = None
    _can_pop_many: bool | None = None

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own _brpop_read, which does not say which list the message came from.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            key, item = dest__item
            dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self.connection._deliver(loads(bytes_to_str(item)), dest)
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()
        self._pop_more(key, dest)
        return True

    def _pop_more(self, key: bytes, dest: str) -> None:
        room = self.qos.can_consume_max_estimate()
        n = MAX_EXTRA if room is None else min(MAX_EXTRA, room)
        if n <= 0 or not self._pops_many():
            return
        with self.conn_or_acquire() as client:
            items = self._pop_script(keys=[key, self.unacked_index_key, self.unacked_key], args=[n, time()],
                                     client=client)
        for item in items or ():
            message = loads(bytes_to_str(item))
            self.qos.held_by_script.add(message["properties"]["delivery_tag"])
            self.connection._deliver(message, dest)

    def _pops_many(self) -> bool:
        if self._can_pop_many is None:
            with self.conn_or_acquire() as client:
                version = str(client.info("server").get("redis_version", "0"))
            major, minor = (int(part) for part in (version.split(".") + ["0"])[:2])
            self._can_pop_many = not self.global_keyprefix and (major, minor) >= (6, 2)
            if self._can_pop_many:
                self._pop_script = self.client.register_script(_POP_AND_HOLD)
            else:
                log.info("Redis %s or a key prefix: one message per BRPOP, as kombu reads", version)
        return bool(self._can_pop_many)


class Transport(kombu_redis.Transport):
    Channel = Channel
