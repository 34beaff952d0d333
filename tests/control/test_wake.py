"""Waking a sleeping model through the serving-control interface, with a stand-in controller
that publishes route tables as the real one would (no process, no network)."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import pytest

from modelhost.control.routes import (
    EndpointState,
    ModelRoutes,
    RouteBoard,
    RouteTable,
    ServerAddress,
    VersionRoute,
    VersionState,
)
from modelhost.control.serving import ServingControl
from modelhost.control.settings import ServingSettings
from modelhost.control.store import StateStore
from modelhost.errors import NotFound, NotReady

SERVER = ServerAddress(1, "/sockets/1.sock")


def table(state: EndpointState, version: VersionState, server=None) -> RouteTable:
    route = VersionRoute(version, "", server, aliases=("champion",))
    refs = {"champion": "1"} if version is not VersionState.PENDING else {}
    routes = ModelRoutes(state, "", "auto", MappingProxyType({"1": route}), MappingProxyType(refs))
    return RouteTable(MappingProxyType({"m": routes}))


ASLEEP = table(EndpointState.SCALED_TO_ZERO, VersionState.SCALED_TO_ZERO)
WAKING = table(EndpointState.PENDING, VersionState.PENDING)
READY = table(EndpointState.READY, VersionState.READY, SERVER)


class Controller:
    """Publishes WAKING when nudged, then READY after `wake_s` (never, if None)."""

    def __init__(self, board: RouteBoard, wake_s: float | None) -> None:
        self.board = board
        self.wake_s = wake_s
        self.nudges = 0

    def nudge(self) -> None:
        self.nudges += 1
        asyncio.get_running_loop().call_soon(self.board.publish, WAKING)
        if self.wake_s is not None:
            asyncio.get_running_loop().call_later(self.wake_s, self.board.publish, READY)


def control(tmp_path, wake_s: float | None) -> tuple[ServingControl, Controller]:
    board = RouteBoard()
    board.publish(ASLEEP)
    controller = Controller(board, wake_s)
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    serving = ServingControl(
        store, "http://127.0.0.1:9", ServingSettings(), board, controller.nudge, lambda _: tmp_path
    )
    return serving, controller


def test_requests_that_come_together_share_one_wake_up_and_its_event(tmp_path):
    serving, controller = control(tmp_path, wake_s=0.2)

    async def together() -> list[float | None]:
        assert serving.sleeping("m")
        woken = await asyncio.gather(*(serving.wake("m", ref, 30) for ref in ("1", "champion")))
        for _ in range(100):  # the event is written on a thread, once the wake-up is over
            if serving.store.events("m"):
                break
            await asyncio.sleep(0.05)
        return woken

    woken = asyncio.run(together())
    assert controller.nudges == 1
    assert all(ms is not None and ms > 0 for ms in woken)
    assert not serving.sleeping("m")
    [event] = serving.store.events("m")
    assert event["message"].startswith("Woke up for a request in ")


def test_an_unknown_reference_is_404_and_wakes_nothing(tmp_path):
    serving, controller = control(tmp_path, wake_s=0.2)
    with pytest.raises(NotFound, match="No served model 'm' with a version, stage or alias '7'"):
        asyncio.run(serving.wake("m", "7", 30))
    assert controller.nudges == 0
    assert serving.sleeping("m")


def test_a_wake_up_longer_than_the_timeout_is_503_and_goes_on(tmp_path):
    serving, controller = control(tmp_path, wake_s=None)

    async def too_slow() -> None:
        with pytest.raises(NotReady, match=r"still waking up after 0\.2 s"):
            await serving.wake("m", "1", 0.2)
        assert serving.sleeping("m")  # the next request waits for the same wake-up
        controller.board.publish(READY)
        assert await serving.wake("m", "1", 30) is not None

    asyncio.run(too_slow())
    assert controller.nudges == 1
