"""Ray fixtures: a real Ray cluster of a head and two worker nodes, shared by a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import RayCluster


@pytest.fixture(scope="module")
def ray_node_env() -> dict[str, str]:
    """What every process of the cluster's nodes has in its environment; a module overrides
    this fixture to give the Ray workers a modelhost's settings (`MODELHOST_HOME`...)."""
    return {}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, ray_node_env) -> Iterator[RayCluster]:
    """A head node (no CPU) and two worker nodes of 2 CPUs each, stopped after the module."""
    with RayCluster(tmp_path_factory.mktemp("ray"), env=ray_node_env) as cluster:
        yield cluster
