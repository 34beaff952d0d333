"""Model code runs as an unprivileged user, each model behind a group of its own.

Any signed-in user may serve a model, so model code (model servers, and environment builds,
which run packages' build scripts) is untrusted. When modelhost runs as root:

- Model code runs as one unprivileged OS user (`--model-user`, created if missing), with an
  environment scrubbed of credentials (control/scrub.py) and umask 077.
- All model servers share that user, so file modes alone cannot keep one model from another:
  each model, and each built environment, gets a numeric group of its own, allocated for this
  run and named in no /etc/group. A model server runs with its model's group as its primary
  group (plus its environment's group); an environment build with the environment's group.
  The primary group also keeps model servers from tracing or reading /proc of each other: the
  kernel lets a process do that only to processes with the same uid *and* the same gids.
  Signals are what the shared uid still allows: one model's code may kill another's server,
  which the controller then restarts.
- What a model may read sits behind one gate folder, owned by root and readable by its group
  only (0750): its fetched versions (`models/<model>/`), its environment (`envs/<key>/`), its
  scratch folder (`scratch/<n>/`, 0770: the only place it may write). Below a gate everything
  is root's and read-only (0755/0644), so granting or revoking is one chown of the gate, and
  groups left from a previous run are reset at start.
- The home is 0711: the model user may pass through it to its gates but not list it; the state
  database, the registry, the logs and anything else in it are root's alone (o-rwx), and
  modelhost creates every file owner-only (umask 077) from then on.
- Python itself must be reachable: where the interpreter, modelhost or the home lie below a
  folder the model user may not enter (often /root), it is let through that folder only
  (an ACL entry granting search, not listing, to that one user), and the log says so.

When modelhost does not run as root, none of this applies (it cannot change users): model code
runs as modelhost's user, with the scrubbed environment, and reaches model servers only as the
gateway does, through sockets in a folder only that user may enter.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import shutil
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import modelhost
from modelhost.control.scrub import scrubbed
from modelhost.errors import ModelhostError

log = logging.getLogger("modelhost.controller")

DEFAULT_MODEL_USER = "modelhost-model"
# Numeric groups for models and environments: far above the ids distributions hand out.
GROUPS_START = 1_835_532_288
MODEL_FACING = ("models", "envs", "scratch")  # the home's folders model code passes through


class IsolationError(ModelhostError):
    """modelhost cannot run model code as the model user; the message says what to do."""


class Isolation:
    """How model code runs: as the model user behind per-model groups (root), or as we are."""

    def __init__(self, home: Path, uid: int | None, secrets: Iterable[str | None] = ()) -> None:
        self.home = home
        self.uid = uid  # None: modelhost is not root, model code runs as modelhost's user
        self.secrets = [s for s in secrets if s]
        self._groups: dict[str, int] = {}
        self._next_group = GROUPS_START
        self._lock = threading.Lock()  # groups are allocated from preparing threads too

    @classmethod
    def for_platform(cls, home: Path, model_user: str, secrets: Iterable[str | None]) -> Isolation:
        """Isolation for `modelhost up`: the model user's, if we are root; the home secured."""
        if os.geteuid() != 0:
            log.info(
                "modelhost does not run as root: model code runs as its user (uid %d) and can "
                "read what it reads; only its environment is scrubbed of credentials.",
                os.geteuid(),
            )
            return cls(home, None, secrets)
        isolation = cls(home, _model_user(model_user), secrets)
        isolation.secure_home()
        isolation.let_through()
        return isolation

    @property
    def enabled(self) -> bool:
        return self.uid is not None

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """What model code gets of `base`: no credential."""
        return scrubbed(base, self.secrets)

    def group(self, owner: str) -> int | None:
        """The group of a model ("model:<name>") or environment ("env:<key>") for this run."""
        if not self.enabled:
            return None
        with self._lock:
            if owner not in self._groups:
                while _group_exists(self._next_group):
                    self._next_group += 1
                self._groups[owner] = self._next_group
                self._next_group += 1
            return self._groups[owner]

    def process_options(
        self, group: int | None, extra_groups: Iterable[int] = ()
    ) -> dict[str, Any]:
        """subprocess.Popen arguments that run model code as the model user in `group`."""
        if not self.enabled or group is None:
            return {}
        return {
            "user": self.uid,
            "group": group,
            "extra_groups": list(extra_groups),
            "umask": 0o077,
        }

    def secure_home(self) -> None:
        """The home 0711, all but the model-facing folders root's alone, every gate shut."""
        os.umask(0o077)  # from now on, what modelhost writes is root's alone unless handed over
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o711)
        for entry in self.home.iterdir():
            if entry.name not in MODEL_FACING and not entry.is_symlink():
                os.chmod(entry, stat.S_IMODE(entry.stat().st_mode) & 0o700)
        shutil.rmtree(self.home / "scratch", ignore_errors=True)  # left by a run that died
        for name in MODEL_FACING:
            folder = self.home / name
            folder.mkdir(exist_ok=True)
            os.chown(folder, 0, 0)
            os.chmod(folder, 0o711)
            # Groups are this run's: shut every gate a previous run left open.
            for entry in folder.iterdir():
                if entry.is_symlink():
                    continue
                os.chown(entry, 0, 0)
                os.chmod(entry, stat.S_IMODE(entry.stat().st_mode) & 0o700)
        source = self.home / "envs" / ".modelhost"
        if source.is_dir():
            open_tree(source)  # modelhost's own code, for built environments: not a secret

    def open_gate(self, folder: Path, group: int | None) -> None:
        """Let `group` read below `folder` (root's, 0750); nobody else of the model user."""
        if group is None:
            return
        os.chown(folder, 0, group)
        os.chmod(folder, 0o750)

    def scratch(self, name: str, group: int | None) -> Path | None:
        """A writable folder of its own for one model server: its HOME and TMPDIR."""
        if group is None:
            return None
        folder = self.home / "scratch" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.chown(folder, 0, group)
        os.chmod(folder, 0o770)
        return folder

    def let_through(self) -> None:
        """Let the model user reach Python, modelhost and the home, through folders that bar it.

        Called again before model code starts: a chmod (tools that tidy /tmp do) may have
        taken the passage away meanwhile.
        """
        if self.uid is None:
            return
        for path in [*_python_paths(), self.home]:
            for folder in [*reversed(path.parents), path]:
                if folder.is_dir() and not _searchable(folder, self.uid):
                    _grant_search(folder, self.uid)
                    log.warning(
                        "Let the model user (uid %d) pass through %s, without listing it, so "
                        "it can reach %s. Install Python and modelhost's home where every user "
                        "may read them to avoid this.",
                        self.uid, folder, path,
                    )  # fmt: skip


