"""Batch fixtures: models saved once for the session; the jobs a test starts, stopped after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from support import Job

TOYS = Path(__file__).parent.parent / "toys"
TREES = ["sklearn.tree._tree.Tree"]  # MLflow's skops format asks us to trust tree nodes
REQUIREMENTS = {"pip_requirements": ["mlflow", "scikit-learn", "pandas"]}


@pytest.fixture(scope="session")
def batch_models(tmp_path_factory) -> dict[str, Path]:
    """The models batch tests score with, saved as MLflow models in a folder each."""
    root = tmp_path_factory.mktemp("batch-models")
    paths = {
        name: root / name
        for name in ("forest", "probabilities", "frame_output", "fragile", "sleeper", "sum")
    }
    features, labels = load_iris(return_X_y=True, as_frame=True)
    forest = RandomForestRegressor(n_estimators=10, random_state=0).fit(features, labels * 1.5)
    mlflow.sklearn.save_model(
        forest,
        paths["forest"],
        signature=infer_signature(features, np.zeros(1)),
        skops_trusted_types=TREES,
        **REQUIREMENTS,
    )
    classifier = RandomForestClassifier(n_estimators=5, random_state=0).fit(features, labels)
    mlflow.sklearn.save_model(
        classifier,
        paths["probabilities"],
        signature=infer_signature(features, np.zeros((1, 3))),
        pyfunc_predict_fn="predict_proba",  # a 2-D answer: one list of 3 per row
        skops_trusted_types=TREES,
        **REQUIREMENTS,
    )
    mlflow.pyfunc.save_model(
        paths["frame_output"],
        python_model=str(TOYS / "frame_output.py"),
        signature=infer_signature(features, pd.DataFrame({"label": ["big"], "score": [1.0]})),
        **REQUIREMENTS,
    )
    one_column = {
        "fragile": pd.DataFrame({"x": [1.0]}),
        "sleeper": pd.DataFrame({"seconds": [0.1]}),
    }
    for name, example in one_column.items():
        mlflow.pyfunc.save_model(
            paths[name],
            python_model=str(TOYS / f"{name}.py"),
            signature=infer_signature(example, np.zeros(1)),
            **REQUIREMENTS,
        )
    mlflow.pyfunc.save_model(
        paths["sum"], python_model=str(TOYS / "scaled_sum.py"), **REQUIREMENTS
    )  # no signature: any numeric columns
    return paths


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    """Jobs a test starts; whatever is left of them is stopped after it."""
    started: list[Job] = []
    yield started
    for job in started:
        job.stop()
