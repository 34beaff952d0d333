"""The demo model `modelhost up --demo` serves: a random forest that tells iris species apart."""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger("modelhost.demo")

ONE_FLOWER = (
    '{"dataframe_split": {"columns": ["sepal length (cm)", "sepal width (cm)", '
    '"petal length (cm)", "petal width (cm)"], "data": [[5.1, 3.5, 1.4, 0.2]]}}'
)


DEMO_MODEL_NAME = "iris-demo"


def _train():
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    features, species = load_iris(return_X_y=True, as_frame=True)
    return features, RandomForestClassifier(n_estimators=50, random_state=0).fit(features, species)


def register_demo(tracking_uri: str) -> None:
    """Log the demo model and register it as `iris-demo`, unless the registry has it."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if client.search_registered_models(f"name = '{DEMO_MODEL_NAME}'"):
        log.info("The registry already has the demo model %s", DEMO_MODEL_NAME)
        return
    log.info("Registering the demo model %s", DEMO_MODEL_NAME)
    features, forest = _train()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("modelhost-demo")
    with mlflow.start_run(run_name="iris-forest"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.log_model(
            forest,
            name="model",
            input_example=features.head(2),
            registered_model_name=DEMO_MODEL_NAME,
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
