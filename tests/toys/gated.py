"""A pyfunc that loads and predicts only when the test opens its gates (files in a folder).

`model_config["gates"]` names the folder. Loading waits for `<gates>/load`; a request with a
true `hold` marks `<gates>/predicting` and waits for `<gates>/predict`. A test can so hold the
model mid-load or mid-predict for as long as it checks something, with no guessed sleeps.
"""

import time
from pathlib import Path

import mlflow
import pandas as pd

WAIT_S = 120  # a gate never opened fails the model's call, rather than hang the test


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was never created")
        time.sleep(0.05)


class Gated(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.gates = Path(context.model_config["gates"])
        wait_for(self.gates / "load")

    def predict(self, context, model_input: pd.DataFrame, params=None):
        if model_input["hold"].any():
            (self.gates / "predicting").touch()
            wait_for(self.gates / "predict")
        return model_input["hold"].to_numpy()


mlflow.models.set_model(Gated())
