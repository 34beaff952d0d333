"""One loaded MLflow model: what it expects and how to call it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.pyfunc import PyFuncModel
from mlflow.utils.proto_json_utils import _get_jsonable_obj

from modelhost.errors import InvalidInput, ModelFailed
from modelhost.worker import protocol

log = logging.getLogger("modelhost.worker")


@dataclass
class ServedModel:
    """A loaded pyfunc model with what scoring needs to know about it."""

    uri: str
    local_path: str
    pyfunc: PyFuncModel
    metadata: Model
    spec: protocol.ModelSpec  # what the protocol reads of it, read once here
    build_input: protocol.FrameBuilder

    @classmethod
    def load(cls, uri: str, local_path: str | None = None) -> ServedModel:
        """Load the model from its downloaded artifacts (downloading them if not given)."""
        local_path = local_path or download(uri)
        pyfunc = mlflow.pyfunc.load_model(local_path)
        spec = protocol.ModelSpec.from_metadata(pyfunc.metadata)
        return cls(uri, local_path, pyfunc, pyfunc.metadata, spec, protocol.FrameBuilder(spec))

    def describe(self) -> dict[str, Any]:
        """The signature and input example, as JSON-able values, for /metadata."""
        signature = self.metadata.signature
        try:
            example = self.metadata.load_input_example(self.local_path)
        except Exception:  # an unreadable example must not hide the rest
            log.exception("Could not read the input example of %s", self.uri)
            example = None
        params = self.spec.params_schema
        return {
            "model_uri": self.uri,
            "run_id": self.metadata.run_id,
            "model_uuid": self.metadata.model_uuid,
            "flavors": sorted(self.metadata.flavors),
            "signature": {
                "inputs": signature.inputs.to_dict() if signature and signature.inputs else None,
                "outputs": signature.outputs.to_dict() if signature and signature.outputs else None,
                "params": params.to_dict() if params else None,
            },
            "input_example": _get_jsonable_obj(example) if example is not None else None,
        }

    def predict(self, data: Any, params: dict[str, Any] | None) -> Any:
        """Call the model; bad input is InvalidInput, the model's own failure ModelFailed."""
        data = self.build_input(data)
        try:
            return self.pyfunc.predict(data, params=params)
        except MlflowException as e:
            # Schema and params enforcement raise MlflowException before the model runs.
            raise InvalidInput(self._with_expected_input(e.message)) from None
        except Exception as e:
            log.exception("The model %s raised while predicting", self.uri)
            raise ModelFailed(f"The model raised {type(e).__name__}: {e}") from None

    def _with_expected_input(self, message: str) -> str:
        if self.spec.input_schema is None:
            return message
        return f"{message}\nThe model expects input: {self.spec.input_schema}"


def download(uri: str) -> str:
    """The model's artifacts in a local folder, for any URI the MLflow client resolves."""
    return mlflow.artifacts.download_artifacts(artifact_uri=uri)
