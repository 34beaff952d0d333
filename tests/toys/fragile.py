"""A pyfunc with bugs: it fails on a negative `x`, and answers 13 with what JSON cannot hold."""

import mlflow
import pandas as pd


class Fragile(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        if (model_input["x"] < 0).any():
            raise ValueError("x must not be negative")
        if (model_input["x"] == 13).any():
            return [{"a set"} for _ in range(len(model_input))]
        return (model_input["x"] * 2).to_numpy()


mlflow.models.set_model(Fragile())
