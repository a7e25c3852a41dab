"""A paper table as one graph (rkd.experiment.stage_graph, rkd.orchestration.table): the plan
holds each cached model once, needs before users; on a multi-node cluster whose head offers no
trainer resource the teacher trains once on a worker node, the students after it and
concurrently, an independent row from the start; a failing row is FAILED and the others finish;
a second run reuses everything that finished."""

from __future__ import annotations

import json

import pytest

from rkd.config import load_config
from rkd.config.schema import TeacherConfig
from rkd.experiment.stage_graph import plan_table


def test_plan_holds_each_stage_once_needs_first():
    cfgs = {"macd": load_config("preset:digits_macd"), "macd2": load_config("preset:digits_macd", ["seed=1"]),
            "dd": load_config("preset:digits_defensive_distillation"), "std": load_config("preset:digits_standard")}
    plan = plan_table(cfgs)
    order = list(plan.stages)
    for key, stage in plan.stages.items():
        assert all(order.index(k) < order.index(key) for k in stage.needs)  # inputs come first
        assert stage.cfg.output_dir == "runs"
    names = [k.rsplit("/", 1)[1].rsplit("-", 1)[0] for k in order]
    assert len(set(order)) == len(order) and names.count("digits-standard") == 1  # MACD's source, once
    assert plan.rows["macd"].needs == plan.rows["macd2"].needs  # two rows, one chain
    assert plan.rows["std"].needs == ()
    mae = next(k for k in order if "mae" in k and "feature" not in k)
    assert set(plan.users(mae)) == {"macd", "macd2"}


def test_stage_options_read_cpu_and_gpu_in_any_case_and_pass_custom_resources():
    pytest.importorskip("ray")
    from rkd.orchestration.stages import stage_options

    cfg = load_config("preset:digits_standard", ["scaling.resources_per_worker={gpu: 1, cpu: 2, trainer: 1}"])
    assert stage_options(cfg) == {"num_cpus": 2, "num_gpus": 1, "resources": {"trainer": 1}}
    assert stage_options(load_config("preset:digits_standard", ["scaling.use_gpu=true"])) == {"num_cpus": 1,
                                                                                             "num_gpus": 1}


# ------------------------------------------------------------------------------ on a cluster
@pytest.fixture(scope="module")
def trainer_cluster():
    """A head with 2 CPUs and no 'trainer' resource, a worker node that offers 4 (a stand-in for
    GPUs): every stage and row asks for one, so none can run on the head."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=4, resources={"trainer": 4})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true",
                                                                "OMP_NUM_THREADS": "1"}})

    @ray.remote(num_cpus=1, resources={"trainer": 1})
    def warm():  # four worker processes with rkd imported: the tasks' start times are their own
        import time

        import rkd.orchestration.table  # noqa: F401

        time.sleep(1)

    ray.get([warm.remote() for _ in range(4)])
    yield worker.node_id
    ray.shutdown()
    cluster.shutdown()


def _table(tmp_path, tiny_overrides):
    res = "scaling.resources_per_worker={trainer: 1}"
    teacher = TeacherConfig(config="preset:digits_dd_teacher", cache_dir=str(tmp_path / "teachers"),
                            overrides=[*tiny_overrides, res, "data.half=null", "eval.enabled=false"])
    cheap_eval = ["eval.attacks=[{kind: fgsm, eps: 8/255}]", "eval.jsma=null", "eval.checks.enabled=false"]

    def row(preset, *extra, with_teacher=False):
        cfg = load_config(preset, [*tiny_overrides, res, "data.half=null", *cheap_eval, *extra])
        if with_teacher:
            cfg = cfg.model_copy(update={"method": cfg.method.model_copy(update={"teacher": teacher})})
        return cfg

    rows = {"student-a": row("preset:digits_defensive_distillation", "name=student-a", with_teacher=True),
            "student-b": row("preset:digits_defensive_distillation", "name=student-b", "seed=1", with_teacher=True),
            "independent": row("preset:digits_standard", "name=independent"),
            "diverges": row("preset:digits_standard", "name=diverges", "train.lr=1e30")}
    return {name: (cfg, tmp_path / "rows" / name) for name, cfg in rows.items()}


def _runs(tracking_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {r.info.run_name: r for r in runs}


@pytest.mark.e2e
def test_table_runs_as_one_graph_on_the_worker_nodes(tmp_path, tiny_overrides, tracking_uri, trainer_cluster,
                                                    monkeypatch):
    from rkd.orchestration.table import NODE_TAG, run_table

    monkeypatch.chdir(tmp_path)
    rows = _table(tmp_path, tiny_overrides)
    out = run_table(rows)
    assert not [o.error for n, o in out.items() if n != "diverges" and o.error]
    assert {n: o.how for n, o in out.items()} == {"student-a": "trained", "student-b": "trained",
                                                  "independent": "trained", "diverges": None}
    assert "FloatingPointError: training diverged" in out["diverges"].error
    assert json.loads((rows["diverges"][1] / "run.json").read_text())["status"] == "FAILED"

    runs = _runs(tracking_uri)
    teacher = [r for r in runs.values() if r.data.tags.get("rkd.role") == "teacher"]
    assert len(teacher) == 1  # trained once for both students
    teacher = teacher[0]
    assert runs["diverges"].info.status == "FAILED"
    for name in ("student-a", "student-b", "independent"):
        assert runs[name].info.status == "FINISHED"
    for r in (teacher, *runs.values()):  # everything ran on the worker node, none on the head
        assert r.data.tags[NODE_TAG] == trainer_cluster, r.info.run_name
    cached = next(p for p in (tmp_path / "teachers").iterdir() if p.is_dir())
    assert json.loads((cached / "run.json").read_text())["tags"][NODE_TAG] == trainer_cluster

    t_end, a, b, ind = teacher.info.end_time / 1000, out["student-a"], out["student-b"], out["independent"]
    assert a.started >= t_end and b.started >= t_end  # the students after their teacher...
    assert max(a.started, b.started) < min(a.ended, b.ended)  # ...and at the same time
    assert ind.started < t_end  # the independent row from the start, beside the teacher

    again = run_table(rows)  # the same table again: everything that finished is reused
    assert {n: o.how for n, o in again.items() if not o.error} == {
        "student-a": "reused", "student-b": "reused", "independent": "reused"}
    teachers = [r.info.run_id for r in _runs(tracking_uri).values() if r.data.tags.get("rkd.role") == "teacher"]
    assert teachers == [teacher.info.run_id]
