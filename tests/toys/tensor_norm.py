"""A pyfunc with a tensor signature: the Euclidean norm of each row of a float array."""

import mlflow
import numpy as np


class TensorNorm(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return np.sqrt((np.asarray(model_input) ** 2).sum(axis=1))


mlflow.models.set_model(TensorNorm())
