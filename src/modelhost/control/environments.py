"""The Python environment a model runs in: the current one, or one built for it with uv.

Built environments live under a root folder, one per cache key (`<root>/<key>/`), so versions
and models that need the same packages share one. An environment is usable only once its
marker file is written, the last step of a build; builders of one key take turns on a file lock.
On the platform, builds run packages' build scripts as model code: with no credential in their
environment and, as root, as the model user (control/isolation.py); what they built is then
sealed, root's and read-only, since versions of other models may share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import modelhost
from modelhost.config import EnvManager
from modelhost.control import isolation as isolating
from modelhost.control.isolation import Isolation
from modelhost.control.requirements import Requirements, normalized, unmet_here
from modelhost.errors import ModelhostError

Log = Callable[[str], None]

# What the model server imports besides MLflow (and its CLI entry point, `python -m modelhost`).
WORKER_PACKAGES = (
    "uvicorn",
    "httptools",
    "uvloop",
    "orjson",
    "prometheus-client",
    "click",
    "httpx",
)
MARKER = ".modelhost-environment.json"
# uv's error lines: plain prefixes when piped, a drawn tree (\u00d7, box corners) on a terminal.
_UV_ERROR_START = ("error:", "\u00d7")
_UV_PREFIX = re.compile(
    r"^\s*(?:error:|cause:|caused by:|hint:|\u00d7|[\u2500-\u257f\u25b6]+)\s*", re.I
)


class EnvironmentFailed(ModelhostError):
    """The model's environment could not be prepared; the message says why and what to do."""


@dataclass(frozen=True)
class Environment:
    """A Python environment a model can be served in."""

    key: str  # the cache key of the model's needs
    python: Path  # the interpreter to run the model server with
    built: bool  # whether this call built it (False: the current one, or one built before)
    path: Path | None = None  # the environment's folder; None for the current interpreter
    source_dir: Path | None = None  # holds only `modelhost`: put on PYTHONPATH to import it

    @property
    def current(self) -> bool:
        """Whether this is the interpreter running now."""
        return self.path is None

    def process_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """Environment variables for running `python -m modelhost ...` with `python`."""
        env = dict(base)
        if self.path is None:
            return env
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = os.pathsep.join(filter(None, [str(self.path / "bin"), base.get("PATH")]))
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self.source_dir), base.get("PYTHONPATH")])
        )
        env.pop("PYTHONHOME", None)
        return env


def prepare(
    requirements: Requirements,
    manager: EnvManager | str,
    root: str | Path,
    log: Log = lambda line: None,
    isolation: Isolation | None = None,
) -> Environment:
    """The environment to serve a model with these requirements in, built under `root` if need be.

    `log` receives every line of progress and build output, as it happens. With `isolation`
    (the platform's), the build runs as model code and a built environment is handed over to
    its group.
    """
    manager = EnvManager(manager)
    if manager is EnvManager.LOCAL:
        return _current(requirements)
    if manager is EnvManager.AUTO:
        reason = unmet_here(requirements)
        if reason is None:
            log("The current environment satisfies the model's requirements: using it.")
            return _current(requirements)
        log(f"The model needs an environment of its own: {reason}.")
    environment = build(requirements, Path(root), log, isolation)
    if isolation is not None and environment.path is not None:
        isolation.open_gate(environment.path, isolation.group(f"env:{environment.key}"))
    return environment


def environment_key(requirements: Requirements) -> str:
    """The cache key: a hash of everything the built environment would hold."""
    lines = [*requirements.identity(), "--", *sorted(_server_lines(requirements))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:24]


def build(
    requirements: Requirements,
    root: Path,
    log: Log = lambda line: None,
    isolation: Isolation | None = None,
) -> Environment:
    """The environment at `<root>/<key>/`, built with uv unless it already is."""
    key = environment_key(requirements)
    path = (root / key).resolve()
    if not (path / MARKER).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with _lock(root / f"{key}.lock", log):
            if not (path / MARKER).is_file():  # another builder may have finished meanwhile
                _build(requirements, path, log, isolation)
                return _built(key, path, root, built=True)
    log(f"Using the environment {path}, built before.")
    return _built(key, path, root, built=False)


def _current(requirements: Requirements) -> Environment:
    return Environment(environment_key(requirements), Path(sys.executable), built=False)


def _built(key: str, path: Path, root: Path, built: bool) -> Environment:
    return Environment(key, path / "bin" / "python", built, path, _modelhost_source(root))


def _server_lines(requirements: Requirements) -> list[str]:
    """What the model server needs beyond the model's own requirements."""
    lines = _worker_requirements()
    if "mlflow" not in requirements.names():
        lines.append("mlflow")
    return lines


