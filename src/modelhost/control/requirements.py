"""What a model declares it needs: pip requirements and a Python version, read from its folder."""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import metadata
from pathlib import Path

import yaml
from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from modelhost.errors import ModelhostError

# pip's own rule: `#` starts a comment at the start of a line or after whitespace.
_COMMENT = re.compile(r"(^|\s+)#.*$")
_ARCHIVES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
_CONDA_PYTHON = re.compile(r"^python\s*={1,2}\s*(\d+(?:\.\d+)*)")
# Options whose value is a local path when it is not a URL; made absolute like requirement paths.
_PATH_OPTIONS = ("-f", "--find-links", "-e", "--editable")


class RequirementsError(ModelhostError):
    """A declaration file the reader cannot follow (a missing `-r` file, malformed YAML)."""

    status = HTTPStatus.BAD_REQUEST
    error_code = "INVALID_PARAMETER_VALUE"


@dataclass(frozen=True)
class Entry:
    """One line of what a model needs, as uv reads it and as the cache key sees it."""

    text: str  # the pip line, local paths made absolute
    identity: str  # what it means: a normalized requirement, or a local file's content hash
    requirement: Requirement | None = None  # a named requirement from an index (no URL, no file)
    is_option: bool = False  # an index or resolver option (`--extra-index-url`, `--pre`)


@dataclass(frozen=True)
class Requirements:
    """Everything a model's environment must hold, read from its artifact folder."""

    model_dir: Path
    source: str  # the file that declared them: requirements.txt, python_env.yaml, conda.yaml or ""
    python: str | None  # the declared Python version, as written ("3.11.7")
    entries: tuple[Entry, ...] = ()
    constraints: tuple[Entry, ...] = field(default=())

    @property
    def python_minor(self) -> str | None:
        """The declared Python as major.minor ("3.11"), the part an environment must match."""
        if not self.python:
            return None
        return ".".join(self.python.split(".")[:2])

    def names(self) -> set[str]:
        """Canonical names of the named requirements."""
        return {
            canonicalize_name(e.requirement.name) for e in self.entries if e.requirement is not None
        }

    def identity(self) -> list[str]:
        """What distinguishes these needs from others: Python major.minor and sorted lines."""
        python = self.python_minor or f"{sys.version_info.major}.{sys.version_info.minor}"
        return [
            f"python {python}",
            *sorted(e.identity for e in self.entries),
            *sorted(f"constraint {e.identity}" for e in self.constraints),
        ]


def read_requirements(model_dir: str | Path) -> Requirements:
    """What the model in `model_dir` (the folder with `MLmodel`) declares it needs."""
    model_dir = Path(model_dir).resolve()
    python_env = _load_yaml(model_dir / "python_env.yaml")
    conda = _load_yaml(model_dir / "conda.yaml")
    python = _declared_python(model_dir, python_env, conda)
    reader = _PipReader(model_dir)
    if (model_dir / "requirements.txt").is_file():
        source = "requirements.txt"
        reader.read_file(model_dir / "requirements.txt")
    elif python_env is not None:
        source = "python_env.yaml"
        reader.read_lines(_string_list(python_env.get("dependencies")), model_dir, source)
    elif conda is not None:
        source = "conda.yaml"
        reader.read_lines(_conda_pip(conda), model_dir, source)
    else:
        source = ""
    return Requirements(model_dir, source, python, tuple(reader.entries), tuple(reader.constraints))


def unmet_here(requirements: Requirements) -> str | None:
    """Why the running interpreter cannot serve the model as it is, or None when it can."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if requirements.python_minor and requirements.python_minor != here:
        return f"the model declares Python {requirements.python}, this interpreter is {here}"
    for entry in requirements.entries:
        if entry.is_option:
            continue
        if entry.requirement is None:
            return f"{entry.text} is not a requirement this environment can be checked against"
        reason = _unmet(entry.requirement, set())
        if reason:
            return reason
    for entry in requirements.constraints:
        reason = _violated_constraint(entry)
        if reason:
            return reason
    return None


def file_digest(path: Path) -> str:
    """The sha256 of a file's content, so a wheel is known by what it holds, not where it is."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def normalized(requirement: Requirement) -> str:
    """A requirement written one way: canonical name, sorted extras and specifiers."""
    text = canonicalize_name(requirement.name)
    if requirement.extras:
        text += "[" + ",".join(sorted(canonicalize_name(x) for x in requirement.extras)) + "]"
    if requirement.url:
        text += f" @ {requirement.url}"
    else:
        text += str(requirement.specifier)  # SpecifierSet renders its specifiers sorted
    if requirement.marker:
        text += f"; {requirement.marker}"
    return text


