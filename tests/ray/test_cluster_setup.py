"""The Ray cluster tests run on: real nodes, a driver in another process, a node lost."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RayCluster, eventually, process_starts, still_running

ANSWER_TIMEOUT_S = 120  # a driver connects in seconds; far longer on a machine busy with others
# A driver, as `modelhost up --engine ray` is one: another process, connected until it ends.
# It answers "answer JSON" to each line it reads: "nodes", or "env NAME" (what a task pinned on
# each alive node sees in NAME, by the node's port). Ray writes its own lines there too.
DRIVER = """
import json, os, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=1)
def environment(name):
    return os.environ.get(name)

for line in sys.stdin:
    command, *arguments = line.split()
    nodes = ray.nodes()
    if command == "nodes":
        answer = [{"port": n["NodeManagerPort"], "alive": n["Alive"],
                   "cpus": n["Resources"].get("CPU", 0)} for n in nodes]
    elif command == "env":
        alive = [n for n in nodes if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        seen = ray.get([environment.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(arguments[0]) for n in alive])
        answer = {n["NodeManagerPort"]: value for n, value in zip(alive, seen)}
    print("answer", json.dumps(answer), flush=True)
"""
NODE_ENV = {"MODELHOST_TEST_SETTING": "from-the-test"}


@pytest.fixture(scope="module")
def ray_node_env() -> dict[str, str]:
    return NODE_ENV


class Driver:
    """The DRIVER script in a subprocess, with only the cluster's environ and a bare home."""

    def __init__(self, cluster: RayCluster, home: Path) -> None:
        # Nothing from this process: what the driver needs must be in `environ()`, and a
        # token file in the home (~/.ray/auth_token) must not stand in for it.
        env = {"PATH": os.environ["PATH"], "HOME": str(home), **cluster.environ()}
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, cluster.address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def ask(self, command: str) -> object:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"the driver did not answer {command!r} in time") from None
            if not line:
                self.process.wait(timeout=30)
                raise AssertionError(f"the driver exited:\n{self.process.stderr.read()}")
            if line.startswith("answer "):
                return json.loads(line.removeprefix("answer "))

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")  # the driver has exited

    def stop(self) -> None:
        self.process.stdin.close()  # the driver's loop ends; ray.shutdown() at its exit
        try:
            self.process.wait(timeout=60)
        finally:
            self.process.kill()
            self.process.wait()
            self.process.stdout.close()
            self.process.stderr.close()


@pytest.fixture(scope="module")
def driver(ray_cluster, tmp_path_factory) -> Iterator[Driver]:
    driver = Driver(ray_cluster, tmp_path_factory.mktemp("driver-home"))
    yield driver
    driver.stop()


def alive(driver: Driver) -> dict[int, float]:
    """The CPUs of each alive node, by its port, as the driver sees them."""
    return {n["port"]: n["cpus"] for n in driver.ask("nodes") if n["alive"]}


def test_a_driver_in_another_process_sees_every_node_with_its_cpus(ray_cluster, driver):
    expected = {ray_cluster.head.port: 0, **{n.port: 2 for n in ray_cluster.nodes}}
    assert len(ray_cluster.nodes) == 2
    assert alive(driver) == expected


def test_every_node_gives_its_processes_the_environment_of_the_test(ray_cluster, driver):
    seen = driver.ask("env MODELHOST_TEST_SETTING")
    assert seen == {str(n.port): "from-the-test" for n in ray_cluster.nodes}


def test_a_removed_node_is_seen_dead_and_a_new_one_joins(ray_cluster, driver):
    driver.ask("env MODELHOST_TEST_SETTING")  # a task on each worker node: Ray workers there
    lost = ray_cluster.nodes[0]
    processes = process_starts(lost.pids())
    commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in processes]
    assert any(c.startswith(b"ray::") for c in commands), commands
    ray_cluster.remove_node(lost)

    assert still_running(processes) == []  # its Ray workers too, not only its raylet
    eventually(lambda: _assert_dead(driver, lost.port), timeout_s=60)
    assert lost not in ray_cluster.nodes
    # The driver, connected through the head, goes on; it sees the other worker alive.
    assert set(alive(driver)) == {ray_cluster.head.port, ray_cluster.nodes[0].port}

    added = ray_cluster.add_node()
    eventually(lambda: _assert_equal(alive(driver).get(added.port), 2), timeout_s=60)
    assert driver.ask("env MODELHOST_TEST_SETTING")[str(added.port)] == "from-the-test"


def _assert_dead(driver: Driver, port: int) -> None:
    nodes = driver.ask("nodes")
    assert [n["alive"] for n in nodes if n["port"] == port] == [False], nodes


def _assert_equal(a: object, b: object) -> None:
    assert a == b


def test_stopping_the_cluster_leaves_no_ray_process(ray_cluster, driver):
    # Last in the module: it stops the module's cluster (stop() again at teardown is a no-op).
    driver.ask("env MODELHOST_TEST_SETTING")
    driver.stop()
    processes = process_starts(ray_cluster.pids())
    commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in processes]
    # The driver's tasks left Ray workers (`ray::IDLE`), which outlive their driver.
    assert any(c.startswith(b"ray::") for c in commands), commands
    assert any(b"/raylet/raylet" in c for c in commands), commands

    ray_cluster.stop()

    assert still_running(processes) == []
    # Not one process names the cluster's folder: no raylet, GCS or agent of it anywhere.
    left = subprocess.run(["pgrep", "-af", ray_cluster.temp_dir], capture_output=True, text=True)
    assert left.stdout == ""
