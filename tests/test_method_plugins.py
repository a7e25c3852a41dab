"""A method defined and registered in this file only (nothing else in rkd edited) runs through
`rkd train`'s code path, a Tune sweep on a real Ray cluster and the teacher cache: the method
registry is the one place a method is declared (rkd/methods/registry.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from rkd.config.methods import MethodConfig, plugin_sources
from rkd.config.numbers import Number
from rkd.config.schema import TeacherConfig
from rkd.methods import Method, StepOutput, freeze
from rkd.methods.registry import MethodSpec, register_method, require


class SoftTargetsMethod(MethodConfig):
    """CE + alpha * KL(teacher || student): plain knowledge distillation from a frozen teacher."""

    TRAINED_MODELS: ClassVar[tuple[str, ...]] = ("teacher",)
    name: Literal["soft_targets_test"]
    teacher: TeacherConfig
    alpha: Annotated[Number, Field(ge=0)] = 1.0


class SoftTargets(Method):
    name = "soft_targets_test"
    frozen = ("teacher",)

    def __init__(self, model, teacher, alpha: float):
        super().__init__(model)
        self.teacher, self.alpha = teacher, float(alpha)

    def training_step(self, x, y) -> StepOutput:
        logits = self.model(x)
        with torch.no_grad():
            target = F.softmax(self.teacher(x), dim=1)
        ce = F.cross_entropy(logits, y)
        kl = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
        return StepOutput(loss=ce + self.alpha * kl, terms={"ce": ce, "kl": kl}, logits=logits.detach())


register_method(MethodSpec(
    config=SoftTargetsMethod,
    build=lambda cfg, model, models, seed: SoftTargets(model, freeze(require(models, "teacher", cfg.name)),
                                                        cfg.alpha)))


def _configs(tmp_path: Path, tracking_uri: str) -> Path:
    common = ("data: {dataset: synthetic, limit_train: 48, limit_test: 24, batch_size: 16, flip: false}\n"
              "model: {arch: resnet18, width: 4, layers: [1, 1, 1, 1]}\n"
              "train: {epochs: 2, warmup_epochs: 0, progress: none}\n"
              "eval: {max_samples: 24, attacks: [{kind: fgsm, eps: 8/255}]}\n"
              f"tracking: {{tracking_uri: '{tracking_uri}', log_model: false, experiment: plugins}}\n"
              f"output_dir: {tmp_path / 'runs'}\n")
    (tmp_path / "teacher.yaml").write_text(f"name: plugin-teacher\n{common}method: {{name: standard}}\n")
    (tmp_path / "student.yaml").write_text(
        f"name: plugin-student\n{common}"
        f"method: {{name: soft_targets_test, alpha: 0.5, teacher: {{config: {tmp_path / 'teacher.yaml'}}}}}\n")
    return tmp_path / "student.yaml"


def _teacher_dirs(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "runs" / "teachers").iterdir() if p.is_dir() and ".stale-" not in p.name]


def test_the_plugin_is_known_where_the_pipeline_asks(tmp_path, tracking_uri):
    from rkd.config import ConfigError, load_config

    cfg = load_config(str(_configs(tmp_path, tracking_uri)))
    assert isinstance(cfg.method, SoftTargetsMethod) and list(cfg.trained_models()) == ["method.teacher"]
    assert plugin_sources() == [__file__]  # what Ray workers import to know it too
    with pytest.raises(ConfigError, match="method.alpha"):
        load_config(str(tmp_path / "student.yaml"), ["method.alpha=-1"])


def test_plugin_method_through_rkd_train_and_the_teacher_cache(tmp_path, tracking_uri, capsys):
    from rkd.cli import main

    student = _configs(tmp_path, tracking_uri)
    assert main(["train", str(student), "--run-dir", str(tmp_path / "s1")]) == 0
    results = json.loads((tmp_path / "s1" / "results.json").read_text())
    assert results["run"]["method"] == "soft_targets_test" and 0 <= results["clean_accuracy"] <= 1
    (teacher,) = _teacher_dirs(tmp_path)  # trained once, into the cache under output_dir
    assert json.loads((teacher / "run.json").read_text())["status"] == "FINISHED"
    assert results["run"]["teacher"]["run_dir"] == str(teacher)
    history = json.loads((tmp_path / "s1" / "history.json").read_text())
    assert {"train_kl", "train_ce"} <= set(history[-1])  # the plugin's named loss terms
    mtime = (teacher / "model.pt").stat().st_mtime
    assert main(["train", str(student), "--run-dir", str(tmp_path / "s2")]) == 0  # the cache is hit
    assert _teacher_dirs(tmp_path) == [teacher] and (teacher / "model.pt").stat().st_mtime == mtime


@pytest.mark.ray
def test_plugin_method_in_a_tune_sweep(ray_cluster, tmp_path, tracking_uri):
    from mlflow import MlflowClient

    from rkd.orchestration.tune import run_sweep

    _configs(tmp_path, tracking_uri)
    (tmp_path / "space.yaml").write_text(
        "base: student.yaml\nmetric: clean\nscheduler: {name: fifo}\nsearcher: grid\n"
        "params: {method.alpha: {grid: [0.0, 2.0]}}\n")
    summary = run_sweep(tmp_path / "space.yaml", name="plugin-sweep")
    assert len(summary["trials"]) == 2
    assert all(t["metrics"]["finished"] == 1 and not t["error"] for t in summary["trials"]), summary["trials"]
    assert len(_teacher_dirs(tmp_path)) == 1  # one teacher for both trials, trained by the driver
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("plugins").experiment_id
    runs = client.search_runs([exp], filter_string="tags.`rkd.sweep` = 'plugin-sweep'")
    assert sorted(r.data.tags["rkd.method"] for r in runs) == ["soft_targets_test"] * 2
    assert all(r.info.status == "FINISHED" for r in runs)
