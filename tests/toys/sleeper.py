"""A pyfunc that takes as long as it is asked to: `seconds` per call, the longest of its rows."""

import time

import mlflow
import pandas as pd


class Sleeper(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        time.sleep(float(model_input["seconds"].max()))
        return model_input["seconds"].to_numpy()


mlflow.models.set_model(Sleeper())
