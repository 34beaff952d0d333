"""The wheelhouse: modelhost's wheel, and every package it and the model need, resolved together."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

Say = Callable[[str], None]

# Variables through which the machine's pip and uv configuration would pick indexes and extra
# wheel folders: the bundle is resolved against one index, the same for uv and pip.
_UV_INDEX_VARIABLES = (
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_NO_INDEX",
    "UV_CONSTRAINT",
    "UV_OVERRIDE",
    "UV_PYTHON",
)


class PackagingFailed(Exception):
    """The bundle cannot be made; the message says why and what to do."""


def find_uv() -> str:
    """The uv binary: from the `uv` package, on PATH, or beside the system's python3."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    if on_path := shutil.which("uv"):
        return on_path
    if python3 := shutil.which("python3"):
        found = subprocess.run(
            [python3, "-c", "from uv import find_uv_bin; print(find_uv_bin())"],
            capture_output=True,
            text=True,
        )
        if found.returncode == 0:
            return found.stdout.strip()
    raise PackagingFailed(
        "uv is needed to build modelhost's wheel and resolve the bundle's packages: "
        "install it with `pip install uv`."
    )


def uv_env() -> dict[str, str]:
    """No index settings of this machine, and no Python downloads (fail fast instead)."""
    env = {k: v for k, v in os.environ.items() if k not in _UV_INDEX_VARIABLES}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def pip_env() -> dict[str, str]:
    """No pip configuration of this machine: no config files, no PIP_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def modelhost_wheel(work: Path, say: Say) -> Path:
    """A wheel of the installed modelhost, built from the folder it was installed from."""
    try:
        dist = importlib.metadata.distribution("modelhost")
    except importlib.metadata.PackageNotFoundError:
        raise PackagingFailed(
            "modelhost runs from a source folder that is not installed: install it "
            "(`pip install -e /path/to/modelhost`), or pass --modelhost-wheel PATH."
        ) from None
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    url = origin.get("url", "")
    path = Path(unquote(urlparse(url).path)) if url.startswith("file://") else None
    if path and "archive_info" in origin and path.suffix == ".whl" and path.is_file():
        say(f"Using modelhost's wheel {path}")
        return path
    if path and "dir_info" in origin and (path / "pyproject.toml").is_file():
        say(f"Building modelhost {dist.version} from {path}")
        out = work / "modelhost-dist"
        # sdist first, then the wheel from it: the build happens in a temporary copy, so the
        # source folder gets no build/ directory, and the wheel holds what a release would.
        built = subprocess.run(
            [find_uv(), "build", "--no-config", "--quiet", "--out-dir", str(out), str(path)],
            capture_output=True,
            text=True,
            env=uv_env(),
        )
        wheels = sorted(out.glob("modelhost-*.whl"))
        if built.returncode != 0 or not wheels:
            raise PackagingFailed(f"Building modelhost's wheel from {path} failed:\n{built.stderr}")
        return wheels[0]
    where = url or "a package index"
    raise PackagingFailed(
        f"modelhost {dist.version} was installed from {where}, not from a source folder or a "
        "wheel file that is still there, so there is nothing to build its wheel from. Pass "
        f"--modelhost-wheel PATH (a wheel of modelhost {dist.version}), or install modelhost from "
        "its source folder (`pip install /path/to/modelhost`)."
    )


def resolve(
    requirements: list[Path],
    python_version: str,
    index_url: str | None,
    find_links: Path | None,
    work: Path,
    cwd: Path,
) -> Path:
    """A requirements file pinning one consistent set of packages for all those given.

    Index options (the one given, and any the model's requirements name) are written into it,
    so pip fetches from where uv resolved.
    """
    locked = work / "requirements.lock"
    command = [
        find_uv(),
        "pip",
        "compile",
        "--no-config",
        "--quiet",
        "--no-header",
        "--no-annotate",
        "--emit-index-url",
        "--emit-find-links",
        "--python",
        sys.executable,
        "--python-version",
        python_version,
        "--output-file",
        str(locked),
        *(["--index-url", index_url] if index_url else []),
        *(["--find-links", str(find_links)] if find_links else []),
        *map(str, requirements),
    ]
    if python_version != current_python():
        # Only wheels can be fetched for another Python; nothing can be built for it here.
        command += ["--only-binary", ":all:"]
    resolved = subprocess.run(command, capture_output=True, text=True, env=uv_env(), cwd=cwd)
    if resolved.returncode != 0:
        raise PackagingFailed(
            "No set of packages meets both modelhost's requirements and the model's "
            f"(its requirements.txt) on Python {python_version}:\n{resolved.stderr.strip()}"
        )
    return locked


def pinned(locked: Path) -> list[str]:
    """The requirement lines of a resolved requirements file (no options, no comments)."""
    lines = (line.strip() for line in locked.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def fetch(locked: Path, wheels: Path, python_version: str, work: Path, cwd: Path, say: Say) -> None:
    """Put a wheel of every requirement of `locked` in `wheels`, showing each as it comes."""
    total = len(pinned(locked))
    options = ["--no-deps", "--progress-bar", "off", "--disable-pip-version-check"]
    if python_version == current_python():
        # `pip wheel` takes a published wheel where there is one and builds the rest.
        command = [*_pip(work), "--isolated", "wheel", *options, "--wheel-dir", str(wheels)]
    else:
        command = [*_pip(work), "--isolated", "download", *options, "--dest", str(wheels)]
        command += ["--only-binary=:all:", "--python-version", python_version]
        command += ["--implementation", "cp"]
    command += ["--requirement", str(locked)]
    say(f"Fetching {total} packages for Python {python_version}")
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=pip_env(),
        cwd=cwd,
    )
    output: list[str] = []
    current = ""
    count = 0
    for line in process.stdout or ():
        output.append(line)
        text = line.strip()
        if text.startswith(("Collecting ", "Processing ")):
            count += 1
            current = text.split(" ", 1)[1].split(" (from", 1)[0]
            say(f"  [{count}/{total}] {current}")
        elif text.startswith(("Downloading ", "Building wheel for ")):
            say(f"      {text}")
    if process.wait() != 0:
        errors = [line.strip() for line in output if line.startswith("ERROR")] or output[-10:]
        missing = re.search(r"No matching distribution found for (\S+)", "".join(output))
        failed = missing.group(1) if missing else current or "the packages"
        raise PackagingFailed(
            f"Could not fetch {failed} for Python {python_version}:\n"
            + "\n".join(_shorten(line) for line in errors)
        )


def _shorten(line: str, limit: int = 300) -> str:
    return line if len(line) <= limit else line[: limit - 5] + " ...)"


def current_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def wheel_name_version(wheel: Path) -> tuple[str, str]:
    """(name, version) from a wheel's file name: `name-version-...-platform.whl`."""
    name, version = wheel.name.split("-")[:2]
    return name, version


def _pip(work: Path) -> list[str]:
    """A pip to run: this Python's, or one in a throwaway environment made with ensurepip."""
    if importlib.util.find_spec("pip"):
        return [sys.executable, "-m", "pip"]
    venv = work / "pip-venv"
    if not venv.exists():
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True
        )
        if made.returncode != 0:
            raise PackagingFailed(
                f"pip is needed to fetch wheels, and `{sys.executable} -m venv` could not provide "
                f"it:\n{made.stderr.strip()}\nInstall pip into this environment."
            )
    return [str(venv / "bin" / "python"), "-m", "pip"]
