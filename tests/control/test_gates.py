"""As root, the model user passes through the home to what it is given, and no further."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from modelhost.config import UpSettings
from modelhost.control.isolation import Isolation

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="model users need root (as in CI)")

PROBE = """
import sys
from pathlib import Path
for path in sys.argv[1:]:
    try:
        Path(path).read_bytes() if Path(path).is_file() else list(Path(path).iterdir())
        print("allowed")
    except PermissionError:
        print("refused")
"""


@pytest.fixture
def closed_folder():
    """A folder only root may enter (0700), as /root or pytest's temporary folder are."""
    folder = Path(tempfile.mkdtemp(prefix="modelhost-closed-"))
    umask = os.umask(0o022)
    os.umask(umask)
    yield folder
    os.umask(umask)  # securing the home sets modelhost's (here: the test process's) umask
    shutil.rmtree(folder)


def as_model_user(isolation: Isolation, group: int | None, *paths: Path) -> list[str]:
    """What the model user in `group` may do with each path: read it (or list it), or not."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, paths)],
        capture_output=True, text=True, timeout=60, cwd="/",
        **isolation.process_options(group),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_model_user_passes_through_to_its_gate_and_no_further(closed_folder):
    home = closed_folder / "home"
    home.mkdir()
    (home / "state.db").write_text("token hashes")
    (home / "registry").mkdir()
    (home / "registry" / "mlflow.db").write_text("the registry")
    mine, theirs = home / "models" / "mine", home / "models" / "theirs"
    for folder in (mine, theirs):
        folder.mkdir(parents=True)
        (folder / "MLmodel").write_text("flavors: {}")
        os.chmod(folder / "MLmodel", 0o644)

    isolation = Isolation.for_platform(home, UpSettings.model_user, secrets=[])
    group, other = isolation.group("model:mine"), isolation.group("model:theirs")
    isolation.open_gate(mine, group)
    isolation.open_gate(theirs, other)

    assert group != other
    assert as_model_user(
        isolation, group,
        mine / "MLmodel", theirs / "MLmodel", home / "state.db",
        home / "registry" / "mlflow.db", home, closed_folder,
    ) == ["allowed", "refused", "refused", "refused", "refused", "refused"]  # fmt: skip
    assert oct(home.stat().st_mode & 0o777) == oct(0o711)
