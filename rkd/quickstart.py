"""The main job: offline, on CPU, minutes -- every method on the same digits data.

The digits analogue of the Robust-KD paper's Table 9 ("CIFAR10+ -> CIFAR10-"): the training set
is split into two stratified halves; a robust teacher (PGD adversarial training, L2 0.5) learns
on the first half (digits+), and every target model -- baselines and students -- trains on the
second half (digits-) and is tested on the full digits test split.

Each method of :data:`QUICKSTART_METHODS` is trained and evaluated on the Robust-KD grid; the
job prints one comparison table with each method's training wall time, a defensive-distillation
table (JSMA, FGSM, CW, input-gradient norms), a MACD table (transfer protocol and white-box), and
logs everything to MLflow: one parent run ``quickstart`` with one nested run per method. The
whole table runs as one graph (:mod:`rkd.orchestration.table`) on a local Ray cluster the job
starts itself: the teachers and the other models the rows load as stages, each row after its
own. Teachers are trained once and cached (under
``<output_dir>/teachers``, keyed by their config); a later quickstart reuses them and its table
shows their original training time, marked "cached".
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable

from rkd.config import TrackingConfig, load_config
from rkd.config.schema import TeacherConfig
from rkd.evaluation import comparison_table, distillation_table, read_results
from rkd.evaluation.figures import save_png, tradeoff_figure
from rkd.experiment import unique_dir
from rkd.experiment.progress import Progress
from rkd.experiment.run_dir import require_writable
from rkd.tracking import MlflowRun, check_tracking, resolve_tracking_uri
from rkd.tracking.mlflow_tracker import NOTE_TAG

#: the description of the quickstart's MLflow experiment
EXPERIMENT_NOTE = (
    "**rkd quickstart**: every seed method of rkd (standard training, PGD-AT, TRADES, Shafahi et al., Robust-KD, "
    "MACD, defensive distillation, with their teachers) trained and evaluated on the offline digits data. "
    "Each job is one parent run named `quickstart` whose description is its comparison table; its nested runs "
    "are the rows (tag `rkd.role`: method, teacher, source, mae stage; tag `rkd.label`: the row's name in "
    "the table). Metrics are grouped by their first part (`clean/`, `robust/`, `train/`, `time/`); accuracies "
    "are in % everywhere (`clean/accuracy`; `robust/accuracy` = the per-example worst case at Linf 8/255; "
    "`robust/vs-eps x255/...` and `robust/vs-steps/...` are curves: chart them against the step). "
    "Each method run's artifacts hold `figures/robustness.png`; the parent's, `figures/tradeoff.png`.")

#: (table label, preset) in table order; presets whose name contains "teacher" are teachers
#: (trained once through the teacher cache, exactly as the students that name them see them)
QUICKSTART_METHODS: list[tuple[str, str]] = [
    ("standard training", "preset:digits_standard"),
    ("adversarial training (PGD-7 Linf 8/255)", "preset:digits_adversarial"),
    ("TRADES (beta 6, 10-step KL attack Linf 8/255)", "preset:digits_trades"),
    ("robust teacher: AT L2 0.5 on digits+", "preset:digits_teacher_plus"),
    ("Shafahi et al. (digits+ -> digits-)", "preset:digits_shafahi"),
    ("Robust-KD (digits+ -> digits-)", "preset:digits_robust_kd"),
    ("MACD (MAE teacher, one-time PGD-40 set)", "preset:digits_macd"),
    ("DD teacher: standard at T=20", "preset:digits_dd_teacher"),
    ("defensive distillation (T=20)", "preset:digits_defensive_distillation"),
]
#: rows of ``--full`` only (the Robust-KD ablations, Table 9's other rows), inserted before
#: the row of ``ABLATIONS_BEFORE``; ``--only`` may name them too
ABLATIONS_BEFORE = "preset:digits_robust_kd"
ABLATION_METHODS: list[tuple[str, str]] = [
    ("Robust-KD w/o L_J (digits+ -> digits-)", "preset:digits_robust_kd_no_jacobian"),
    ("Robust-KD w/o L_fm (digits+ -> digits-)", "preset:digits_robust_kd_no_features"),
]
#: rows of the defensive-distillation table (keys as in :func:`method_keys`)
DISTILLATION_ROWS = ("standard", "dd_teacher", "defensive_distillation")
#: rows of the MACD table, evaluated under both protocols (the transfer source is the source
#: model of the row whose method has one: MACD's)
MACD_ROWS = ("standard", "adversarial", "trades", "macd")
#: white-box columns shown next to the transfer protocol in the MACD table
MACD_WHITE_BOX = [("FGSM 8/255", "white-box"), ("PGD-7 Linf 8/255", "white-box")]


#: the stem stride the main job gives every row's ResNet (its teachers and MACD's student
#: included; MACD's MAE stages are ViTs and keep theirs): the digits are 8x8 images upsampled to
#: 32x32, and a stride-2 stem runs each stage at half the side, about 3x cheaper per step on
#: 2 CPU cores; the inputs, the eps balls and the attacks stay at 32x32. 1 = the presets as they
#: are (what the other digits jobs run). The README ("Where the time goes") has both measured.
DEFAULT_STEM_STRIDE = 2


def _key(preset: str) -> str:
    return preset.split("_", 1)[-1]


def _split_override(item: str) -> tuple[str | None, str]:
    """``"adversarial:a.b=1"`` -> ``("adversarial", "a.b=1")``; ``"a.b=1"`` -> ``(None, "a.b=1")``."""
    key = item.split("=", 1)[0]
    if ":" in key:
        target, rest = item.split(":", 1)
        return target, rest
    return None, item


def all_methods() -> list[tuple[str, str]]:
    """Every quickstart row, the ``--full`` ablations included, in table order."""
    at = next(i for i, (_, p) in enumerate(QUICKSTART_METHODS) if p == ABLATIONS_BEFORE)
    return QUICKSTART_METHODS[:at] + ABLATION_METHODS + QUICKSTART_METHODS[at:]


def method_keys() -> list[str]:
    """Short names of the quickstart methods (``standard``, ``adversarial``, ...), ablations included."""
    return [_key(p) for _, p in all_methods()]


def _is_teacher(preset: str) -> bool:
    return "teacher" in _key(preset)


def _named_by_others(configs: list) -> set[str]:
    """Presets that some loaded row names as a model it needs (a teacher, MACD's source)."""
    return {spec.config for _, _, c in configs if not isinstance(c, TeacherConfig)
            for spec in c.method.trained_models().values() if spec.config is not None}


def _with_shared_transfer(configs: list) -> list:
    """The baselines of the MACD table get the transfer protocol of the row whose method has a
    source model of its own (MACD's), against that same source."""
    own = next((c for _, _, c in configs if not isinstance(c, TeacherConfig) and c.eval.transfer is not None
                and c.method.transfer_source() is not None), None)
    if own is None:
        return configs
    transfer = own.eval.transfer.model_copy(update={"source": own.method.transfer_source()})
    return [(label, preset, c.model_copy(update={"eval": c.eval.model_copy(update={"transfer": transfer})})
             if _key(preset) in MACD_ROWS and not isinstance(c, TeacherConfig) and c is not own else c)
            for label, preset, c in configs]


def stem_overrides(stem_stride: int) -> list[str]:
    """``METHOD:model.stem_stride=N`` for every row (none for 1: the presets as they are)."""
    if stem_stride not in (1, 2):
        raise ValueError(f"--stem-stride must be 1 or 2, got {stem_stride}")
    return [] if stem_stride == 1 else [f"{k}:model.stem_stride={stem_stride}" for k in method_keys()]


def quickstart_configs(overrides: Iterable[str] = (), output_dir: str = "runs", only: Iterable[str] | None = None,
                       full: bool = False, stem_stride: int = DEFAULT_STEM_STRIDE) -> list[tuple[str, str, object]]:
    """The rows the quickstart runs, ``(label, preset, config)`` in table order, every config
    loaded and validated: a :class:`TeacherConfig` for a row served from the teacher cache (the
    teachers, and any row that another row names as a model it needs), an
    :class:`ExperimentConfig` for a row that runs as a trial. Arguments as :func:`run_quickstart`'s."""
    keys = method_keys()
    overrides = stem_overrides(stem_stride) + list(overrides)  # the user's come last, so they win
    targeted = [_split_override(o) for o in overrides]  # (method or None, key=value)
    for (target, _), o in zip(targeted, overrides):
        if target is not None and target not in keys:
            raise ValueError(f"override {o!r}: unknown quickstart method {target!r}; choose from {keys}")
    unknown = sorted(set(only or ()) - set(keys))
    if unknown:
        raise ValueError(f"--only {' '.join(unknown)}: unknown quickstart method; choose from {keys}")
    wanted = set(only) if only is not None else {_key(p) for _, p in (all_methods() if full else QUICKSTART_METHODS)}
    chosen = [(label, preset) for label, preset in all_methods() if _key(preset) in wanted]
    if not chosen:
        raise ValueError(f"no quickstart method matches {list(only or [])}; choose from {keys}")
    teacher_cache = str(Path(output_dir) / "teachers")

    def overrides_for(key: str) -> list[str]:
        return [o for target, o in targeted if target in (None, key)]

    def teacher_spec(preset: str) -> TeacherConfig:
        # the same spec a student naming this teacher gets (below), so both hit one cache entry
        return TeacherConfig(config=preset, overrides=overrides_for(_key(preset)), cache_dir=teacher_cache)

    configs = []
    for label, preset in chosen:
        if _is_teacher(preset):
            configs.append((label, preset, teacher_spec(preset)))
            continue
        mine = overrides_for(_key(preset)) + [f"output_dir={output_dir}"]
        cfg = load_config(preset, mine)
        for role, spec in cfg.method.trained_models().items():  # the models a student names: one cache
            if spec.config is not None:
                cached = teacher_spec(spec.config)
                mine += [f"method.{role}.cache_dir={teacher_cache}",
                         f"method.{role}.overrides={json.dumps(cached.overrides)}"]
        configs.append((label, preset, load_config(preset, mine)))
    # a row another row names (the standard model is MACD's transfer source) is that cached
    # model itself: trained and evaluated once, in the driver, like the teachers
    named = _named_by_others(configs)
    configs = [(label, preset, teacher_spec(preset) if preset in named else c) for label, preset, c in configs]
    configs = _with_shared_transfer(configs)
    return configs


def plan_quickstart(configs: list, cpus: int, output_dir: str, tracking: TrackingConfig):
    """The quickstart as a table plan: every row asking for ``cpus`` CPUs, the teacher rows as
    the stages their students load. Returns ``(plan, {stage key: teacher row's preset})``."""
    from rkd.config.schema import ScalingConfig
    from rkd.experiment.stage_graph import add_stage, plan_table
    from rkd.orchestration.train import absolute_paths

    where = {"scaling": ScalingConfig(resources_per_worker={"CPU": cpus})}
    rows = {_key(preset): absolute_paths(cfg.model_copy(update=where))
            for _, preset, cfg in configs if not isinstance(cfg, TeacherConfig)}
    models = [(cfg, absolute_paths(load_config(cfg.config, cfg.overrides).model_copy(
                   update={**where, "output_dir": output_dir, "tracking": tracking})))
              for _, _, cfg in configs if isinstance(cfg, TeacherConfig)]
    plan = plan_table(rows, models)
    keys = {}
    for (_, preset, cfg), (_, requester) in zip([c for c in configs if isinstance(c[2], TeacherConfig)], models):
        keys[add_stage(plan, cfg, requester)] = preset  # already planned: its key
    return plan, keys


class GraphProgress:
    """The progress lines of the quickstart's graph, and what it needs afterwards: each teacher
    row's ``(run directory, trained now)`` and the failures."""

    def __init__(self, progress: Progress, labels: dict[str, str], teacher_keys: dict[str, str]):
        self.progress, self.labels, self.teacher_keys = progress, labels, teacher_keys
        self.teachers: dict[str, tuple[Path, bool]] = {}
        self.failed: dict[str, str] = {}

    def on_stage(self, key: str, record: dict | None, error: str | None) -> None:
        if key in self.teacher_keys:
            preset = self.teacher_keys[key]
            self.teachers[preset] = (Path(key), bool(record and record["trained_now"]))
            cached = record is not None and not record["trained_now"]
            self.progress.done(self.labels[_key(preset)] + (" FAILED" if error else ""),
                               record["seconds"] if record else None, cached=cached)
        else:
            what = "FAILED" if error else ("trained" if record["trained_now"] else "found in the cache")
            self.progress.note(f"model {Path(key).name}: {what}")
        if error:
            self.failed[Path(key).name] = error

    def on_row(self, outcome) -> None:
        self.progress.done(self.labels[outcome.name] + (" FAILED" if outcome.error else ""), outcome.seconds)
        if outcome.error:
            self.failed[outcome.name] = outcome.error


def run_graph(configs: list, qdir: Path, parent_run_id: str | None, tracking: TrackingConfig, output_dir: str,
              parallel: int, progress: Progress) -> dict[str, tuple[Path, bool]]:
    """Every row and the models they load as one graph on a local Ray cluster started here (or
    ``$RAY_ADDRESS``; :mod:`rkd.orchestration.table`), each task with ``CPUs / parallel`` CPUs:
    two at a time by default. Returns the teacher rows' ``{preset:
    (run directory, trained now)}``; raises if a row failed, KeyboardInterrupt if stopped."""
    from rkd.orchestration import connect
    from rkd.orchestration.table import check_before_work, cpus_per_task, run_plan
    from rkd.tracking import PARENT_TAG, end_tagged_runs

    connect(num_cpus=os.cpu_count(), tracking_uri=tracking.tracking_uri)
    plan, teacher_keys = plan_quickstart(configs, cpus_per_task(parallel), output_dir, tracking)
    check_before_work([r.cfg for r in plan.rows.values()] + [st.cfg for st in plan.stages.values()])
    events = GraphProgress(progress, {_key(p): label for label, p, _ in configs}, teacher_keys)
    progress.note(f"{len(plan.stages)} trained models and {len(plan.rows)} runs as one graph on Ray, "
                  f"{parallel} at a time")
    labels = {_key(p): label for label, p, _ in configs}
    tags = {k: {"rkd.label": labels[k]} for k in plan.rows}
    tags.update({key: {"rkd.label": labels[_key(p)]} for key, p in teacher_keys.items()})
    try:
        run_plan(plan, {k: qdir / r.cfg.name for k, r in plan.rows.items()}, parent_run_id=parent_run_id,
                 tags=tags, on_stage=events.on_stage, on_row=events.on_row)
    finally:  # every task has ended: a nested run still RUNNING lost its process (Ctrl-C, a crash)
        if parent_run_id is not None:
            end_tagged_runs(tracking, PARENT_TAG, parent_run_id, "KILLED",
                            {"rkd.stopped": "its job ended before the run did"})
    if events.failed:
        raise RuntimeError("quickstart runs failed: " + "; ".join(f"{k}: {e}" for k, e in events.failed.items()))
    return events.teachers


def run_quickstart(overrides: Iterable[str] = (), output_dir: str = "runs", only: Iterable[str] | None = None,
                   out=sys.stdout, parallel: int = 2, full: bool = False,
                   stem_stride: int = DEFAULT_STEM_STRIDE) -> dict:
    """Run the quickstart.

    ``overrides`` are ``key=value`` for every method (teachers included), or
    ``METHOD:key=value`` for one (METHOD as in :func:`method_keys`, e.g.
    ``adversarial:method.attack.steps=3``). Every config is loaded and validated before the
    first run starts. The rows and the models they load (teachers once, cached) run as one
    graph of Ray tasks on a local cluster started here (or ``$RAY_ADDRESS``), ``parallel`` at a
    time, each with ``1/parallel`` of the CPUs (the default 2 keeps every core busy while one
    task is in its serial parts; 1 gives each task all CPUs). A row that
    another row names as a model it needs (the standard model, MACD's transfer source) is served
    from the teacher cache instead of being trained twice. ``full`` adds the Robust-KD
    ablation rows (:data:`ABLATION_METHODS`); ``only`` picks rows by key from all of them.
    ``stem_stride`` is every row's ResNet stem stride (:data:`DEFAULT_STEM_STRIDE`; 1 runs the
    presets as they are).
    """
    configs = quickstart_configs(overrides, output_dir=output_dir, only=only, full=full, stem_stride=stem_stride)
    first = configs[0][2]
    tracking: TrackingConfig = (load_config(first.config, first.overrides) if isinstance(first, TeacherConfig)
                                else first).tracking
    check_tracking(tracking)  # before any work or folder
    require_writable(output_dir)
    qdir = unique_dir(output_dir, "quickstart")
    rows, runs = [], []
    parent_tags = {"rkd.kind": "quickstart", "rkd.role": "quickstart", "rkd.label": "rkd quickstart: every seed "
                   "method on the offline digits data", NOTE_TAG: "The comparison table appears here when the job "
                   "has finished; a job that failed or was stopped has none (its status says which)."}
    with MlflowRun(tracking, run_name="quickstart", tags=parent_tags) as parent:
        parent.describe_experiment(EXPERIMENT_NOTE)
        progress = Progress(len(configs), out=out)
        teachers = run_graph(configs, qdir, parent.run_id, tracking, output_dir, parallel, progress)
        for label, preset, cfg in configs:
            if isinstance(cfg, TeacherConfig):
                run_dir, trained_now = teachers[preset]
                results = read_results(run_dir / "results.json")
                run_id = results["run"].get("mlflow_run_id")
                if not trained_now:
                    label = f"{label} (cached)"
            else:
                run_dir = qdir / cfg.name
                results = read_results(run_dir / "results.json")
                run_id = results["run"].get("mlflow_run_id")
            rows.append((label, results))
            runs.append({"key": _key(preset), "label": label, "run_dir": str(run_dir), "mlflow_run_id": run_id,
                         "results": results})
        table = comparison_table(rows, protocols=("white-box",))
        n = rows[0][1]["num_samples"]
        summary_md = (f"# rkd quickstart\n\nAccuracy (%) on the {n} digits test images. The headline is the "
                      "worst case: per image, correct clean and under every white-box attack in the Linf 8/255 "
                      "ball (the grid's FGSM and PGD-7, then the eval's cascade suite on the images still robust). "
                      "Masking flags: the automatic gradient-masking checks that fired (evidence in each "
                      "run's results.md). Train time = wall time of training on this machine (a student's "
                      f"excludes its teacher's, shown in the teacher's own row).\n\n{table}")
        macd_rows = [(r["label"], r["results"]) for r in runs if r["key"] in MACD_ROWS]
        if any(a["protocol"] == "transfer" for _, r in macd_rows for a in r["attacks"]):
            source = next(a["source_model"] for _, r in macd_rows for a in r["attacks"] if a["protocol"] == "transfer")
            summary_md += ("\n## MACD: published (transfer) protocol and white-box\n\nTransfer: the attacks run "
                           f"against the standard model ({source}, trained once and cached) and each model "
                           "classifies the resulting examples (MACD's published protocol); white-box: the attacks "
                           "run against each model itself. A sample counts when the model is right on both the "
                           "clean image and the attacked one. The standard model is the transfer source itself, "
                           "so its transfer cells stay empty (examples made against a model and fed back to it are "
                           "a white-box attack: see its white-box columns). MACD's train time excludes its MAE "
                           "teacher and the one-time adversarial set.\n\n"
                           + comparison_table(macd_rows, MACD_WHITE_BOX, ("transfer",)))
        dd_rows = [(r["label"], r["results"]) for r in runs if r["key"] in DISTILLATION_ROWS]
        if any(r.get("jsma") or r.get("input_gradient") for _, r in dd_rows):
            summary_md += ("\n## Defensive distillation\n\nAccuracy (%) under FGSM and CW, targeted JSMA "
                           "success rate (%) with saliency from probabilities (as in 2016) and from logits "
                           "(as in Carlini & Wagner), and the mean and median L2 norm of the input gradient of the "
                           f"loss at T = 1.\n\n{distillation_table(dd_rows)}")
        (qdir / "summary.md").write_text(summary_md)
        (qdir / "summary.json").write_text(json.dumps({"runs": runs}, indent=1))
        parent.log_artifact(qdir / "summary.md")
        parent.log_artifact(qdir / "summary.json")
        figure = tradeoff_figure(rows, title="rkd quickstart: cost and robustness (digits)")
        if figure is not None:
            parent.log_artifact(save_png(figure, qdir / "tradeoff.png"), "figures")
        parent.describe(summary_md)
        link, table_link = parent.ui_link(), parent.ui_link(table=True)

    print("\n" + summary_md, file=out)
    if tracking.enabled:
        uri = resolve_tracking_uri(tracking.tracking_uri)
        print(f"Runs are in MLflow ({uri}), experiment '{tracking.experiment}'. Browse them with:\n"
              f"    mlflow ui --backend-store-uri {uri}\n"
              f"and open {link or 'http://127.0.0.1:5000'} (this job's parent run, its table as the "
              f"description), or {table_link or 'the experiment'} (the runs table; expand the parent's row)",
              file=out)
    print(f"Run directories: {qdir} (teachers: {Path(output_dir) / 'teachers'})", file=out)
    return {"dir": str(qdir), "table": table, "runs": runs}
