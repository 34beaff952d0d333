"""A pyfunc whose failure is no Exception: on a negative `x` it raises a BaseException.

Some libraries' errors are (gevent's Timeout, trio's Cancelled), so `except Exception` lets
them through: such a failure ends the loop of whatever called the model.
"""

import mlflow
import pandas as pd


class Deadline(BaseException):
    """A timeout of the model's own, raised as a BaseException, as those libraries do."""


class EscapingFailure(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        if (model_input["x"] < 0).any():
            raise Deadline("the model's own deadline fired")
        return (model_input["x"] * 2).to_numpy()


mlflow.models.set_model(EscapingFailure())
