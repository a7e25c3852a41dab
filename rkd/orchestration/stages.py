"""The stages a run needs, trained on the cluster where the run itself would train.

A run loads trained models (teachers, MAE stages, sources: the teacher cache) and may share a
one-time training set (MACD's adversarial examples). On a cluster none of these is made by the
driver -- the head of ``ray_cluster.yaml`` has no GPU: each is a Ray task with the resources of
its own config (:func:`stage_options`: one worker's ``scaling.resources_per_worker``, a GPU when
``use_gpu``), started as soon as the stages it loads exist. A stage trains as one process (the
teacher cache's in-process run); a config's ``scaling.num_workers`` data-parallel workers apply
to its own rows, not yet to it as a stage.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable

import numpy as np
import ray

from rkd.config import ExperimentConfig, config_from_dict
from rkd.config.methods import import_plugin, plugin_sources
from rkd.engine.device import device_for_grant
from rkd.experiment import ensure_teacher
from rkd.experiment.stage_graph import TablePlan, plan_table, stage_label

NODE_TAG = "rkd.node_id"


def stage_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """Ray task options of one process of ``cfg``: CPU 1 unless ``resources_per_worker`` says
    otherwise, GPU 1 with ``use_gpu``, custom resources as given."""
    s = cfg.scaling
    # CPU/GPU in any case, as trial_resources reads them (a lowercase 'gpu' is not a custom resource)
    res = {k.upper() if k.lower() in ("cpu", "gpu") else k: v for k, v in s.resources_per_worker.items()}
    opts: dict[str, Any] = {"num_cpus": res.pop("CPU", 1), "num_gpus": res.pop("GPU", 1 if s.use_gpu else 0)}
    if res:
        opts["resources"] = res
    return opts


def granted(device: str) -> str:
    """``device: auto`` in this task: CUDA only when Ray granted it a GPU."""
    return device_for_grant(device, ray.get_gpu_ids())


def enter_task(cwd: str, plugins: list[str]) -> str:
    """In a task: the driver's working directory and method plugins; returns the node id."""
    os.chdir(cwd)  # relative paths in the configs (data roots, presets) mean what they meant to the driver
    for source in plugins:
        import_plugin(source)
    return ray.get_runtime_context().get_node_id()


@ray.remote(max_retries=0)
def _stage_task(key: str, payload: dict, cwd: str, plugins: list[str], parent_run_id: str | None, tags: dict,
                *needs) -> dict:
    """Train (or find) one cached model. ``needs``: the results of the stages it loads."""
    from rkd.config.schema import TeacherConfig

    node = enter_task(cwd, plugins)
    cfg, spec = config_from_dict(payload["cfg"]), TeacherConfig(**payload["spec"])
    # device auto: the GPU Ray granted this task, else the CPU (not in the cache key)
    spec = spec.model_copy(update={"overrides": [*spec.overrides, f"device={granted(cfg.device)}"]})
    t0 = time.monotonic()
    run = ensure_teacher(spec, parent_run_id=parent_run_id, tracking=cfg.tracking, output_dir=cfg.output_dir,
                         tags={NODE_TAG: node, **tags}, requested_as=payload["requested_as"])
    return {"key": key, "node_id": node, "trained_now": run.trained_now, "seconds": time.monotonic() - t0}


def submit_stages(plan: TablePlan, parent_run_id: str | None = None,
                  tags: dict[str, dict] | None = None) -> dict[str, ray.ObjectRef]:
    """Every stage of ``plan`` as a Ray task, each depending on the stages it loads; ``tags``:
    extra tags for the run of a stage, by key (e.g. a table's label of it)."""
    cwd, plugins = os.getcwd(), plugin_sources()
    refs: dict[str, ray.ObjectRef] = {}
    for key, st in plan.stages.items():  # in dependency order: needs were added first
        payload = {"cfg": st.cfg.model_dump(mode="json"), "spec": st.spec.model_dump(mode="json"),
                   "requested_as": st.requested_as}
        refs[key] = _stage_task.options(name=f"stage {stage_label(key)}", **stage_options(st.cfg)).remote(
            key, payload, cwd, plugins, parent_run_id, (tags or {}).get(key, {}), *[refs[k] for k in st.needs])
    return refs


def train_stages(cfgs: Iterable[ExperimentConfig], parent_run_id: str | None = None) -> list[dict]:
    """Train (or find) on the cluster every cached model the runs of ``cfgs`` load; raises the
    first stage's error. Returns each stage's record (node, trained now or found)."""
    plan = plan_table({str(i): cfg for i, cfg in enumerate(cfgs)})
    return ray.get(list(submit_stages(plan, parent_run_id).values()))


@ray.remote(max_retries=0)
def _shared_data_task(payload: dict, cwd: str, plugins: list[str]) -> np.ndarray:
    from rkd.engine.device import resolve_device
    from rkd.experiment import build_datasets
    from rkd.experiment.pipeline import by_role, load_trained_models
    from rkd.methods import get_method

    enter_task(cwd, plugins)
    cfg = config_from_dict(payload)
    device = resolve_device(granted(cfg.device))
    models = by_role(load_trained_models(cfg, device, None))
    train_set, _, _ = build_datasets(cfg.data)
    data = get_method(cfg.method.name).shared_data.build(cfg, train_set, models, device)
    return np.ascontiguousarray(data.numpy())


def build_shared_data(cfg: ExperimentConfig) -> ray.ObjectRef:
    """A run's shared training data (MACD's one-time adversarial set: from its disk cache, or
    built) made by a task with the run's resources; its result stays in the object store."""
    return _shared_data_task.options(name=f"shared data {cfg.name}", **stage_options(cfg)).remote(
        cfg.model_dump(mode="json"), os.getcwd(), plugin_sources())
