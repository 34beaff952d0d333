"""A pyfunc that fails on a negative `x`, as a model with a bug in it would."""

import mlflow
import pandas as pd


class Fragile(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        if (model_input["x"] < 0).any():
            raise ValueError("x must not be negative")
        return (model_input["x"] * 2).to_numpy()


mlflow.models.set_model(Fragile())
