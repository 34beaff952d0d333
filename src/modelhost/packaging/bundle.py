"""A bundle: one model, modelhost and every wheel they need, served where there is no network."""

from __future__ import annotations

import datetime
import platform
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from modelhost import __version__
from modelhost.packaging import templates, wheels
from modelhost.packaging.wheels import PackagingFailed, Say

# Everything a bundle holds at its top: what --force replaces in OUTDIR, and nothing else.
BUNDLE_ENTRIES = (
    "model",
    "wheels",
    "requirements.txt",
    "serve",
    "README.txt",
    "Dockerfile",
    ".dockerignore",
    templates.VENV,
)


@dataclass(frozen=True)
class PackageOptions:
    """What `modelhost package` was asked for."""

    model_uri: str
    outdir: Path
    dockerfile: bool = False
    python_version: str | None = None  # "3.12"; None: the Python running modelhost
    index_url: str | None = None  # None: PyPI
    modelhost_wheel: Path | None = None  # None: built from the installed modelhost's source
    force: bool = False


@dataclass(frozen=True)
class Bundle:
    """A finished bundle."""

    path: Path
    python_version: str
    wheels: tuple[str, ...]  # file names in wheels/
    size_bytes: int


def package(options: PackageOptions, say: Say | None = None) -> Bundle:
    """Write the bundle of `options.model_uri` into `options.outdir`; progress goes to `say`."""
    say = say or _to_stderr
    outdir = options.outdir.expanduser().resolve()
    _check_outdir(outdir, options.force)
    python_version = _python_version(options.python_version)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    # Made beside OUTDIR and moved in at the end, so a failure leaves OUTDIR as it was.
    with tempfile.TemporaryDirectory(prefix=f".{outdir.name}-", dir=outdir.parent) as tmp:
        staging, work = Path(tmp, "bundle"), Path(tmp, "work")
        staging.mkdir()
        work.mkdir()
        model = _fetch_model(options.model_uri, staging / "model", work, say)
        _note_python_mismatch(model, python_version, say)
        own_wheel = (
            options.modelhost_wheel.resolve()
            if options.modelhost_wheel
            else wheels.modelhost_wheel(work, say)
        )
        requirements = [_requirement_file(work / "modelhost.in", own_wheel)]
        if (model / "requirements.txt").is_file():
            requirements.append(model / "requirements.txt")
        else:
            say("The model has no requirements.txt: the bundle holds modelhost's packages only")
        model_wheels = model / "wheels" if (model / "wheels").is_dir() else None
        say(f"Resolving modelhost's and the model's requirements for Python {python_version}")
        locked = wheels.resolve(
            requirements, python_version, options.index_url, model_wheels, work, cwd=model
        )
        wheelhouse = staging / "wheels"
        wheels.fetch(locked, wheelhouse, python_version, work, cwd=model, say=say)
        for logged in model_wheels.glob("*.whl") if model_wheels else ():
            if not (wheelhouse / logged.name).exists():
                shutil.copy2(logged, wheelhouse)
        pins = [_pin(line) for line in wheels.pinned(locked)]
        (staging / "requirements.txt").write_text("\n".join(pins) + "\n")
        _write_texts(staging, options, python_version, pins)
        _move_in(staging, outdir)
    names = tuple(sorted(p.name for p in (outdir / "wheels").glob("*.whl")))
    size = _size(outdir)
    say(f"Bundle ready: {outdir} ({_mb(size)}). Serve it with {outdir / 'serve'} --port 5000")
    return Bundle(outdir, python_version, names, size)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_outdir(outdir: Path, force: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise PackagingFailed(f"{outdir} exists and is not a folder: name a new or empty folder.")
    if outdir.is_dir() and any(outdir.iterdir()) and not force:
        raise PackagingFailed(
            f"{outdir} exists and is not empty: name a new or empty folder, or pass --force to "
            f"replace the bundle's files in it ({', '.join(BUNDLE_ENTRIES)})."
        )


def _python_version(asked: str | None) -> str:
    if asked is None:
        return wheels.current_python()
    if not re.fullmatch(r"3\.\d{1,2}", asked):
        raise PackagingFailed(f"--python-version takes a version like 3.12, not {asked!r}.")
    return asked


def _fetch_model(uri: str, dst: Path, work: Path, say: Say) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    say(f"Fetching the model's artifacts from {uri}")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and not Path(unquote(parsed.path)).exists():
        raise PackagingFailed(f"Cannot fetch the model {uri}: there is no such folder.")
    download = work / "download"
    download.mkdir()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(download)))
    except MlflowException as e:
        raise PackagingFailed(f"Cannot fetch the model {uri}: {e.message}") from None
    if not (local / "MLmodel").is_file():
        raise PackagingFailed(f"{uri} is not an MLflow model: it has no MLmodel file.")
    shutil.move(local, dst)
    return dst


def _note_python_mismatch(model: Path, python_version: str, say: Say) -> None:
    env = model / "python_env.yaml"
    saved = re.search(r"^python:\s*(3\.\d+)", env.read_text(), re.M) if env.is_file() else None
    if saved and saved.group(1) != python_version:
        say(
            f"Note: the model was saved with Python {saved.group(1)}; this bundle is for Python "
            f"{python_version} (--python-version picks another)."
        )


def _requirement_file(path: Path, wheel: Path) -> Path:
    path.write_text(f"{wheel}\n")
    return path


def _pin(line: str) -> str:
    """A resolved requirement as the bundle installs it: by name, from its wheelhouse."""
    if " @ " in line:  # a direct reference, whose wheel pip built or copied
        return line.split(" @ ", 1)[0].strip()
    if line.endswith(".whl"):  # a wheel file: modelhost's, or one logged with the model
        name, version = wheels.wheel_name_version(Path(line))
        return f"{name}=={version}"
    return line


def _write_texts(
    staging: Path, options: PackageOptions, python_version: str, pins: list[str]
) -> None:
    wheel_files = list((staging / "wheels").glob("*.whl"))
    mlflow_version = next(
        (pin.split("==", 1)[1] for pin in pins if pin.lower().startswith("mlflow==")), "unknown"
    )
    libc, libc_version = platform.libc_ver()
    facts = templates.BundleFacts(
        model_uri=options.model_uri,
        python_version=python_version,
        platform=f"{platform.system()} {platform.machine()}"
        + (f" ({libc} {libc_version})" if libc else ""),
        made=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        modelhost_version=__version__,
        mlflow_version=mlflow_version,
        wheel_count=len(wheel_files),
        wheels_size=_mb(sum(w.stat().st_size for w in wheel_files)),
        dockerfile=options.dockerfile,
    )
    serve = staging / "serve"
    serve.write_text(templates.serve_script(facts))
    serve.chmod(0o755)
    (staging / "README.txt").write_text(templates.readme(facts))
    if options.dockerfile:
        (staging / "Dockerfile").write_text(templates.dockerfile(facts))
        (staging / ".dockerignore").write_text(templates.dockerignore())


def _move_in(staging: Path, outdir: Path) -> None:
    if not outdir.exists():
        staging.rename(outdir)
        return
    # An empty folder, or --force: replace the bundle's own entries, leave anything else.
    for name in BUNDLE_ENTRIES:
        old = outdir / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for entry in staging.iterdir():
        entry.rename(outdir / entry.name)


def _size(outdir: Path) -> int:
    """Bytes in the bundle as made (an environment `serve` made later is not part of it)."""
    venv = outdir / templates.VENV
    return sum(
        p.stat().st_size
        for p in outdir.rglob("*")
        if p.is_file() and not p.is_symlink() and venv not in p.parents
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"