class _PipReader:
    """Reads pip requirement lines as pip does: `-r`, `-c`, comments, continuations, paths."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.entries: list[Entry] = []
        self.constraints: list[Entry] = []
        self._seen: set[Path] = set()

    def read_file(self, path: Path, constraint: bool = False, origin: str = "") -> None:
        path = path.resolve()
        if not path.is_file():
            where = f" (named in {origin})" if origin else ""
            raise RequirementsError(f"The model's requirements file {path} is missing{where}.")
        if path in self._seen:  # a file that includes itself, directly or not
            return
        self._seen.add(path)
        self.read_lines(_logical_lines(path.read_text()), path.parent, path.name, constraint)

    def read_lines(
        self, lines: list[str], base: Path, origin: str, constraint: bool = False
    ) -> None:
        for raw in lines:
            line = _COMMENT.sub("", raw).strip()
            if not line:
                continue
            option, value = _split_option(line)
            if option in ("-r", "--requirement"):
                self.read_file(base / value, constraint, origin)
            elif option in ("-c", "--constraint"):
                self.read_file(base / value, True, origin)
            elif option is not None:
                if option in _PATH_OPTIONS and not _is_url(value):
                    value = str(self.model_dir / value)
                text = f"{option} {value}".strip()
                target = self.constraints if constraint else self.entries
                target.append(Entry(text, text, is_option=option not in ("-e", "--editable")))
            else:
                (self.constraints if constraint else self.entries).append(self._entry(line))

    def _entry(self, line: str) -> Entry:
        # Local files are resolved against the model folder: MLflow installs from there, and
        # that is where `add_libraries_to_model` puts the wheels it writes as `wheels/<file>`.
        path = self.model_dir / line
        if (line.endswith(_ARCHIVES) or "/" in line) and path.exists():
            if path.is_file():
                return Entry(str(path), file_digest(path))
            return Entry(str(path), f"directory {path}")
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            return Entry(line, line)  # a URL or something pip understands and we need not
        named = requirement if not requirement.url else None
        return Entry(line, normalized(requirement), named)


def _logical_lines(text: str) -> list[str]:
    """Lines with pip's backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def _split_option(line: str) -> tuple[str | None, str]:
    """(`--option`, its value) for an option line, (None, line) for a requirement."""
    if not line.startswith("-"):
        return None, line
    if line.startswith("--") and "=" in line.split()[0]:
        option, _, value = line.partition("=")
        return option, value.strip()
    option, _, value = line.partition(" ")
    if len(option) > 2 and not option.startswith("--"):  # `-rrequirements.txt`, as pip allows
        option, value = option[:2], option[2:] + value
    value = value.strip()
    if value and value[0] in "'\"":
        value = " ".join(shlex.split(value))
    return option, value


def _is_url(value: str) -> bool:
    return "://" in value or value.startswith("file:")


def _load_yaml(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        # Every scalar as a string: `python: 3.10` must not become the float 3.1.
        loaded = yaml.load(path.read_text(), Loader=yaml.BaseLoader)
    except yaml.YAMLError as e:
        raise RequirementsError(f"The model's {path.name} is not valid YAML: {e}") from None
    return loaded if isinstance(loaded, dict) else None


def _string_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _conda_pip(conda: dict) -> list[str]:
    lines: list[str] = []
    for dependency in conda.get("dependencies") or []:
        if isinstance(dependency, dict):
            lines += _string_list(dependency.get("pip"))
    return lines


def _declared_python(model_dir: Path, python_env: dict | None, conda: dict | None) -> str | None:
    if python_env and python_env.get("python"):
        return str(python_env["python"]).strip()
    for dependency in (conda or {}).get("dependencies") or []:
        match = isinstance(dependency, str) and _CONDA_PYTHON.match(dependency.strip())
        if match:
            return match.group(1)
    mlmodel = _load_yaml(model_dir / "MLmodel") or {}
    pyfunc = (mlmodel.get("flavors") or {}).get("python_function") or {}
    return pyfunc.get("python_version") or None


def _unmet(requirement: Requirement, seen: set[str]) -> str | None:
    """Why the installed packages do not satisfy `requirement` (extras included), or None."""
    if requirement.marker and not requirement.marker.evaluate():
        return None
    name = canonicalize_name(requirement.name)
    if name in seen:
        return None
    seen.add(name)
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return f"the model needs {requirement}, which is not installed here"
    try:
        ok = requirement.specifier.contains(Version(installed), prereleases=True)
    except InvalidVersion:
        ok = False
    if not ok:
        return f"the model needs {requirement}, and {requirement.name} {installed} is installed"
    for extra in requirement.extras:
        for dependency in metadata.requires(requirement.name) or []:
            needed = Requirement(dependency)
            if not needed.marker or not _only_for_extra(needed.marker, extra):
                continue
            needed.marker = None
            reason = _unmet(needed, seen)
            if reason:
                return f"{reason} (for {requirement})"
    return None


def _only_for_extra(marker: Marker, extra: str) -> bool:
    return marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""})


def _violated_constraint(entry: Entry) -> str | None:
    requirement = entry.requirement
    if requirement is None or (requirement.marker and not requirement.marker.evaluate()):
        return None
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return None  # a constraint only limits what gets installed
    if not requirement.specifier.contains(installed, prereleases=True):
        return f"the model constrains {requirement}, and {requirement.name} {installed} is here"
    return None
