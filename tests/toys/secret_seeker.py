"""A model that looks for its server's secret in its environment, as an attacker's would."""

import os

import mlflow
import pandas as pd


class SecretSeeker(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        found = os.environ.get("MODELHOST_SERVER_SECRET") or "none"
        return [found] * len(model_input)


mlflow.models.set_model(SecretSeeker())
