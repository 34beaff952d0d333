"""A fork server: what every model server imports, imported once, then one fork per model server.

`modelhost up` starts one per Python environment (control/forkserver.py says when) and talks to
it over a Unix socket pair, nothing else: it is the only one who may ask for a model server. A
model server forked here starts in a few hundredths of a second instead of seconds, and the
imported code and data (MLflow, pandas, numpy, pyarrow, scikit-learn, the HTTP stack: about
200 MB) stay one copy in memory, shared copy-on-write by all the servers of this environment;
each model's own memory is its model and what serving it touches.

Keeping those pages shared is deliberate:
- `gc.freeze()` before each fork moves every object alive into a generation the collector never
  visits: a child's collections would otherwise write to the header of every imported object,
  copying every page of the heap into each child.
- Nothing here runs after the imports but this loop: no threads (a fork copies only the
  forking thread), no event loop (each child makes its own), no caches filled.

Each fork is a model server of its own: its own process group, its log on stdout and stderr, its
Unix socket, its environment variables and, with isolation, the model user with its model's
groups (set before any model code runs; root's privileges are gone before the child returns
from here). Then it is `modelhost worker`, as a fresh process would be.

The messages, one JSON object per SOCK_SEQPACKET datagram, open file descriptors beside it:
- from `up`: {"start": id, "options": [...], "env": {...}, "cwd", "user", "group",
  "extra_groups", "umask", "title"} with [the bound socket, the log file];
- to `up`: {"ready": pid} once imported; {"started": id, "pid": pid} with [a pidfd of it];
  {"failed": id, "error": "..."}; {"exited": pid, "code": returncode}.
When `up` closes its end (it stopped, or died), the fork server kills what it forked and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import importlib.util
import json
import logging
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any

log = logging.getLogger("modelhost.forkserver")

# What every model server imports, then flavors' libraries where they are installed: a model
# whose library is not among them imports it in its own server, at its own cost.
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow",
    "pyarrow.pandas_compat",
    "orjson",
    "httpx",
    "uvicorn",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.on",
    "uvicorn.supervisors",
    "mlflow.pyfunc",
    "mlflow.pyfunc.scoring_server",
    "mlflow.models",
    "modelhost.cli",
    "modelhost.worker.app",
    "modelhost.worker.server",
)
FLAVORS = {  # a library, and what loading one of its models imports
    "sklearn": (
        "mlflow.sklearn", "sklearn.linear_model", "sklearn.ensemble", "sklearn.tree",
        "sklearn.pipeline", "sklearn.preprocessing", "sklearn.compose", "sklearn.impute",
    ),
    "skops": ("skops.io",),
    "xgboost": ("mlflow.xgboost",),
    "lightgbm": ("mlflow.lightgbm",),
    "statsmodels": ("mlflow.statsmodels",),
}  # fmt: skip
MESSAGE_BYTES = 1 << 20  # a start request: options and environment variables
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def preload() -> list[str]:
    """Import what model servers need; the names of the flavors' libraries found."""
    for module in PRELOAD:
        importlib.import_module(module)
    found = []
    for library, modules in FLAVORS.items():
        if importlib.util.find_spec(library) is None:
            continue
        try:
            for module in modules:
                importlib.import_module(module)
        except Exception as e:  # a broken install: its models will say so when they load
            log.warning("Could not import %s ahead of its models: %s", library, e)
        else:
            found.append(library)
    return found


def warm_up() -> None:
    """Load and score a small model as a model server does, if scikit-learn is here.

    Loading and predicting import more (MLflow's check of the model's requirements reads every
    installed package's metadata; scikit-learn's frame handling, ...) and fill caches: done
    here once, that is shared memory and time no model server spends again.
    """
    if "sklearn" not in sys.modules:
        return
    import tempfile

    import mlflow.sklearn
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from modelhost.worker import protocol
    from modelhost.worker.model import ServedModel

    frame = pd.DataFrame({"a": [0.0, 1.0], "b": [1.0, 0.0]})
    with tempfile.TemporaryDirectory(prefix="modelhost-warm-up-") as folder:
        model = LogisticRegression().fit(frame, [0, 1])
        path = os.path.join(folder, "model")
        mlflow.sklearn.save_model(model, path, pip_requirements=["scikit-learn"])
        served = ServedModel.load("warm-up", path)
        body = b'{"dataframe_split": {"columns": ["a", "b"], "data": [[0.5, 0.5]]}}'
        given = protocol.parse(body, "application/json", served.spec)
        protocol.render(served.predict(given.data, given.params), given.wrapped)