def _worker_requirements() -> list[str]:
    """The worker's packages, with the bounds modelhost itself declares for them."""
    declared: dict[str, str] = {}
    try:
        for line in metadata.requires("modelhost") or []:
            requirement = Requirement(line)
            if not requirement.marker or requirement.marker.evaluate():
                declared[canonicalize_name(requirement.name)] = normalized(requirement)
    except metadata.PackageNotFoundError:  # run from a source tree: no bounds to copy
        pass
    return [declared.get(name, name) for name in WORKER_PACKAGES]


def _build(requirements: Requirements, path: Path, log: Log, isolation: Isolation | None) -> None:
    started = time.monotonic()
    shutil.rmtree(path, ignore_errors=True)  # what a builder that died half-way left behind
    log(f"Building the model's environment in {path} with uv...")
    group = isolation.group(f"env:{path.name}") if isolation is not None else None
    try:
        with contextlib.ExitStack() as stack:
            builder = _Builder(path.parent, isolation, group)
            if group is not None:
                builder.private(stack.enter_context(isolating.build_space(isolation, path, group)))
            uv = _uv()
            interpreter = _interpreter(uv, requirements, builder, log)
            code, output = builder.run([uv, "venv", "--python", interpreter, str(path)], log)
            if code:
                raise EnvironmentFailed(f"Could not create the environment: {_uv_says(output)}")
            install = [*(e.text for e in requirements.entries), *_server_lines(requirements)]
            _write_readable(path / "requirements.txt", "\n".join(install) + "\n")
            command = [uv, "pip", "install", "--python", str(path / "bin" / "python")]
            # Bytecode now, once: a sealed environment is read-only to the servers it runs, so
            # each of them would otherwise compile MLflow and pandas again at every start.
            command += ["--compile-bytecode", "-r", str(path / "requirements.txt")]
            if requirements.constraints:
                _write_readable(
                    path / "constraints.txt",
                    "\n".join(e.text for e in requirements.constraints) + "\n",
                )
                command += ["-c", str(path / "constraints.txt")]
            code, output = builder.run(command, log)
            if code:
                raise EnvironmentFailed(_install_failure(output, requirements))
        if group is not None:
            isolating.seal(path, group)  # shared between models: no build may change it later
        seconds = round(time.monotonic() - started, 1)
        _write_marker(path, requirements, install, seconds)
    except BaseException:
        # Nothing half-built may stay: without its marker it would be rebuilt anyway, but a
        # failed build's gigabytes should not linger until then.
        shutil.rmtree(path, ignore_errors=True)
        raise
    log(f"Built the model's environment in {seconds} s.")


def _write_marker(path: Path, requirements: Requirements, install: list[str], s: float) -> None:
    record = {
        "key": path.name,
        "python": requirements.python,
        "model": str(requirements.model_dir),
        "requirements": install,
        "constraints": [e.text for e in requirements.constraints],
        "build_seconds": s,
        "built_at": time.time(),
    }
    partial = path / f"{MARKER}.partial"
    _write_readable(partial, json.dumps(record, indent=2))
    os.replace(partial, path / MARKER)  # atomic: the environment is whole, or not there


def _uv() -> str:
    from uv import find_uv_bin  # only builders need it; model environments do not have it

    return find_uv_bin()


def _write_readable(path: Path, text: str) -> None:
    """A file of the environment's: read by its builds and servers, whoever runs them."""
    path.write_text(text)
    os.chmod(path, 0o644)


