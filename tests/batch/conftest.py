"""Batch fixtures: models saved once, `modelhost batch` in subprocesses, a memory watch."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from modelhost.processes import stop_group

TOYS = Path(__file__).parent.parent / "toys"
TREES = ["sklearn.tree._tree.Tree"]  # MLflow's skops format asks us to trust tree nodes
REQUIREMENTS = {"pip_requirements": ["mlflow", "scikit-learn", "pandas"]}
RUN_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def batch_models(tmp_path_factory) -> dict[str, Path]:
    """The models batch tests score with, saved as MLflow models in a folder each."""
    root = tmp_path_factory.mktemp("batch-models")
    paths = {
        name: root / name
        for name in ("forest", "probabilities", "frame_output", "fragile", "sleeper", "sum")
    }
    features, labels = load_iris(return_X_y=True, as_frame=True)
    forest = RandomForestRegressor(n_estimators=10, random_state=0).fit(features, labels * 1.5)
    mlflow.sklearn.save_model(
        forest,
        paths["forest"],
        signature=infer_signature(features, np.zeros(1)),
        skops_trusted_types=TREES,
        **REQUIREMENTS,
    )
    classifier = RandomForestClassifier(n_estimators=5, random_state=0).fit(features, labels)
    mlflow.sklearn.save_model(
        classifier,
        paths["probabilities"],
        signature=infer_signature(features, np.zeros((1, 3))),
        pyfunc_predict_fn="predict_proba",  # a 2-D answer: one list of 3 per row
        skops_trusted_types=TREES,
        **REQUIREMENTS,
    )
    mlflow.pyfunc.save_model(
        paths["frame_output"],
        python_model=str(TOYS / "frame_output.py"),
        signature=infer_signature(features, pd.DataFrame({"label": ["big"], "score": [1.0]})),
        **REQUIREMENTS,
    )
    one_column = {
        "fragile": pd.DataFrame({"x": [1.0]}),
        "sleeper": pd.DataFrame({"seconds": [0.1]}),
    }
    for name, example in one_column.items():
        mlflow.pyfunc.save_model(
            paths[name],
            python_model=str(TOYS / f"{name}.py"),
            signature=infer_signature(example, np.zeros(1)),
            **REQUIREMENTS,
        )
    mlflow.pyfunc.save_model(
        paths["sum"], python_model=str(TOYS / "scaled_sum.py"), **REQUIREMENTS
    )  # no signature: any numeric columns
    return paths


def batch_command(model: str | Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "modelhost", "batch", str(model), *options]


def run_batch(
    model: str | Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`modelhost batch MODEL OPTIONS...` to its end; its output and exit code."""
    return subprocess.run(
        batch_command(model, "--env-manager", "local", *options),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )


class Job:
    """`modelhost batch` started in a process group of its own, stopped with it at the end."""

    def __init__(self, model: str | Path, *options: str, log: Path, **popen: object) -> None:
        self.log_path = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                batch_command(model, "--env-manager", "local", *options),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **popen,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float = RUN_TIMEOUT_S) -> int:
        return self.process.wait(timeout=timeout_s)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal(self, sig: signal.Signals, group: bool = False) -> None:
        (os.killpg if group else os.kill)(self.process.pid, sig)

    def stop(self) -> None:
        stop_group(self.process, grace_s=5)


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    """Jobs a test starts; whatever is left of them is stopped after it."""
    started: list[Job] = []
    yield started
    for job in started:
        job.stop()


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll `check` until it returns something true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*"))


class MemoryCap:
    """Kills a process group when its memory grows past `cap_bytes` over its start-up footprint.

    Memory is the PSS of every process of the group (/proc/<pid>/smaps_rollup), so pages
    forked workers share with their parent count once. The start-up footprint is taken when
    `started()` first holds (the model is loaded), sampled every ~20 ms after that.
    """

    def __init__(self, group: int, cap_bytes: int, started: Callable[[], bool]) -> None:
        self.group, self.cap, self.started = group, cap_bytes, started
        self.baseline: int | None = None
        self.peak_growth = 0
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            if self.baseline is None:
                if self.started():
                    self.baseline = group_pss(self.group)
                continue
            growth = group_pss(self.group) - self.baseline
            self.peak_growth = max(self.peak_growth, growth)
            if growth > self.cap:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.group, signal.SIGKILL)
                return


def group_pss(group: int) -> int:
    """Bytes of PSS of the processes in process group `group`."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            # Fields after the command name, which may hold spaces: state, ppid, pgrp, ...
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != group:
                continue
            for line in Path(entry.path, "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue  # a process that ended between the listing and the read
    return total