def main(fd: int) -> None:
    from modelhost.logs import configure_logging

    configure_logging()
    channel = socket.socket(fileno=fd)
    found = preload()
    try:
        warm_up()
    except Exception:  # only a head start lost: say so and serve on
        log.exception("Warming up failed; model servers import what it would have on their own")
    log.info("Imported what model servers need (flavors: %s)", ", ".join(found) or "none")
    # SIGCHLD wakes the loop through a pipe: children are reaped as they exit, and said so.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # `up` says when to stop, by closing its end
    forked: set[int] = set()
    _send(channel, {"ready": os.getpid()})
    try:
        while True:
            readable, _, _ = select.select([channel, wake_r], [], [])
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                _reap(channel, forked)
            if channel in readable:
                try:
                    message, fds, _, _ = socket.recv_fds(channel, MESSAGE_BYTES, 2)
                except ConnectionResetError:
                    message = b""
                if not message:  # `up` is gone: so are its model servers
                    break
                _start(channel, json.loads(message), fds, forked, (wake_r, wake_w))
    finally:
        for pid in forked:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _start(
    channel: socket.socket,
    request: dict[str, Any],
    fds: list[int],
    forked: set[int],
    own_fds: tuple[int, int],
) -> None:
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        _send(channel, {"failed": request.get("start"), "error": "expected a socket and a log"})
        return
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()  # everything alive now stays out of the collector's reach in the child
    pid = os.fork()
    if pid == 0:
        _become(request, fds, channel, own_fds)  # never returns
    for fd in fds:
        os.close(fd)
    forked.add(pid)
    # The pidfd lets `up` see the server exit, and signal it, with no pid that could be reused.
    pidfd = os.pidfd_open(pid)
    try:
        _send(channel, {"started": request["start"], "pid": pid}, (pidfd,))
    finally:
        os.close(pidfd)


def _become(
    request: dict[str, Any], fds: list[int], channel: socket.socket, own_fds: tuple[int, int]
) -> None:
    """In the child: become the model server `request` describes, then run it; never returns."""
    code = 1
    try:
        listener, output = fds
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        channel.close()  # model code must never ask for a server of its own
        for fd in own_fds:
            os.close(fd)
        os.dup2(output, 1)
        os.dup2(output, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd in (output, null):
            os.close(fd)
        if request.get("user") is not None:  # as Popen's user=, group=, extra_groups=
            os.setgroups(request["extra_groups"])
            os.setgid(request["group"])
            os.setuid(request["user"])
        if request.get("umask") is not None:
            os.umask(request["umask"])
        _die_with_parent()
        if request.get("cwd"):
            os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _forget_inherited_state()
        _name_process(request.get("title", "modelhost worker"))
        from modelhost.cli import main

        args = ["worker", "--fd", str(listener), *request["options"]]
        sys.argv = ["modelhost", *args]
        main(args=args, prog_name="modelhost")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _die_with_parent() -> None:
    """SIGKILL when the fork server exits (set after the user changes, which clears it)."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it exited before the line above
        os._exit(1)


def _forget_inherited_state() -> None:
    """What the fork server's imports computed for it that must be the server's own."""
    import tempfile

    tempfile.tempdir = None  # TMPDIR is the server's scratch folder now
    if "numpy" in sys.modules:  # one global random state per model, not one shared sequence
        sys.modules["numpy"].random.seed()


def _name_process(title: str) -> None:
    """What `ps -o comm` and `top` show for the server (the kernel keeps 15 bytes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(title.encode()[:15]), 0, 0, 0)


def _reap(channel: socket.socket, forked: set[int]) -> None:
    while forked:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        forked.discard(pid)
        with contextlib.suppress(OSError):  # `up` is gone: the loop sees it next
            _send(channel, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(channel: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    socket.send_fds(channel, [json.dumps(message).encode()], list(fds))


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--fd") + 1]))
