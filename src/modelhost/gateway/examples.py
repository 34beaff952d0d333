"""A version's example request, for the page's Load Example (`models/example`).

The body MLflow saved beside the model when it was logged with an input example
(`serving_input_example.json`), or the input example converted to one; failing that, a skeleton
built from the input signature: its columns (or tensor shape) with a placeholder of each type.
Only the MLmodel file and the example's files are fetched, never the model itself, through the
registry with MLflow's client, on a thread. A version's artifacts never change, so what was
found is kept by (name, version).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.utils import convert_input_example_to_serving_input
from mlflow.types import ColSpec, Schema, TensorSpec

from modelhost.errors import ModelhostError, NotFound, NotReady

CACHED = 1024  # versions' examples kept; past it, the cache starts again empty
# A value of each MLflow column type, for a skeleton the user fills in.
PLACEHOLDERS: dict[str, Any] = {"boolean": False, "integer": 0, "long": 0, "float": 0.0,
                                "double": 0.0, "string": "", "binary": "",
                                "datetime": "2024-01-01T00:00:00"}  # fmt: skip


class Examples:
    def __init__(self, registry_url: str) -> None:
        self.registry_url = registry_url
        self._client = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
        self._found: dict[tuple[str, str], dict | ModelhostError] = {}

    async def of_version(self, name: str, version: str) -> dict:
        """`{"example": <body>, "source": "input_example" | "signature"}`; NotFound if none."""
        key = (name, version)
        found = self._found.get(key)
        if found is None:
            try:
                found = await asyncio.to_thread(self._read, name, version)
            except NotFound as e:
                found = e
            if len(self._found) >= CACHED:
                self._found = {}
            self._found[key] = found
        if isinstance(found, ModelhostError):
            raise found
        return found

    def _read(self, name: str, version: str) -> dict:
        """On a thread: the version's MLmodel and example files, fetched into a scratch folder."""
        try:
            source = self._client.get_model_version_download_uri(name, version)
            with tempfile.TemporaryDirectory(prefix="modelhost-example-") as scratch:
                folder = Path(scratch)
                model = Model.load(self._fetch(source, "MLmodel", folder))
                info = model.saved_input_example_info or {}
                if serving := info.get("serving_input_path"):
                    body = json.loads(self._fetch(source, serving, folder).read_text())
                    return {"example": body, "source": "input_example"}
                if example_file := info.get("artifact_path"):
                    self._fetch(source, example_file, folder)
                    converted = convert_input_example_to_serving_input(
                        model.load_input_example(str(folder))
                    )
                    if converted is not None:
                        return {"example": json.loads(converted), "source": "input_example"}
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                message = f"Version {version} of registered model '{name}' does not exist."
                raise NotFound(message) from None
            message = f"The registry could not give version {version} of '{name}': {e}"
            raise NotReady(message) from None
        except OSError as e:
            raise NotReady(f"The registry did not answer: {e}") from None
        if model.signature is not None and model.signature.inputs is not None:
            return {"example": skeleton(model.signature.inputs), "source": "signature"}
        raise NotFound(
            f"Version {version} of '{name}' was logged with neither an input example nor a "
            "signature: log it with `input_example=` (or `signature=`) to have one here."
        )

    def _fetch(self, source: str, path: str, folder: Path) -> Path:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source.rstrip('/')}/{path}",
            dst_path=str(folder / Path(path).parent),
            tracking_uri=self.registry_url,
        )
        return Path(local)


def skeleton(inputs: Schema) -> dict:
    """A body in the shape the signature asks for, each value a placeholder of its type."""
    specs = inputs.inputs
    if specs and all(isinstance(s, TensorSpec) for s in specs):
        tensors = {s.name: _zeros(s) for s in specs}
        return {"inputs": tensors if all(s.name for s in specs) else next(iter(tensors.values()))}
    row = [_placeholder(s) for s in specs]
    names = [s.name for s in specs if isinstance(s, ColSpec)]
    split: dict[str, Any] = {"data": [row]}
    if len(names) == len(specs) and all(names):
        split = {"columns": names, "data": [row]}
    return {"dataframe_split": split}


def _placeholder(spec) -> Any:
    kind = getattr(spec.type, "name", None) or str(spec.type)
    return PLACEHOLDERS.get(kind)


def _zeros(spec: TensorSpec) -> Any:
    """A nested list of the tensor's shape (a variable dimension: 1) filled with zeros."""
    kind = spec.type.kind
    zero: Any = False if kind == "b" else 0 if kind in "iu" else 0.0 if kind in "fc" else ""
    for size in reversed(spec.shape or (1,)):
        zero = [zero] * (size if size > 0 else 1)
    return zero
