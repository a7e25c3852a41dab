"""Shared fixtures. Tests never touch the network or the user's MLflow store."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (on a busy 2-core machine small
    double-backward and attack loops ran many times slower with 2 threads)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def tracking_uri(tmp_path):
    """A fresh sqlite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def tiny_overrides(tmp_path, tracking_uri):
    """Overrides that make a digits/synthetic run take seconds on CPU, and run it there on any
    machine: tests that compare results bit for bit (resume) must not depend on cuDNN's choices."""
    return [
        "device=cpu", "data.dataset=synthetic", "data.limit_train=64", "data.limit_test=32", "data.batch_size=16",
        "model.arch=resnet18", "model.width=4", "model.layers=[1,1,1,1]", "train.epochs=2",
        "train.warmup_epochs=0", "train.progress=none", "eval.max_samples=32",
        # the headline worst case at one ball, with the fast cascade and small masking probes
        "eval.worst_case.suite=fast", "eval.worst_case.threats=[{norm: linf, eps: 8/255}]",
        "eval.checks.max_samples=16", "eval.checks.black_box_queries=50",
        f"output_dir={tmp_path / 'runs'}", f"tracking.tracking_uri={tracking_uri}", "tracking.log_model=false",
    ]


@pytest.fixture(scope="module")
def ray_cluster():
    """One two-node local Ray cluster (ray.cluster_utils.Cluster, loopback only) shared by the
    Ray tests of a module: 2 CPUs on the head, 2 on a second node. Shut down after the module,
    so that tests that start their own cluster (`ray start`) have the machine to themselves."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true",
                                                                "RAY_TRAIN_V2_ENABLED": "1"}})
    yield cluster
    ray.shutdown()
    cluster.shutdown()