class _Builder:
    """Runs uv for a build: as modelhost's user, or as the model user in the build's group."""

    def __init__(self, cwd: Path, isolation: Isolation | None, group: int | None) -> None:
        self.cwd = cwd
        self.isolation = isolation
        self.options = isolation.process_options(group) if isolation is not None else {}
        self.extra_env: dict[str, str] = {}

    def private(self, scratch: Path) -> None:
        """As the model user: a cache, HOME and working folder of its own, gone afterwards."""
        self.cwd = scratch
        self.extra_env = {"HOME": str(scratch), "TMPDIR": str(scratch),
                          "UV_CACHE_DIR": str(scratch / "uv-cache")}  # fmt: skip

    def run(self, command: list[str], log: Log) -> tuple[int, list[str]]:
        base = self.isolation.environ(os.environ) if self.isolation is not None else os.environ
        env = {**base, **self.extra_env, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
        env.pop("VIRTUAL_ENV", None)  # the target is always named; never the caller's venv
        return _run(command, self.cwd, env, self.options, log)


def _interpreter(uv: str, requirements: Requirements, builder: _Builder, log: Log) -> str:
    """The Python to build with: the current one if the model declares its version, else uv's."""
    wanted = requirements.python_minor
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wanted is None or wanted == here:
        return sys.executable
    code, output = builder.run([uv, "python", "find", wanted], log)
    if code or not output:
        raise EnvironmentFailed(
            f"Python {wanted} is not available on this machine; the model declares Python "
            f"{requirements.python}. Install Python {wanted} where uv finds it (on PATH, or "
            f"`uv python install {wanted}`), or log the model again from Python {here}, "
            "or serve it with --env-manager local to try the current Python."
        )
    return output[-1].strip()


# The uv processes builds run now, so that stopping modelhost need not wait for their next line.
_running: set[subprocess.Popen[str]] = set()
_running_lock = threading.Lock()


def stop_builds() -> None:
    """Kill the uv processes of the builds under way (modelhost is stopping): each build then
    fails at once and removes what it had built, rather than going on until uv next speaks."""
    with _running_lock:
        for process in _running:
            _kill(process)


def _kill(process: subprocess.Popen[str]) -> None:
    """uv and what it started (a package's build backend, a compiler): its own session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _run(
    command: list[str], cwd: Path, env: dict[str, str], options: dict[str, Any], log: Log
) -> tuple[int, list[str]]:
    """Run uv, each line of its output to `log` as it comes; (exit code, output lines)."""
    output: list[str] = []
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
        **options,
    ) as process:
        with _running_lock:
            _running.add(process)
        try:
            for line in process.stdout:  # type: ignore[union-attr]
                output.append(line.rstrip("\n"))
                log(output[-1])
        except BaseException:  # interrupted: uv must not go on building behind our back
            _kill(process)
            raise
        finally:
            with _running_lock:
                _running.discard(process)
        return process.wait(), output


def _uv_says(output: list[str]) -> str:
    """uv's error, from its first `error:` line on, as one sentence-like line."""
    start = next(
        (i for i, line in enumerate(output) if line.lstrip().startswith(_UV_ERROR_START)),
        max(len(output) - 10, 0),
    )
    text = ""
    for line in output[start:]:
        prefix = _UV_PREFIX.match(line)
        part = line[prefix.end() if prefix else 0 :].strip()
        if not part:
            continue
        # A prefixed line is a new cause, said after a colon; anything else continues the last.
        new_cause = prefix is not None and prefix.group().strip() and text
        text += ": " if new_cause and not text.endswith((".", ":", "?", "!")) else " "
        text += part
    return text.strip() or "uv failed without saying why."


def _install_failure(output: list[str], requirements: Requirements) -> str:
    """Which of the model's requirements uv could not install, and uv's reason."""
    said = _uv_says(output)
    mentioned = re.findall(r"[a-z0-9][a-z0-9._-]*", said.lower())
    names = {canonicalize_name(name) for name in mentioned}
    culprits = [
        e.text
        for e in requirements.entries
        if e.requirement is not None and canonicalize_name(e.requirement.name) in names
    ]
    where = requirements.source or "its requirements"
    culprit = f"{', '.join(culprits)} cannot be installed. " if culprits else ""
    return (
        f"Could not install the model's requirements: {culprit}uv says: {said} "
        f"Correct the model's {where} and log it again."
    )


@contextmanager
def _lock(path: Path, log: Log) -> Iterator[None]:
    """Hold `path`'s exclusive lock: one builder per key, across processes."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("Another process is building this environment; waiting for it...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _modelhost_source(root: Path) -> Path:
    """A folder holding only a link to this modelhost package, to put on PYTHONPATH.

    Environments are keyed by the model's needs alone and outlive modelhost upgrades; running
    modelhost from its own source rather than a copy installed into each environment keeps the
    code in the environment the very code that started it, without rebuilding anything.
    """
    package = Path(modelhost.__file__).resolve().parent
    folder = root / ".modelhost" / hashlib.sha256(str(package).encode()).hexdigest()[:16]
    link = folder / "modelhost"
    if not link.is_dir() or link.resolve() != package:
        folder.mkdir(parents=True, exist_ok=True)
        # Read by model servers, whichever user runs them: modelhost's own code, not a secret.
        os.chmod(folder.parent, 0o755)
        os.chmod(folder, 0o755)
        partial = folder / f".modelhost-{secrets.token_hex(8)}"
        partial.symlink_to(package, target_is_directory=True)
        os.replace(partial, link)
    return folder


def enter(
    local_path: str, manager: EnvManager | str, module: str, env: Mapping[str, str], what: str
) -> None:
    """Become `python -m module` (with `env`) in the environment the model at `local_path`
    declares, built under the home if need be; returns only if that is the current one.
    `what` the program is, for the log: "the server".

    exec keeps this process's id and group, so Ctrl-C and SIGTERM reach the new program as they
    would have reached this one, and nothing is left to supervise.
    """
    from modelhost.config import default_home
    from modelhost.control.requirements import read_requirements

    log = logging.getLogger("modelhost.environment")
    environment = prepare(read_requirements(local_path), manager, default_home() / "envs", log.info)
    if environment.current:
        return
    log.info("Starting %s again with %s", what, environment.python)
    sys.stdout.flush()
    sys.stderr.flush()
    python = str(environment.python)
    os.execve(python, [python, "-m", module], environment.process_env(env))
