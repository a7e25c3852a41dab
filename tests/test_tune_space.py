"""The tune-space grammar (rkd/config/tune_space.py): every shipped space validates, bad
spaces fail before Ray starts, naming the file and the key."""

from __future__ import annotations

import glob
import re

import pytest

from rkd.config import ConfigError
from rkd.config.tune_space import load_space, metric_names, overrides_for, parse_distribution

SPACES = sorted(glob.glob("tune_spaces/*.yaml"))


def test_spaces_exist_for_every_method():
    names = {p.rsplit("/", 1)[-1][:-5] for p in SPACES}
    assert {"robust_kd", "shafahi", "macd", "defensive_distillation", "adversarial", "trades",
            "ard", "rslad", "iad", "mtard", "adaad"} <= names


def test_the_headline_and_each_worst_case_are_metrics_a_space_can_rank_on():
    from rkd.config import load_config

    names = metric_names(load_config("preset:digits_ard"))
    assert {"robust", "worst case Linf 8/255", "PGD-7 Linf 8/255"} <= set(names)
    off = metric_names(load_config("preset:digits_ard", ["eval.worst_case.enabled=false"]))
    assert "robust" not in off and not any(n.startswith("worst case") for n in off)
    assert load_space("tune_spaces/ard.yaml").spec.metric == "worst case Linf 8/255"


@pytest.mark.parametrize("path", SPACES)
def test_shipped_space_validates(path):
    space = load_space(path)
    assert space.params and space.spec.metric in metric_names(space.base)


def test_papers_ranges():
    rkd = load_space("tune_spaces/robust_kd.yaml").params
    assert rkd["method.n_proj"].args == (1, 5, 10) and rkd["method.beta"].kind == "loguniform"
    assert [1, 2, 3, 4] in rkd["method.stages"].args and len(rkd["method.teacher.config"].args) == 2
    macd = load_space("tune_spaces/macd.yaml")
    assert macd.params["method.student_mask_ratio"].args == (0.65, 0.8)
    assert macd.params["method.student_patch"].args == (2, 4, 8, 16)
    assert macd.spec.metric.endswith("(transfer)")
    assert macd.params["method.kl_direction"].args == ("teacher_target", "student_target")
    assert macd.params["method.mask_value"].args == ("zero", "mean")
    assert macd.params["method.projection"].args == ("learned", "fixed")
    fusions = [o[0] for o in macd.params["method.teacher.overrides"].args]
    assert fusions == ["model.fusion=concat_linear", "model.fusion=gated", "model.fusion=add"]
    dd = load_space("tune_spaces/defensive_distillation.yaml").params["method.temperature"]
    assert dd.args == (1, 2, 5, 10, 20, 30, 40, 50, 100)


def test_trial_config_applies_the_sample():
    space = load_space("tune_spaces/robust_kd.yaml")
    cfg = space.trial_config({"method.beta": 5.0, "method.stages": [2]})
    assert cfg.method.beta == 5.0 and cfg.method.stages == [2]
    assert overrides_for({"a.b": [1, 2], "c": "x"}) == ['a.b=[1, 2]', 'c="x"']


