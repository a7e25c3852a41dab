"""Config schema and loader: defaults, paper notation, inheritance, overrides, errors."""

from __future__ import annotations

import re

import pytest
import yaml

from rkd.config import ConfigError, config_from_dict, dump_config, flatten, list_presets, load_config


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(p)


def test_defaults_are_the_robust_kd_grid():
    cfg = load_config()
    labels = [a.label for a in cfg.eval.attacks]
    assert labels == ["FGSM 4/255", "FGSM 8/255", "PGD-7 L2 0.25", "PGD-7 L2 0.5",
                      "PGD-7 Linf 4/255", "PGD-7 Linf 8/255"]
    assert cfg.train.momentum == 0.9 and cfg.train.weight_decay == pytest.approx(5e-4)
    assert cfg.tracking.tracking_uri is None  # resolved later: env var, else sqlite:///mlflow.db


def test_paper_notation_numbers(tmp_path):
    path = write(tmp_path, "a.yaml",
                 "method:\n  name: adversarial\n  attack:\n    eps: 8/255\ntrain:\n  weight_decay: 5e-4\n")
    cfg = load_config(path)
    assert cfg.method.attack.eps == pytest.approx(8 / 255)
    assert cfg.train.weight_decay == pytest.approx(5e-4)


def test_unknown_key_names_file_and_path(tmp_path):
    path = write(tmp_path, "bad.yaml", {"train": {"epochs": 3, "epohcs": 4}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert path in msg and "train.epohcs" in msg and "unknown key" in msg


def test_wrong_type_and_range(tmp_path):
    path = write(tmp_path, "bad.yaml", {"train": {"epochs": "many", "lr": -1}, "data": {"batch_size": 0}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = {k for k, _ in info.value.problems}
    assert {"train.epochs", "train.lr", "data.batch_size"} <= keys
    assert "'many'" in str(info.value)


@pytest.mark.parametrize("override,key", [
    ("train.epochs=true", "train.epochs"),          # no bool -> int coercion
    ("train.epochs=2.5", "train.epochs"),
    ("data.augment=yes_please", "data.augment"),
    ("eval.attacks.0.eps=true", "eval.attacks.0.eps"),  # would otherwise be eps 1.0
    ("model.layers=5", "model.layers"),
])
def test_no_type_coercion(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in [k for k, _ in info.value.problems]


def test_attack_keys_must_apply_to_the_kind():
    with pytest.raises(ConfigError, match=r"eval.attacks.0: .*random_start, restarts do\(es\) not apply to a fgsm"):
        load_config(None, ["eval.attacks=[{kind: fgsm, eps: 8/255, restarts: 5, random_start: false}]"])
    with pytest.raises(ConfigError, match="n_queries"):
        load_config(None, ["eval.attacks=[{kind: pgd, eps: 8/255, n_queries: 50}]"])
    cfg = load_config(None, ["eval.attacks=[{kind: square, eps: 8/255, n_queries: 50}]"])
    assert cfg.eval.attacks[0].n_queries == 50


def test_model_knob_the_arch_does_not_take(tmp_path):
    path = write(tmp_path, "m.yaml", {"model": {"arch": "resnet18", "depth": 28}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert path in str(info.value) and "model.depth" in str(info.value)
    cfg = load_config(None, ["model.arch=wide_resnet", "model.depth=10", "model.widen_factor=1"])
    assert cfg.model.kwargs() == {"depth": 10, "widen_factor": 1}
    with pytest.raises(ConfigError, match="model"):
        load_config(None, ["model.arch=wide_resnet", "model.depth=11"])  # not 6n+4


def test_trades_defaults_to_eval_mode_and_needs_its_start():
    assert load_config("preset:digits_trades").method.attack.mode == "eval"
    assert load_config(None, ["method.name=trades", "method.attack.eps=4/255"]).method.attack.mode == "eval"
    assert load_config(None, ["method.name=adversarial", "method.attack.eps=4/255"]).method.attack.mode == "train"
    with pytest.raises(ConfigError, match="random start"):
        load_config(None, ["method.name=trades", "method.attack.random_start=false"])


def test_milestones_after_warmup():
    with pytest.raises(ConfigError, match="warm-up"):
        load_config(None, ["train.epochs=10", "train.warmup_epochs=2", "train.schedule=step",
                           "train.milestones=[2, 5]"])


def test_attack_kinds_match_the_attack_registry():
    from rkd.attacks import ATTACK_KINDS
    from rkd.config.schema import ATTACK_KINDS as CONFIG_KINDS
    from rkd.config.schema import AttackConfig

    assert set(CONFIG_KINDS) == set(ATTACK_KINDS) == set(AttackConfig.KEYS_BY_KIND)


def test_method_specific_keys_are_checked(tmp_path):
    path = write(tmp_path, "bad.yaml", {"method": {"name": "trades", "beta": -2}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [k for k, _ in info.value.problems] == ["method.beta"]
    path = write(tmp_path, "bad2.yaml", {"method": {"name": "standard", "beta": 1}})
    with pytest.raises(ConfigError, match="method.beta: unknown key"):
        load_config(path)
    path = write(tmp_path, "bad3.yaml", {"method": {"name": "nonsense"}})
    with pytest.raises(ConfigError, match="method"):
        load_config(path)


def test_linf_eps_in_pixel_units(tmp_path):
    path = write(tmp_path, "bad.yaml", {"eval": {"attacks": [{"kind": "pgd", "norm": "linf", "eps": 8}]}})
    with pytest.raises(ConfigError, match=r"eval.attacks.0: .*8/255"):
        load_config(path)


def test_unknown_arch_and_dataset(tmp_path):
    path = write(tmp_path, "bad.yaml", {"model": {"arch": "resnet9000"}, "data": {"dataset": "mnist"}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "model: " in text and "resnet9000" in text and "data.dataset" in text


def test_step_schedule_needs_milestones_within_epochs(tmp_path):
    with pytest.raises(ConfigError, match="milestones"):
        load_config(write(tmp_path, "a.yaml", {"train": {"schedule": "step", "epochs": 10}}))
    with pytest.raises(ConfigError, match="beyond"):
        load_config(write(tmp_path, "b.yaml", {"train": {"schedule": "step", "epochs": 10, "milestones": [20]}}))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "x.yaml", "train: [unclosed"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "y.yaml", "- 1\n- 2\n"))


def test_overrides(tmp_path):
    path = write(tmp_path, "a.yaml", {"name": "a", "train": {"epochs": 3}})
    cfg = load_config(path, ["train.epochs=5", "eval.attacks.0.eps=2/255", "method.name=adversarial",
                             "method.attack.norm=l2", "method.attack.eps=0.5", "data.classes=[0, 3]"])
    assert cfg.train.epochs == 5
    assert cfg.eval.attacks[0].eps == pytest.approx(2 / 255)  # reached into the default grid
    assert cfg.method.name == "adversarial" and cfg.method.attack.norm == "l2"
    assert cfg.data.classes == [0, 3]


def test_bad_overrides_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="train.epocs: unknown key"):
        load_config(None, ["train.epocs=5"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="out of range"):
        load_config(None, ["eval.attacks.17.eps=0.1"])


def test_switching_method_drops_old_keys(tmp_path):
    path = write(tmp_path, "a.yaml", {"method": {"name": "trades", "beta": 3.0}})
    cfg = load_config(path, ["method.name=standard"])
    assert cfg.method.name == "standard"


def test_base_inheritance_and_cycles(tmp_path):
    write(tmp_path, "base.yaml", {"name": "base", "train": {"epochs": 7, "lr": 0.2}})
    child = write(tmp_path, "child.yaml", {"base": "base.yaml", "name": "child", "train": {"epochs": 3}})
    cfg = load_config(child)
    assert (cfg.name, cfg.train.epochs, cfg.train.lr) == ("child", 3, 0.2)
    write(tmp_path, "c1.yaml", {"base": "c2.yaml"})
    c2 = write(tmp_path, "c2.yaml", {"base": "c1.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(c2)


def test_presets_load_and_roundtrip(tmp_path):
    names = list_presets()
    assert {"digits_standard", "digits_adversarial", "digits_trades"} <= set(names)
    for name in names:
        cfg = load_config(f"preset:{name}")
        again = config_from_dict(yaml.safe_load(dump_config(cfg)))
        assert again == cfg


def test_yaml_tags_cannot_execute(tmp_path):
    path = write(tmp_path, "evil.yaml", "name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_flatten_for_mlflow_params():
    flat = flatten(load_config("preset:digits_adversarial").model_dump(mode="json"))
    assert flat["method.attack.norm"] == "linf"
    assert flat["eval.attacks.3.eps"] == 0.5
    assert flat["model.layers"] == [1, 1, 1, 1]


def test_every_shipped_job_config_validates():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "jobs"
    files = sorted(root.rglob("*.yaml"))
    assert files, "no job configs found"
    for f in files:
        load_config(str(f))  # raises ConfigError naming the file and key


# ---- MAE / MACD configs (issue 4) --------------------------------------------------------------
def test_macd_and_mae_presets_validate():
    macd = load_config("preset:digits_macd")
    assert macd.method.name == "macd" and macd.method.attack.steps == 40 and macd.method.init == "source"
    assert macd.eval.transfer is not None and len(macd.eval.transfer.attacks) == 6
    mae = load_config("preset:digits_mae_feature")
    assert mae.model.arch == "mae_vit_tiny" and mae.model.width is None  # arch change replaced the model section
    assert mae.method.stage == "feature" and mae.method.start_from.config == "preset:digits_mae"


@pytest.mark.parametrize("override, message", [
    ("method.student_patch=5", "must divide the image side 32"),
    ("method.student_mask_ratio=1.0", "student_mask_ratio"),
    ("method.teacher_mask_ratio=-0.1", "teacher_mask_ratio"),
    ("method.teacher.config=preset:digits_standard", "must be an MAE run"),
    ("method.distill=self", "unused with 'self'"),
    ("method.attack.eps=8", "larger than the [0,1] pixel range"),
    ("method.projection=random", "projection"),
])
def test_macd_bad_values_are_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("preset:digits_macd", [override])


def test_mae_config_rules():
    with pytest.raises(ConfigError, match="eval.enabled: false"):
        load_config("preset:digits_mae", ["eval.enabled=true"])
    with pytest.raises(ConfigError, match="set method.start_from"):
        load_config("preset:digits_mae", ["method.stage=feature"])
    with pytest.raises(ConfigError, match="mae_vit"):
        load_config("preset:digits_mae", ["model={arch: resnet18}"])
    with pytest.raises(ConfigError, match="no classifier"):
        load_config("preset:digits_standard", ["model={arch: mae_vit_tiny}"])
    with pytest.raises(ConfigError, match="eval.transfer.source is required"):
        load_config("preset:digits_standard", ["eval.transfer={}"])
    with pytest.raises(ConfigError, match="duplicate labels"):
        load_config("preset:digits_macd", ["eval.transfer.attacks=[{kind: fgsm}, {kind: fgsm}]"])
    assert load_config(None, ["model.input_size=224"]).model.input_size == 224


def test_changing_arch_in_an_overlay_replaces_the_model_section(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: {arch: resnet18, width: 8, layers: [1, 1, 1, 1]}\n")
    same = tmp_path / "same.yaml"
    same.write_text(f"base: {base.name}\nmodel: {{width: 4}}\n")
    other = tmp_path / "other.yaml"
    other.write_text(f"base: {base.name}\nmodel: {{arch: wrn16_4}}\n")
    assert load_config(str(same)).model.layers == [1, 1, 1, 1]  # same arch: merged
    assert load_config(str(other)).model.width is None  # new arch: the resnet knobs are gone


def test_caches_follow_output_dir():
    """Teacher, adversarial and transfer caches default to folders under output_dir."""
    cfg = load_config("preset:digits_macd", ["output_dir=elsewhere"])
    assert cfg.method.source.cache_dir is None and cfg.method.source.resolved_cache_dir(cfg.output_dir) == \
        "elsewhere/teachers"
    assert cfg.adv_cache_dir(cfg.method.cache_dir) == "elsewhere/adv_cache"
    resolved = cfg.resolved_eval().transfer
    assert resolved.cache_dir == "elsewhere/adv_cache" and resolved.source == cfg.method.source
    assert cfg.eval.transfer.cache_dir is None  # the config itself is unchanged


def test_identity_leaves_out_what_cannot_change_the_weights():
    from rkd.config.identity import LOADER, RUN, identity, identity_key

    base = load_config("preset:digits_robust_kd")
    moved = load_config("preset:digits_robust_kd", ["output_dir=x", "device=cpu", "eval.max_samples=5",
                                                    "tracking.enabled=false", "train.progress=none",
                                                    "method.teacher.cache_dir=/tmp/t"])
    assert identity_key(base) == identity_key(moved)
    assert identity_key(base) != identity_key(load_config("preset:digits_robust_kd", ["method.beta=1"]))
    assert identity_key(base) != identity_key(load_config("preset:digits_robust_kd", ["data.batch_size=17"]))
    data = identity(base.data, (RUN, LOADER))
    assert "batch_size" not in data and "augment" not in data and "half" in data


def test_amp_is_refused_for_the_jacobian_term_and_allowed_without_it():
    with pytest.raises(ConfigError, match=r"train.amp must be false while method.gamma > 0"):
        load_config("preset:digits_robust_kd", ["train.amp=true"])
    assert load_config("preset:digits_robust_kd", ["train.amp=true", "method.gamma=0"]).train.amp


def test_data_shift_is_validated_and_keys_the_caches_only_when_set():
    from rkd.config.identity import LOADER, RUN, identity, identity_key
    from rkd.experiment.model_cache import teacher_key

    with pytest.raises(ConfigError) as info:
        load_config("preset:digits", ["data.shift=rot45"])
    assert [k for k, _ in info.value.problems] == ["data.shift"] and "'rot90'" in str(info.value)
    plain, rotated = load_config("preset:digits_teacher_plus"), load_config("preset:digits_teacher_plus_rot90")
    assert (plain.data.shift, rotated.data.shift) == ("none", "rot90")
    assert teacher_key(plain) != teacher_key(rotated)  # a rotated teacher is never the cached plain one
    assert identity(rotated.data, (RUN, LOADER))["shift"] == "rot90"  # one-time training sets keyed too
    # the default is left out of every key: caches made before data.shift existed stay valid
    assert "shift" not in identity(plain.data, (RUN, LOADER)) and "shift" not in identity(plain)["data"]
    assert identity_key(load_config("preset:digits_teacher_plus", ["data.shift=none"])) == identity_key(plain)


def test_data_image_size_is_validated_and_keys_the_caches_only_when_set():
    from rkd.config.identity import LOADER, RUN, identity
    from rkd.experiment.model_cache import teacher_key

    with pytest.raises(ConfigError) as info:
        load_config("jobs/cifar10/trades.yaml", ["data.image_size=16"])
    assert [k for k, _ in info.value.problems] == ["data"] and "data.image_size" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config("preset:digits", ["data.image_size=0"])
    assert [k for k, _ in info.value.problems] == ["data.image_size"]
    plain, small = load_config("preset:digits_teacher_plus"), load_config("preset:digits_teacher_plus",
                                                                        ["data.image_size=16"])
    assert (plain.data.image_side(), small.data.image_side()) == (32, 16)
    assert teacher_key(plain) != teacher_key(small)  # a 16 px teacher is never the cached 32 px one
    assert identity(small.data, (RUN, LOADER))["image_size"] == 16  # one-time training sets keyed too
    # unset is left out of every key: caches made before data.image_size existed stay valid
    assert "image_size" not in identity(plain.data, (RUN, LOADER)) and "image_size" not in identity(plain)["data"]


def test_model_stem_stride_is_validated_and_keys_the_caches_only_when_set():
    from rkd.config.identity import identity
    from rkd.experiment.model_cache import teacher_key

    with pytest.raises(ConfigError) as info:
        load_config("preset:digits", ["model.stem_stride=3"])
    assert [k for k, _ in info.value.problems] == ["model.stem_stride"]
    with pytest.raises(ConfigError, match="stem_stride"):
        load_config("jobs/cifar10/robust_distillation/teachers/trades_wrn34_10.yaml", ["model.stem_stride=2"])
    plain, strided = load_config("preset:digits_teacher_plus"), load_config("preset:digits_teacher_plus",
                                                                          ["model.stem_stride=2"])
    assert teacher_key(plain) != teacher_key(strided)
    # unset is left out of every key: caches made before model.stem_stride existed stay valid
    assert "stem_stride" not in identity(plain)["model"] and identity(strided)["model"]["stem_stride"] == 2


def test_macd_student_patch_must_divide_the_configured_image_side():
    with pytest.raises(ConfigError, match=r"student_patch 8 must divide the image side 12"):
        load_config("preset:digits_macd", ["data.image_size=12"])
    assert load_config("preset:digits_macd", ["data.image_size=16", "method.student_patch=4"]).data.image_size == 16
