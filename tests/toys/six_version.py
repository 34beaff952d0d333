"""A pyfunc that answers, for each row, the version of `six` it imported."""

import mlflow
import pandas as pd


class SixVersion(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        # Shipped with the model through code_paths: importable only from the model's code/.
        from version_helper import imported_version

        return [imported_version("six")] * len(model_input)


mlflow.models.set_model(SixVersion())
