"""A pyfunc with params: each row's sum times `scale`, plus `offset`."""

import mlflow
import pandas as pd


class ScaledSum(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        params = params or {}
        return (
            model_input.sum(axis=1) * params.get("scale", 1.0) + params.get("offset", 0)
        ).to_numpy()


mlflow.models.set_model(ScaledSum())