@pytest.mark.parametrize("spec, message", [
    ({"gaussian": [0, 1]}, "unknown distribution 'gaussian'"),
    ({"choice": []}, "at least one value"),
    ({"uniform": [2, 1]}, "low < high"),
    ({"loguniform": [0, 1]}, "low > 0"),
    ({"randint": [1.5, 4]}, "integers"),
    ({"quniform": [0, 1]}, "[low, high, q]"),
    ({"uniform": [0, 1], "choice": [1]}, "exactly one"),
    (3, "exactly one"),
])
def test_bad_distributions(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_distribution(spec)


def _write(tmp_path, body):
    p = tmp_path / "space.yaml"
    p.write_text(body)
    return str(p)


@pytest.mark.parametrize("body, key, message", [
    ("params: {method.beta: {gaussian: [0, 1]}}", "params.method.beta", "unknown distribution"),
    ("params: {method.beta: {choice: []}}", "params.method.beta", "at least one value"),
    ("params: {method.beta: {uniform: [10, 1]}}", "params.method.beta", "low < high"),
    ("params: {method.betta: {uniform: [1, 10]}}", "params.method.betta", "not a key of the base config"),
    ("params: {method.beta: {uniform: [-1, 10]}}", "params.method.beta", "value -1 is invalid"),
    ("params: {method.stages: {choice: [[9]]}}", "params.method.stages", "invalid"),
    ("metric: PGD-99 Linf 8/255\nparams: {method.beta: {choice: [1]}}", "metric", "not reported"),
    ("searcher: grid\nparams: {method.beta: {uniform: [1, 2]}}", "searcher", "finite"),
    ("num_samples: 0\nparams: {method.beta: {choice: [1]}}", "num_samples", "greater than or equal to 1"),
    ("sampler: random\nparams: {method.beta: {choice: [1]}}", "sampler", "unknown key"),
    ("params: {}", "params", "at least one parameter"),
    # a float range on an integer key fails inside the range, not at its whole-number ends
    ("params: {train.epochs: {uniform: [2, 10]}}", "params.train.epochs", "valid integer"),
    # values valid one at a time, invalid together (warm-up as long as training)
    ("params: {train.epochs: {choice: [4, 12]}, train.warmup_epochs: {choice: [1, 6]}}", "params",
     "the combination {'train.epochs': 4, 'train.warmup_epochs': 6} is invalid"),
    ("metric: PGD-7 Linf 8/255 (transfer)\nparams: {method.beta: {choice: [1]}}", "metric", "not reported"),
])
def test_bad_space_fails_naming_file_and_key(tmp_path, body, key, message):
    path = _write(tmp_path, "base: preset:digits_robust_kd\n" + body + "\n")
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert err.value.source == path
    assert any(k == key and message in m for k, m in err.value.problems), err.value.problems


def test_missing_file_and_bad_base(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    path = _write(tmp_path, "base: preset:no_such\nparams: {seed: {choice: [1]}}\n")
    with pytest.raises(ConfigError, match="base"):
        load_space(path)


# ---- model selection on a validation split, never on test images ---------------------------------


def _tiny_space(tmp_path, body: str, data: str = "") -> str:
    (tmp_path / "base.yaml").write_text(
        "data: {dataset: synthetic, limit_train: 64, limit_test: 32, batch_size: 16" + data + "}\n"
        "model: {arch: resnet18, width: 4, layers: [1, 1, 1, 1]}\n"
        "train: {epochs: 1, warmup_epochs: 0, progress: none}\n"
        "eval: {attacks: [{kind: fgsm, eps: 8/255}]}\ntracking: {enabled: false}\n")
    return _write(tmp_path, "base: base.yaml\nmetric: FGSM 8/255\n" + body + "params: {seed: {choice: [1, 2]}}\n")


def test_trials_hold_out_val_samples_of_their_training_set(tmp_path):
    space = load_space(_tiny_space(tmp_path, "val_samples: 16\n"))
    cfg = space.trial_config({"seed": 1})
    assert cfg.data.val_size == 16 and space.base.data.val_size == 16  # the driver's base too (shared data)
    assert load_space(_tiny_space(tmp_path, "val_samples: 0.25\n")).trial_config({"seed": 2}).data.val_size == 0.25
    assert load_space(_tiny_space(tmp_path, "")).trial_config({"seed": 2}).data.val_size == 0.1  # the default
    # a validation split the base config sets is kept
    kept = load_space(_tiny_space(tmp_path, "val_samples: 16\n", ", val_size: 8"))
    assert kept.trial_config({"seed": 1}).data.val_size == 8
    for path in SPACES:  # every shipped space selects on a validation split
        assert load_space(path).trial_config({}).data.val_size > 0


def test_val_samples_that_leave_no_training_data_fail_before_ray(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_space(_tiny_space(tmp_path, "val_samples: 60\n"))
    assert any(k == "val_samples" and "data.val_size" in m for k, m in err.value.problems), err.value.problems


def test_objective_is_measured_on_the_train_derived_validation_split(tmp_path):
    pytest.importorskip("ray")
    import torch

    from rkd.experiment.builders import build_data, build_model
    from rkd.orchestration.train import RayReportCallback, final_report, objective_fn

    space = load_space(_tiny_space(tmp_path, "val_samples: 16\n"))
    cfg = space.trial_config({"seed": 1})
    fn = objective_fn(cfg, space.spec.metric, "cpu")
    d = build_data(cfg.data)
    rows = {bytes(x.numpy().tobytes()) for x in fn.data.images}
    assert len(fn.data) == 16 and fn.data.fingerprint() == d.validation.fingerprint()
    assert rows.isdisjoint({bytes(x.numpy().tobytes()) for x in d.train.images})
    assert rows.isdisjoint({bytes(x.numpy().tobytes()) for x in d.test.images})
    model = build_model(cfg)
    value = fn(model)
    assert 0.0 <= value <= 100.0 and value * 16 / 100 == pytest.approx(round(value * 16 / 100))  # % of 16 images

    # the final report's objective is the validation value with the final weights, not a test accuracy
    reports = []

    class Trainer:  # what the callback reads of the trainer
        rank, epochs = 0, 1
        method = type("M", (), {"model": model})()

        def save_checkpoint(self, path):
            torch.save({}, path)

    class Ckpt:
        @staticmethod
        def from_directory(d):
            return d

    cb = RayReportCallback(fn, report=lambda r, checkpoint=None: reports.append(r), checkpoint_cls=Ckpt)
    cb.on_epoch_end(Trainer(), 0, {"val_acc": 0.5})
    assert reports[-1]["objective"] == cb.final_objective == value
    results = {"clean_accuracy": 1.0, "attacks": [{"name": "FGSM 8/255", "protocol": "white-box", "accuracy": 0.99}]}
    final = final_report(cfg, results, cb.final_objective)
    assert final["objective"] == value and final["robust/white-box/FGSM 8-255"] == pytest.approx(99)

    from rkd.config import load_config

    with pytest.raises(ValueError, match="data.val_size"):  # no split, no objective: never the test set
        objective_fn(load_config(str(tmp_path / "base.yaml")), "clean", "cpu")
