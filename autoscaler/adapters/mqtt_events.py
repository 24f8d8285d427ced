"""Decision and health events over MQTT (aiomqtt), published without ever holding up the control loop.

``publish_decision`` and ``publish_health`` only put an event on a bounded in-memory queue; a background task
owns the broker connection. Topics and payloads (built by the pure ``decision_event`` and ``health_event``)
are in docs/own-metrics.md ("MQTT events"); delivery and its reasons in docs/architecture.md ("Publishing").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiomqtt

from autoscaler.adapters.telemetry import HealthState
from autoscaler.types import Plan

__all__ = [
    "DECISION_SCHEMA",
    "HEALTH_SCHEMA",
    "EventHooks",
    "EventPublisher",
    "decision_event",
    "health_event",
    "plan_changes_something",
]

log = logging.getLogger(__name__)

DECISION_SCHEMA = "raytide.decision/1"
HEALTH_SCHEMA = "raytide.health/1"

TopicKind = Literal["decisions", "health"]
_QOS = 1
_MAX_ATTEMPTS = 5
"""Failed publishes of one event on an established connection before it is given up, so an event the broker
keeps refusing (too large, say) cannot block every later one. Failing to connect costs no attempt."""
_FORBIDDEN_IN_TOPIC = ("+", "#", "\0")


class EventHooks(Protocol):
    """Where the publisher reports what happens to events (``telemetry.Telemetry`` implements it)."""

    def event_published(self, topic: str) -> None: ...

    def event_dropped(self, topic: str) -> None: ...

    def connection_changed(self, connected: bool) -> None: ...


def plan_changes_something(plan: Plan) -> bool:
    return any(c.target != c.current for c in plan.changes)


def _num(x: float) -> float | None:
    # JSON has no NaN or Infinity; null says "not a number" without breaking strict parsers.
    return float(x) if math.isfinite(x) else None


def decision_event(plan: Plan, *, cluster: str, run: str, seq: int) -> dict[str, Any]:
    """The JSON object published for ``plan`` (see docs/own-metrics.md, "MQTT events")."""
    return {
        "schema": DECISION_SCHEMA,
        "cluster": cluster,
        "run": run,
        "seq": seq,
        "time": _num(plan.time),
        "policy": plan.policy,
        "held": plan.held,
        "changes": [
            {
                "shape": c.shape,
                "current": c.current,
                "target": c.target,
                "delta": c.delta,
                "direction": c.direction,
                "proposed": c.proposed,
                "reason": c.reason,
            }
            for c in plan.changes
            if c.target != c.current
        ],
        "targets": plan.targets(),
        "unmet": [
            {
                "stage": u.stage,
                "target_rate": _num(u.target_rate),
                "planned_rate": _num(u.planned_rate),
                "reason": u.reason,
            }
            for u in plan.unmet
        ],
        "reasons": list(plan.reasons),
    }


def health_event(
    state: str, reasons: Iterable[str], *, cluster: str, run: str, seq: int | None, time: float | None
) -> dict[str, Any]:
    """The JSON object published on the health topic (``seq``/``time`` are null in the will)."""
    return {
        "schema": HEALTH_SCHEMA,
        "cluster": cluster,
        "run": run,
        "seq": seq,
        "time": None if time is None else _num(time),
        "state": state,
        "reasons": list(reasons),
    }


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class _Event:
    kind: TopicKind
    payload: bytes
    retain: bool


def _check_topic_part(value: str, what: str, *, allow_slash: bool) -> None:
    if not value:
        raise ValueError(f"{what} must not be empty")
    bad = [c for c in _FORBIDDEN_IN_TOPIC if c in value]
    if not allow_slash and "/" in value:
        bad.append("/")
    if bad:
        raise ValueError(f"{what} {value!r} contains characters not allowed in an MQTT topic: {bad}")
    if value.endswith("/"):
        raise ValueError(f"{what} {value!r} must not end with '/'")


class EventPublisher:
    """Publishes decision and health events to an MQTT broker from a background task.

    ``queue_size`` bounds the decision events waiting for the broker; past it the oldest is dropped. Health
    is kept apart: one slot, holding the latest health event until it is sent, so a flood of decisions
    can never push out the state a subscriber needs most. Reconnects back off from
    ``reconnect_min`` to ``reconnect_max`` seconds (doubling, with ±20 % jitter so a fleet of daemons does
    not reconnect in lockstep). ``publish_timeout`` bounds the wait for one PUBACK and for the CONNACK.
    Topics: ``<prefix>/decisions`` (not retained) and ``<prefix>/health`` (retained; the MQTT will publishes
    ``offline`` there); ``prefix`` defaults to ``raytide/<cluster>``. ::

        publisher = EventPublisher(cluster="prod", host="broker", hooks=telemetry)
        await publisher.start()
        publisher.publish_health("ok")
        publisher.publish_decision(plan)          # per tick; a no-op when the plan changes nothing
        await publisher.aclose(drain_seconds=5)   # deliver what it can within 5 s
    """

    def __init__(
        self,
        *,
        cluster: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        prefix: str | None = None,
        username: str | None = None,
        password: str | None = None,
        identifier: str | None = None,
        queue_size: int = 256,
        hooks: EventHooks | None = None,
        keepalive: int = 15,
        publish_timeout: float = 5.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_topic_part(cluster, "cluster name", allow_slash=False)
        if prefix is not None:
            _check_topic_part(prefix, "topic prefix", allow_slash=True)
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if not (0 < reconnect_min <= reconnect_max):
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if publish_timeout <= 0:
            raise ValueError("publish_timeout must be > 0")
        self.cluster = cluster
        self.run = secrets.token_hex(8)
        """Identifies this publisher's events: ``seq`` starts again at 1 in every run."""
        self.prefix = prefix if prefix is not None else f"raytide/{cluster}"
        self.topics: dict[TopicKind, str] = {
            "decisions": f"{self.prefix}/decisions",
            "health": f"{self.prefix}/health",
        }
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._identifier = identifier
        self._queue_size = queue_size
        self._hooks = hooks
        self._keepalive = keepalive
        self._publish_timeout = publish_timeout
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._clock = clock

        self._queue: deque[_Event] = deque()
        """Decision events, oldest first; at most ``queue_size``."""
        self._pending_health: _Event | None = None
        """The health event still to send (only the latest matters: it is retained)."""
        self._inflight: _Event | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._connected = False
        self._seq = 0
        self._last_health: tuple[str, tuple[str, ...]] | None = None
        self._last_health_event: _Event | None = None
        self._failed_event: _Event | None = None
        self._failures = 0
        self.published = 0
        self.dropped = 0

    # --- the tick's side: never blocks, never raises on broker trouble --------------------------------

    def publish_decision(self, plan: Plan) -> bool:
        """Queue the event for ``plan`` if it changes any node count; True when an event was queued."""
        if self._closed or not plan_changes_something(plan):
            return False
        doc = decision_event(plan, cluster=self.cluster, run=self.run, seq=self._next_seq())
        self._enqueue(_Event("decisions", _encode(doc), retain=False))
        return True

    def publish_health(self, state: HealthState | str, reasons: Iterable[str] = ()) -> bool:
        """Queue a retained health event if state or reasons differ from the last one; True if queued."""
        key = (state, tuple(reasons))
        if self._closed or key == self._last_health:
            return False
        self._last_health = key
        doc = health_event(
            state, key[1], cluster=self.cluster, run=self.run, seq=self._next_seq(), time=self._clock()
        )
        event = _Event("health", _encode(doc), retain=True)
        self._last_health_event = event
        self._pending_health = event
        self._wake_up()
        return True

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def queued(self) -> int:
        """Events waiting for the broker, the one being published included."""
        extra = (self._pending_health is not None) + (self._inflight is not None)
        return len(self._queue) + extra

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the publisher is already started")
        if self._closed:
            raise RuntimeError("the publisher is closed")
        self._task = asyncio.create_task(self._run(), name=f"raytide-mqtt-{self.cluster}")

    async def flushed(self) -> None:
        """Return once every queued event is acknowledged by the broker (bound it with asyncio.timeout)."""
        await self._idle.wait()

    async def aclose(self, drain_seconds: float = 5.0) -> int:
        """Deliver what can be delivered within ``drain_seconds``, then disconnect.

        Returns the number of events left undelivered (each also reported as dropped).
        """
        if self._closed:
            return 0
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            # Not a caller-side timeout: what is left after the deadline must still be counted and the
            # connection closed.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_seconds):
                    await self._idle.wait()
            task.cancel()
            # The cancelled task disconnects gracefully (no will); a broker that does not answer the
            # DISCONNECT must not hold shutdown up for long.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(1.0, self._publish_timeout)):
                    await asyncio.gather(task, return_exceptions=True)
        lost = [e for e in (self._inflight, self._pending_health, *self._queue) if e is not None]
        self._inflight = self._pending_health = None
        self._queue.clear()
        for event in lost:
            self._drop(event)
        if lost:
            log.warning("mqtt: %d event(s) undelivered at shutdown", len(lost), extra={"lost": len(lost)})
        self._set_connected(False)
        return len(lost)

    # --- queue ----------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _enqueue(self, event: _Event) -> None:
        self._queue.append(event)
        self._trim()
        self._wake_up()

    def _wake_up(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _trim(self) -> None:
        while len(self._queue) > self._queue_size:
            self._drop(self._queue.popleft())

    def _drop(self, event: _Event) -> None:
        self.dropped += 1
        self._call_hook("event_dropped", event.kind)

    def _count_failure(self, event: _Event) -> int:
        if event is not self._failed_event:
            self._failed_event, self._failures = event, 0
        self._failures += 1
        return self._failures

    def _requeue(self, event: _Event) -> None:
        if event.kind == "health":
            # A newer health event queued meanwhile supersedes the one that failed.
            if self._pending_health is None:
                self._pending_health = event
            return
        # It is the oldest decision: if the queue filled up meanwhile, it is the one to drop.
        self._queue.appendleft(event)
        self._trim()

    def _call_hook(self, name: str, arg: Any) -> None:
        if self._hooks is None:
            return
        try:
            getattr(self._hooks, name)(arg)
        except Exception:
            log.exception("mqtt: the %s hook failed", name)

    def _set_connected(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            self._call_hook("connection_changed", connected)

    # --- the background task --------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._reconnect_min
        failures = 0
        while True:
            try:
                await self._session()
            except Exception as e:
                if self._connected:
                    # It did connect: the next attempt starts from the shortest delay again.
                    delay, failures = self._reconnect_min, 0
                    log.warning("mqtt: connection to %s:%d lost: %s", self._host, self._port, e)
                elif failures == 0:
                    log.warning("mqtt: cannot connect to %s:%d: %s", self._host, self._port, e)
                else:
                    log.debug("mqtt: reconnect to %s:%d failed: %s", self._host, self._port, e)
            self._set_connected(False)
            failures += 1
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(self._reconnect_max, delay * 2)

    async def _session(self) -> None:
        """One connection: publish until it fails, which it reports by raising."""
        will = aiomqtt.Will(
            topic=self.topics["health"],
            payload=_encode(
                health_event(
                    "offline",
                    ["raytide's connection to the broker ended without a goodbye"],
                    cluster=self.cluster,
                    run=self.run,
                    seq=None,
                    time=None,
                )
            ),
            qos=_QOS,
            retain=True,
        )
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            identifier=self._identifier,
            logger=log.getChild("paho"),
            will=will,
            clean_session=True,
            keepalive=self._keepalive,
            timeout=self._publish_timeout,
        )
        async with client:
            self._set_connected(True)
            log.info("mqtt: connected to %s:%d", self._host, self._port)
            self._resend_health()
            watch = asyncio.create_task(self._watch(client))
            try:
                while True:
                    event = await self._next_event(watch)
                    await self._send(client, event, watch)
            finally:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)

    def _resend_health(self) -> None:
        if self._pending_health is None and self._last_health_event is not None:
            self._pending_health = self._last_health_event
            self._idle.clear()

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # Nothing is subscribed, so the iterator yields nothing: it only raises when the connection drops,
        # which is how a lost connection is noticed while there is nothing to publish.
        async for _ in client.messages:
            pass

    async def _next_event(self, watch: asyncio.Task[None]) -> _Event:
        while self._pending_health is None and not self._queue:
            self._wake.clear()
            waiter = asyncio.create_task(self._wake.wait())
            try:
                await asyncio.wait({waiter, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if watch.done():
                watch.result()
                raise aiomqtt.MqttError("disconnected")
        if self._pending_health is not None:
            event, self._pending_health = self._pending_health, None
        else:
            event = self._queue.popleft()
        self._inflight = event
        return event

    async def _send(self, client: aiomqtt.Client, event: _Event, watch: asyncio.Task[None]) -> None:
        publish = asyncio.create_task(
            client.publish(
                self.topics[event.kind],
                event.payload,
                qos=_QOS,
                retain=event.retain,
                timeout=self._publish_timeout,
            )
        )
        try:
            await asyncio.wait({publish, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not publish.done():
                publish.cancel()
                watch.result()
                raise aiomqtt.MqttError("disconnected while publishing")
            publish.result()
        except BaseException as e:
            if not publish.done():
                publish.cancel()
            self._inflight = None
            if isinstance(e, Exception) and self._count_failure(event) >= _MAX_ATTEMPTS:
                # An event the broker keeps refusing (too large, say) must not block every later one.
                log.warning("mqtt: dropping a %s event after %d failed attempts", event.kind, _MAX_ATTEMPTS)
                self._drop(event)
            else:
                self._requeue(event)
            raise
        self._inflight = None
        self.published += 1
        self._call_hook("event_published", event.kind)
        if self._pending_health is None and not self._queue:
            self._idle.set()