@contextlib.contextmanager
def build_space(isolation: Isolation | None, path: Path, group: int | None) -> Iterator[Path]:
    """While an environment builds: `path` writable by its group, a private cache and HOME."""
    assert isolation is not None and group is not None, "only for isolated builds"
    isolation.let_through()
    path.mkdir(parents=True)
    os.chown(path, 0, group)
    os.chmod(path, 0o770)
    scratch = isolation.scratch(f"build-{path.name}", group)
    assert scratch is not None
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def open_tree(folder: Path) -> None:
    """Everything below `folder` root's and read-only to all: dirs 0755, files 0644 (or 0755)."""
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            os.lchown(path, 0, 0)
            if os.path.islink(path):
                continue
            mode = os.lstat(path).st_mode
            os.chmod(path, 0o755 if stat.S_ISDIR(mode) or mode & 0o111 else 0o644)
    os.chown(folder, 0, 0)
    os.chmod(folder, 0o755)


def seal(folder: Path, group: int) -> None:
    """A built environment: root's and read-only below, readable by its group only."""
    open_tree(folder)
    os.chown(folder, 0, group)
    os.chmod(folder, 0o750)


def _model_user(name: str) -> int:
    """The model user's uid, created (a system user, no home, no login) if missing."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = _create_user(name)
    if uid == 0:
        raise IsolationError(
            f"--model-user {name} is root: model code must run as an unprivileged user."
        )
    return uid


def _create_user(name: str) -> int:
    """A system user: no home, no login."""
    command = ["useradd", "--system", "--user-group", "--no-create-home",
               "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise IsolationError(
            f"Could not create the model user {name}: {e}. Create it (useradd --system "
            f"{name}) or name an existing unprivileged user with --model-user."
        ) from None
    if done.returncode and not _user_exists(name):  # another modelhost may have made it
        raise IsolationError(
            f"Could not create the model user {name}: {done.stderr.strip()} Create it or "
            "name an existing unprivileged user with --model-user."
        )
    uid = pwd.getpwnam(name).pw_uid
    log.info("Created the model user %s (uid %d): model code runs as it.", name, uid)
    return uid


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


def _python_paths() -> list[Path]:
    """What a model server runs: the interpreter, its standard library, modelhost's packages."""
    return [
        Path(sys.executable).resolve().parent,
        Path(sys.base_prefix).resolve(),
        Path(sys.prefix).resolve(),
        Path(modelhost.__file__).resolve().parent,
    ]


# POSIX ACLs as Linux stores them in the system.posix_acl_access attribute.
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF
_SEARCH = 0o1


def _searchable(folder: Path, uid: int) -> bool:
    """Whether `uid`, in groups no file belongs to, may search `folder`."""
    info = folder.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    entries = _acl(folder)
    named = [perm for tag, perm, who in entries if tag == _USER and who == uid]
    if named:
        mask = [perm for tag, perm, _ in entries if tag == _MASK]
        return bool(named[0] & _SEARCH and (not mask or mask[0] & _SEARCH))
    return bool(info.st_mode & stat.S_IXOTH)


def _acl(folder: Path) -> list[tuple[int, int, int]]:
    """(tag, permissions, id) entries; those the mode implies if it has no ACL."""
    try:
        raw = os.getxattr(folder, _ACL_XATTR, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise
        mode = folder.stat().st_mode
        return [
            (_USER_OBJ, (mode >> 6) & 7, _NO_ID),
            (_GROUP_OBJ, (mode >> 3) & 7, _NO_ID),
            (_OTHER, mode & 7, _NO_ID),
        ]
    return [struct.unpack_from("<HHI", raw, offset) for offset in range(4, len(raw), 8)]


def _grant_search(folder: Path, uid: int) -> None:
    entries = [e for e in _acl(folder) if not (e[0] == _USER and e[2] == uid)]
    entries.append((_USER, _SEARCH, uid))
    # The mask bounds every named entry and the owning group: it must let search through, and
    # give the owning group no more than it had.
    mask = [perm for tag, perm, _ in entries if tag == _MASK]
    owning_group = next(perm for tag, perm, _ in entries if tag == _GROUP_OBJ)
    new_mask = (mask[0] if mask else owning_group) | _SEARCH
    entries = [e for e in entries if e[0] != _MASK] + [(_MASK, new_mask, _NO_ID)]
    entries.sort(key=lambda e: (e[0], e[2]))
    raw = struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(folder, _ACL_XATTR, raw, follow_symlinks=False)
    except OSError as e:
        raise IsolationError(
            f"The model user cannot enter {folder}, and modelhost could not let it through "
            f"({e.strerror}). Run `chmod o+x {folder}`, or install Python and choose "
            "--home where every user may read them."
        ) from None
