"""A job's input and output, confined to the platform's batch folder.

`input` and `output` are paths on the server, sent by any caller who may read a model: a job
must not read the state database or write over the registry. Both are taken under the batch
folder (`modelhost up --batch-root`) when relative, and must stay inside it once `..` and
symbolic links are resolved, as must every file the input names (a link in a folder or a
glob's match may point anywhere). The output is a folder of its own: neither the batch folder
itself, nor the input, nor a folder that holds the input or is inside an input folder.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from modelhost.errors import InvalidInput

MAX_INPUT_FILES = 100_000  # checked one by one at submit: bounds the time a request may take


@dataclass(frozen=True)
class JobPaths:
    """Where a job reads (as the runner takes it: a file, a folder or a glob) and writes."""

    input: str  # absolute; a glob stays a glob
    output: str  # absolute, resolved


def confine_paths(root: Path, given_input: str, given_output: str) -> JobPaths:
    """Both paths checked against `root` (resolved); InvalidInput that says what to send.

    Reads the file system: call it off the event loop.
    """
    try:
        return _confine(root.resolve(), given_input, given_output)
    except (OSError, RuntimeError) as e:  # a name too long, a loop of links...
        said = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InvalidInput(
            f"'input' {given_input!r} or 'output' {given_output!r} cannot be used as a path "
            f"({said}): send a path under the batch folder {root}."
        ) from None


def _confine(root: Path, given_input: str, given_output: str) -> JobPaths:
    output = _inside(root, given_output, "output")
    if output == root:
        raise InvalidInput(
            f"'output' must name a folder inside the batch folder {root}, not the folder itself "
            "(for example 'scores/run-1')."
        )
    if output.exists() and not output.is_dir():
        raise InvalidInput(f"'output' {given_output!r} is a file: name a folder (it is created).")
    for above in output.parents:
        if above.exists() and not above.is_dir():
            raise InvalidInput(
                f"'output' {given_output!r} lies below the file {above}: name a folder."
            )
    pattern = _absolute(root, given_input)
    if glob.has_magic(str(pattern)):
        files = _glob(root, pattern, given_input)
        folder = None
        shown = str(pattern)
    else:
        base = _inside(root, given_input, "input")
        if base.is_dir():
            folder = base
            files = [p for p in base.rglob("*") if p.is_file()]
        elif base.is_file():
            folder, files = None, [base]
        else:
            raise InvalidInput(
                f"'input' {given_input!r} does not exist under the batch folder {root}: put the "
                "file (or folder) there first, or fix the path."
            )
        shown = str(base)
    if not files:
        raise InvalidInput(f"'input' {given_input!r} names no file under the batch folder {root}.")
    if len(files) > MAX_INPUT_FILES:
        raise InvalidInput(
            f"'input' {given_input!r} names more than {MAX_INPUT_FILES} files: merge them first."
        )
    for file in files:
        real = file.resolve()
        if not real.is_relative_to(root):
            raise InvalidInput(
                f"'input' {given_input!r} reaches {file}, a link to outside the batch folder "
                f"{root}: jobs read only files inside it."
            )
        if real == output or real.is_relative_to(output):
            raise InvalidInput(
                f"'output' {given_output!r} holds the input file {real}: choose an output "
                "folder apart from the input."
            )
    if folder is not None and (output == folder or output.is_relative_to(folder)):
        raise InvalidInput(
            f"'output' {given_output!r} is inside the input folder {folder}: the job would read "
            "its own output; choose an output folder apart from the input."
        )
    return JobPaths(shown, str(output))


def _absolute(root: Path, given: str) -> Path:
    path = Path(given)  # `~` is no one's home on the server: a name like any other
    return path if path.is_absolute() else root / path


def _inside(root: Path, given: str, name: str) -> Path:
    """`given` resolved (links and `..`), or InvalidInput if that leaves `root`."""
    resolved = _absolute(root, given).resolve()
    if not resolved.is_relative_to(root):
        raise InvalidInput(
            f"'{name}' {given!r} is outside the batch folder {root} (once '..' and links are "
            f"resolved): jobs read and write only inside it. Send a path relative to it, like "
            f"'{'data/input.parquet' if name == 'input' else 'scores/run-1'}'."
        )
    return resolved


def _glob(root: Path, pattern: Path, given: str) -> list[Path]:
    """A glob's matches; its fixed part (before the first wildcard) must stay inside `root`."""
    parts = pattern.parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    if ".." in parts[fixed:]:
        raise InvalidInput(f"'input' {given!r}: a pattern may not hold '..' after a wildcard.")
    _inside(root, str(Path(*parts[:fixed])), "input")
    return [Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file()]
