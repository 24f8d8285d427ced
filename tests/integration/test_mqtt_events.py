"""EventPublisher against a real mosquitto broker: delivery, retained health, broker loss and return.

The broker runs from a temporary config (``listener <free port> 127.0.0.1``, anonymous, no persistence)
and is stopped and started again on the same port in the middle of a test. Without
``/usr/sbin/mosquitto`` (or ``mosquitto`` on PATH) the tests are skipped, unless ``CI`` is set: there a
missing broker is a broken build, not a reason to skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from autoscaler.adapters.mqtt_events import DECISION_SCHEMA, HEALTH_SCHEMA, EventPublisher
from autoscaler.adapters.telemetry import Telemetry
from autoscaler.types import Plan, ShapeChange, UnmetDemand
from tests.integration.replay import free_port
from tests.support.programs import mosquitto_binary

pytestmark = pytest.mark.integration

CLUSTER = "itest"
PREFIX = f"raytide/{CLUSTER}"


class Mosquitto:
    """One mosquitto process on a fixed loopback port, which can be stopped and started again."""

    def __init__(self, binary: str, workdir: Path, port: int, extra_conf: str = "") -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            "log_type notice\n" + extra_conf
        )
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(
                        f"mosquitto did not listen on {self.port} in {timeout}s:\n{self.log.read_text()}"
                    )
                time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(mosquitto_binary(), tmp_path, free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Subscriber:
    """An aiomqtt client collecting every message under the prefix."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        self._client = aiomqtt.Client("127.0.0.1", self.port, timeout=5)
        await self._client.__aenter__()
        await self._client.subscribe(f"{PREFIX}/#", qos=1)
        self._task = asyncio.create_task(self._collect(self._client))
        return self

    async def _collect(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                await self.messages.put(message)
        except aiomqtt.MqttError:
            pass  # the broker went away (the tests stop it on purpose)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._client is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(aiomqtt.MqttError):  # already disconnected
            await self._client.__aexit__(None, None, None)

    async def next(self) -> tuple[str, dict[str, Any], aiomqtt.Message]:
        async with asyncio.timeout(5.0):
            message = await self.messages.get()
        assert isinstance(message.payload, bytes | bytearray)
        return str(message.topic), json.loads(message.payload), message


def change_plan(target: int, *, current: int = 1, policy: str = "throughput") -> Plan:
    return Plan(
        time=1700000000.0 + target,
        policy=policy,
        changes=(
            ShapeChange("cpu4", current=current, target=target, reason=f"to {target}", proposed=target),
            ShapeChange("gpu1", current=1, target=1, reason="keep"),
        ),
        unmet=(UnmetDemand("infer", target_rate=10.0, planned_rate=float("inf"), reason="cap"),),
        reasons=("backlog growing",),
    )


class Hooks:
    """Telemetry as the publisher's hooks, plus events a test can await for the connection state."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.up = asyncio.Event()
        self.down = asyncio.Event()

    def event_published(self, topic: str) -> None:
        self.telemetry.event_published(topic)

    def event_dropped(self, topic: str) -> None:
        self.telemetry.event_dropped(topic)

    def connection_changed(self, connected: bool) -> None:
        self.telemetry.connection_changed(connected)
        (self.up if connected else self.down).set()
        (self.down if connected else self.up).clear()


async def wait_for(event: asyncio.Event, what: str) -> None:
    try:
        async with asyncio.timeout(5.0):
            await event.wait()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
async def publisher(mosquitto: Mosquitto) -> AsyncIterator[tuple[EventPublisher, Hooks]]:
    hooks = Hooks(Telemetry())
    pub = EventPublisher(
        cluster=CLUSTER,
        port=mosquitto.port,
        hooks=hooks,
        queue_size=5,
        publish_timeout=2.0,
        reconnect_min=0.1,
        reconnect_max=0.4,
    )
    await pub.start()
    try:
        yield pub, hooks
    finally:
        await pub.aclose(drain_seconds=1.0)


def metric(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


async def test_decisions_and_retained_health_arrive_as_documented(
    mosquitto: Mosquitto, publisher: tuple[EventPublisher, Hooks]
) -> None:
    pub, hooks = publisher
    telemetry = hooks.telemetry
    assert pub.topics == {"decisions": f"{PREFIX}/decisions", "health": f"{PREFIX}/health"}
    async with Subscriber(mosquitto.port) as sub:
        assert pub.publish_health("ok")
        assert not pub.publish_health("ok"), "an unchanged health state is not re-published"
        assert not pub.publish_decision(change_plan(1)), "a plan that changes nothing is not an event"
        assert pub.publish_decision(change_plan(3))

        topic, health, _ = await sub.next()
        assert topic == f"{PREFIX}/health"
        assert health["schema"] == HEALTH_SCHEMA
        assert health["cluster"] == CLUSTER and health["run"] == pub.run
        assert health["state"] == "ok" and health["reasons"] == []
        assert health["seq"] == 1 and isinstance(health["time"], float)

        topic, decision, _ = await sub.next()
        assert topic == f"{PREFIX}/decisions"
        assert decision == {
            "schema": DECISION_SCHEMA,
            "cluster": CLUSTER,
            "run": pub.run,
            "seq": 2,
            "time": 1700000003.0,
            "policy": "throughput",
            "held": False,
            "changes": [
                {
                    "shape": "cpu4",
                    "current": 1,
                    "target": 3,
                    "delta": 2,
                    "direction": "up",
                    "proposed": 3,
                    "reason": "to 3",
                }
            ],
            "targets": {"cpu4": 3, "gpu1": 1},
            "unmet": [{"stage": "infer", "target_rate": 10.0, "planned_rate": None, "reason": "cap"}],
            "reasons": ["backlog growing"],
        }

    async with asyncio.timeout(5):
        await pub.flushed()
    assert pub.published == 2 and pub.dropped == 0
    assert metric(telemetry, "raytide_mqtt_events_published_total", topic="decisions") == 1
    assert metric(telemetry, "raytide_mqtt_connected") == 1

    # A subscriber that comes later still learns the current health: it is retained.
    async with Subscriber(mosquitto.port) as late:
        topic, health, message = await late.next()
        assert topic == f"{PREFIX}/health" and health["state"] == "ok"
        assert message.retain


async def test_broker_loss_never_blocks_and_recovery_delivers(
    mosquitto: Mosquitto, publisher: tuple[EventPublisher, Hooks]
) -> None:
    pub, hooks = publisher
    telemetry = hooks.telemetry
    pub.publish_health("ok")
    async with asyncio.timeout(5):
        await pub.flushed()

    mosquitto.stop()
    await wait_for(hooks.down, "the publisher to notice the broker is gone")
    assert not pub.connected
    assert metric(telemetry, "raytide_mqtt_connected") == 0

    # Eight decisions into a queue of five, with the broker down: every call returns at once, none
    # raises, the three oldest are dropped and counted.
    started = time.perf_counter()
    for target in range(2, 10):
        assert pub.publish_decision(change_plan(target))
    pub.publish_health("degraded", ["mqtt broker restarting"])
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05, f"publishing took {elapsed:.3f}s with the broker down"
    await asyncio.sleep(0.5)  # a few reconnect attempts fail meanwhile
    assert pub.dropped == 3
    assert metric(telemetry, "raytide_mqtt_events_dropped_total", topic="decisions") == 3
    assert pub.queued == 6  # five decisions and the health event

    mosquitto.start()
    await wait_for(hooks.up, "the publisher to reconnect")
    async with asyncio.timeout(5):
        await pub.flushed()
    assert pub.queued == 0
    # 1 health before the outage; after it the new health and the five decisions that were kept.
    assert pub.published == 7
    assert metric(telemetry, "raytide_mqtt_events_published_total", topic="decisions") == 5

    async with Subscriber(mosquitto.port) as sub:
        # The restarted broker (no persistence) forgot everything; the health it has is the one the
        # publisher sent after reconnecting.
        topic, health, message = await sub.next()
        assert topic == f"{PREFIX}/health" and message.retain
        assert health["state"] == "degraded" and health["reasons"] == ["mqtt broker restarting"]

        assert pub.publish_decision(change_plan(12))
        topic, decision, _ = await sub.next()
        assert topic == f"{PREFIX}/decisions"
        # seq numbers keep counting through drops, so a consumer can see the gap.
        assert decision["seq"] == 11 and decision["changes"][0]["target"] == 12


async def test_aclose_with_no_broker_returns_within_its_deadline() -> None:
    telemetry = Telemetry()
    pub = EventPublisher(cluster=CLUSTER, port=free_port(), hooks=telemetry, reconnect_min=0.05)
    await pub.start()
    pub.publish_health("ok")
    pub.publish_decision(change_plan(2))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    lost = await pub.aclose(drain_seconds=0.3)
    assert time.monotonic() - started < 2.0
    assert lost == 2
    assert metric(telemetry, "raytide_mqtt_events_dropped_total", topic="health") == 1
    assert metric(telemetry, "raytide_mqtt_events_dropped_total", topic="decisions") == 1
    assert not pub.publish_decision(change_plan(3)), "a closed publisher takes no more events"


async def test_an_event_the_broker_refuses_is_dropped_and_does_not_block_the_rest(tmp_path: Path) -> None:
    broker = Mosquitto(mosquitto_binary(), tmp_path, free_port(), extra_conf="max_packet_size 2048\n")
    broker.start()
    try:
        telemetry = Telemetry()
        pub = EventPublisher(
            cluster=CLUSTER, port=broker.port, hooks=telemetry, reconnect_min=0.05, reconnect_max=0.1
        )
        await pub.start()
        async with Subscriber(broker.port) as sub:
            huge = change_plan(2)
            huge = Plan(time=huge.time, policy=huge.policy, changes=huge.changes, reasons=("x" * 4096,))
            assert pub.publish_decision(huge)
            assert pub.publish_decision(change_plan(3))
            pub.publish_health("ok")
            health_states: list[str] = []
            while True:
                topic, doc, _ = await sub.next()
                if topic.endswith("/health"):
                    health_states.append(doc["state"])
                    continue
                assert doc["changes"][0]["target"] == 3, "the refused event must never arrive"
                break
        # Each refusal cut the connection, so the broker published the will; the health the publisher
        # re-sends after reconnecting corrects it.
        assert "offline" in health_states
        async with asyncio.timeout(5):
            await pub.flushed()
        async with Subscriber(broker.port) as late:
            _, health, _ = await late.next()
            assert health["state"] == "ok"
        assert metric(telemetry, "raytide_mqtt_events_dropped_total", topic="decisions") == 1
        await pub.aclose(drain_seconds=1.0)
    finally:
        broker.stop()


def test_topic_names_are_validated() -> None:
    with pytest.raises(ValueError, match="not allowed in an MQTT topic"):
        EventPublisher(cluster="a/b")
    with pytest.raises(ValueError, match="not allowed in an MQTT topic"):
        EventPublisher(cluster="ok", prefix="site/+")
    assert EventPublisher(cluster="c", prefix="site/raytide").topics["health"] == "site/raytide/health"
