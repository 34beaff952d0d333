"""A pyfunc whose output is a DataFrame: a label and a score per input row."""

import mlflow
import pandas as pd


class FrameOutput(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        total = model_input.sum(axis=1)
        return pd.DataFrame(
            {"label": (total > 10).map({True: "big", False: "small"}), "score": total}
        )


mlflow.models.set_model(FrameOutput())
