"""Session fixtures: real models trained and saved once, real servers started once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.types import Schema, TensorSpec
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import Ridge
from support import Postgres, Server, start_all, stop_all

TOYS = Path(__file__).parent / "toys"
TREES = ["sklearn.tree._tree.Tree"]  # MLflow's skops format asks us to trust tree nodes
# Declared, so MLflow does not load each model in a subprocess to infer them.
REQUIREMENTS = {"pip_requirements": ["mlflow", "scikit-learn", "pandas"]}


@pytest.fixture(scope="session")
def iris() -> pd.DataFrame:
    features, _ = load_iris(return_X_y=True, as_frame=True)
    return features


@pytest.fixture(scope="session")
def model_paths(tmp_path_factory, iris) -> dict[str, Path]:
    """Every toy model, saved as MLflow models in a folder each."""
    root = tmp_path_factory.mktemp("models")
    labels = load_iris().target
    diabetes, progression = load_diabetes(return_X_y=True, as_frame=True)
    paths = {
        name: root / name
        for name in (
            "classifier",
            "regressor",
            "forest_regressor",
            "frame_output",
            "scaled_sum",
            "tensor",
            "fragile",
            "sleeper",
        )
    }
    classifier = RandomForestClassifier(n_estimators=10, random_state=0).fit(iris, labels)
    mlflow.sklearn.save_model(
        classifier,
        paths["classifier"],
        input_example=iris.head(3),
        skops_trusted_types=TREES,
        **REQUIREMENTS,
    )
    mlflow.sklearn.save_model(
        Ridge().fit(diabetes, progression),
        paths["regressor"],
        input_example=diabetes.head(3),
        **REQUIREMENTS,
    )
    forest = RandomForestRegressor(n_estimators=10, random_state=0).fit(iris, labels * 1.5)
    mlflow.sklearn.save_model(
        forest,
        paths["forest_regressor"],
        input_example=iris.head(3),
        skops_trusted_types=TREES,
        **REQUIREMENTS,
    )
    mlflow.pyfunc.save_model(
        paths["frame_output"],
        python_model=str(TOYS / "frame_output.py"),
        **REQUIREMENTS,
        signature=infer_signature(iris, pd.DataFrame({"label": ["big"], "score": [1.0]})),
    )
    mlflow.pyfunc.save_model(
        paths["scaled_sum"],
        python_model=str(TOYS / "scaled_sum.py"),
        **REQUIREMENTS,
        signature=infer_signature(iris, np.zeros(1), params={"scale": 1.0, "offset": 0}),
    )
    tensor_schema = Schema([TensorSpec(np.dtype("float64"), (-1, 4))])
    mlflow.pyfunc.save_model(
        paths["tensor"],
        python_model=str(TOYS / "tensor_norm.py"),
        **REQUIREMENTS,
        signature=mlflow.models.ModelSignature(inputs=tensor_schema),
    )
    mlflow.pyfunc.save_model(
        paths["fragile"],
        python_model=str(TOYS / "fragile.py"),
        **REQUIREMENTS,
        signature=infer_signature(pd.DataFrame({"x": [1.0]}), np.zeros(1)),
    )
    mlflow.pyfunc.save_model(
        paths["sleeper"],
        python_model=str(TOYS / "sleeper.py"),
        **REQUIREMENTS,
        signature=infer_signature(pd.DataFrame({"seconds": [0.1]}), np.zeros(1)),
    )
    return paths


@pytest.fixture(scope="session")
def servers(model_paths, tmp_path_factory):
    """One `modelhost serve` per toy model, started together."""
    logs = tmp_path_factory.mktemp("logs")
    options = {"sleeper": ["--timeout", "1"]}
    running = start_all(
        {
            name: Server(path, *options.get(name, []), log_dir=logs)
            for name, path in model_paths.items()
        }
    )
    yield running
    stop_all(running)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the session (it takes seconds to start); each test module
    makes its own databases with `postgres.database(name)`. A test that kills the database
    starts a `Postgres()` of its own, so other modules never see it go."""
    with Postgres() as server:
        yield server
