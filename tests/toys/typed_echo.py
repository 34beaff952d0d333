"""A pyfunc whose signature comes from its type hints: it answers each string upper-cased."""

import mlflow


class TypedEcho(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[str], params=None) -> list[str]:
        return [text.upper() for text in model_input]


mlflow.models.set_model(TypedEcho())
