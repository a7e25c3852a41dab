"""The quickstart's plan (rkd.quickstart.quickstart_configs) and its progress line
(rkd.experiment.progress): which rows run, which are served from the teacher cache, and what
the user sees while it runs. The end-to-end run is in tests/test_cli.py."""

from __future__ import annotations

import io

import pytest

from rkd.config.schema import TeacherConfig
from rkd.experiment.model_cache import teacher_config, teacher_key
from rkd.experiment.progress import Progress, clock
from rkd.quickstart import ABLATION_METHODS, QUICKSTART_METHODS, method_keys, quickstart_configs


def _keys(configs):
    return [preset.split(":", 1)[1].removeprefix("digits_") for _, preset, _ in configs]


def test_default_rows_are_the_seed_methods_and_full_adds_the_ablations_before_robust_kd():
    default, full = quickstart_configs(), quickstart_configs(full=True)
    ablations = [p.split(":", 1)[1].removeprefix("digits_") for _, p in ABLATION_METHODS]
    assert _keys(default) == [p.split(":", 1)[1].removeprefix("digits_") for _, p in QUICKSTART_METHODS]
    assert not set(ablations) & set(_keys(default))
    keys = _keys(full)
    at = keys.index("robust_kd")
    assert keys[at - len(ablations):at] == ablations and len(keys) == len(default) + len(ablations)
    assert _keys(quickstart_configs(only=ablations[:1])) == ablations[:1]  # --only reaches them without --full


def test_the_standard_row_is_macds_cached_source_not_a_second_training():
    """MACD names the standard model as its transfer source: the standard row is that cached
    model (one training, one evaluation), with the very spec MACD's config carries."""
    rows = {k: c for k, (_, _, c) in zip(_keys(quickstart_configs()), quickstart_configs())}
    source = rows["macd"].method.trained_models()["source"]
    assert isinstance(rows["standard"], TeacherConfig)
    assert teacher_key(teacher_config(rows["standard"])) == teacher_key(teacher_config(source))
    alone = quickstart_configs(only=["standard", "adversarial"])  # no row names it: a trial again
    assert not any(isinstance(c, TeacherConfig) for _, _, c in alone)


def test_targeted_overrides_reach_the_cached_row_and_the_spec_that_names_it():
    rows = dict(zip(_keys(c := quickstart_configs(["standard:train.epochs=3"])), (x for _, _, x in c)))
    assert teacher_config(rows["standard"]).train.epochs == 3
    assert teacher_config(rows["macd"].method.trained_models()["source"]).train.epochs == 3


def test_every_resnet_of_the_main_job_gets_the_stride_two_stem_and_one_keeps_the_presets():
    """--stem-stride 2 (the default) reaches every row, the teachers it trains and MACD's source;
    MACD's MAE stages are ViTs and keep their configs; --stem-stride 1 adds nothing; a user's
    override comes after the default, so it wins."""
    from rkd.config import load_config

    def strides(configs):
        out = {}
        for k, (_, _, c) in zip(_keys(configs), configs):
            cfg = teacher_config(c) if isinstance(c, TeacherConfig) else c
            out[k] = cfg.model.stem_stride
            for role, spec in cfg.method.trained_models().items():
                nested = teacher_config(spec)
                out[f"{k}.{role}"] = nested.model.stem_stride if nested.model.arch.startswith("resnet") else "vit"
        return out

    default = strides(quickstart_configs())
    assert default.pop("macd.teacher") == "vit" and "macd.source" in default
    assert set(default.values()) == {2}
    assert set(strides(quickstart_configs(stem_stride=1)).values()) <= {None, "vit"}
    plain = quickstart_configs(stem_stride=1, only=["adversarial"])[0][2]
    assert plain == load_config("preset:digits_adversarial", ["output_dir=runs"])
    assert set(strides(quickstart_configs(["trades:model.stem_stride=1"], only=["trades"])).values()) == {1}
    with pytest.raises(ValueError, match="stem-stride"):
        quickstart_configs(stem_stride=3)


def test_the_table_is_one_plan_whose_teacher_rows_are_the_stages_their_students_load():
    """plan_quickstart: the teacher rows (and the standard row, MACD's source) are stages, each
    student lists the stages it loads, and every task asks for the CPUs it is given."""
    from rkd.config import TrackingConfig
    from rkd.quickstart import plan_quickstart

    configs = quickstart_configs(output_dir="q")
    plan, teacher_keys = plan_quickstart(configs, 2, "q", TrackingConfig(enabled=False))
    teacher_rows = {preset for _, preset, c in configs if isinstance(c, TeacherConfig)}
    assert set(teacher_keys.values()) == teacher_rows >= {"preset:digits_teacher_plus", "preset:digits_standard"}
    assert set(plan.rows) == {k for k in _keys(configs) if f"preset:digits_{k}" not in teacher_rows}
    by_preset = {v: k for k, v in teacher_keys.items()}
    for row in ("shafahi", "robust_kd"):
        assert plan.rows[row].needs == (by_preset["preset:digits_teacher_plus"],)
    assert by_preset["preset:digits_standard"] in plan.rows["macd"].needs
    assert by_preset["preset:digits_dd_teacher"] in plan.rows["defensive_distillation"].needs
    tasks = [r.cfg for r in plan.rows.values()] + [st.cfg for st in plan.stages.values()]
    assert all(c.scaling.resources_per_worker == {"CPU": 2} for c in tasks)
    assert len(plan.stages) == len(teacher_rows) + 2  # and MACD's two MAE stages


@pytest.mark.parametrize("only", [["standard", "robustkd"], ["nope"]])
def test_an_unknown_only_name_is_refused_naming_it(only):
    with pytest.raises(ValueError, match=only[-1]) as err:
        quickstart_configs(only=only)
    assert "choose from" in str(err.value) and "robust_kd" in str(err.value)
    assert set(method_keys()) >= {"standard", "macd", "robust_kd_no_jacobian"}


def test_progress_counts_rows_and_estimates_from_the_rows_timed_so_far():
    t = [100.0]
    out = io.StringIO()
    p = Progress(4, out=out, now=lambda: t[0])
    t[0] += 60
    p.done("standard", 60)
    t[0] += 5
    p.done("teacher", 5, cached=True)  # cached rows do not count in the mean
    t[0] += 120
    p.done("AT", 120)
    t[0] += 30
    p.done("last", 30)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/4] standard done in 1m00s | elapsed 1m00s | about 3m00s left"
    assert lines[1] == "[2/4] teacher cached | elapsed 1m05s | about 2m00s left"
    assert lines[2] == "[3/4] AT done in 2m00s | elapsed 3m05s | about 1m30s left"
    assert lines[3] == "[4/4] last done in 30s | elapsed 3m35s"


def test_clock_formats():
    assert (clock(0), clock(42.4), clock(60), clock(75.6), clock(3600)) == ("0s", "42s", "1m00s", "1m16s", "60m00s")
