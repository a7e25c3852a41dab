"""A finished run again: its trained model, and its evaluation with another grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from rkd.config import load_config
from rkd.config.errors import ConfigError
from rkd.engine import verified_torch_load
from rkd.engine.device import resolve_device
from rkd.evaluation import evaluate, make_results, write_result_files
from rkd.evaluation.results import archive_results
from rkd.experiment.builders import build_data, build_model
from rkd.experiment.pipeline import eval_log, load_teacher, run_info
from rkd.experiment.run_claim import claimed
from rkd.experiment.run_dir import read_run_json, write_run_json
from rkd.tracking import MlflowRun
from rkd.tracking.report import SPLIT_TAG

SPLITS = ("test", "validation")


def load_trained_model(run_dir: str | Path, device: str | torch.device = "cpu", split: str = "test"):
    """(config, model with the run's final weights, the images of ``split``) of a finished run
    directory: its test set, or the validation split its training held out (``data.val_size``)."""
    run_dir = Path(run_dir)
    cfg = load_config(str(run_dir / "config.yaml"))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = build_data(cfg.data)
    images = data.test if split == "test" else data.validation
    if images is None:
        raise ConfigError(str(run_dir / "config.yaml"), [(
            "data.val_size", "is 0: the run holds out no validation split to evaluate on (train with it set)")])
    model = build_model(cfg, data.num_classes)
    model.load_state_dict(verified_torch_load(run_dir / "model.pt"))
    return cfg, model.to(device).eval(), images


def evaluate_run(run_dir: str | Path, *, eval_overrides: Iterable[str] = (), eval_config: str | None = None,
                 track: bool = True, split: str = "test") -> dict:
    """Evaluate a finished run again (e.g. with another grid), on its test set or (``split``
    ``"validation"``) on the validation split its training held out, the split to choose
    options and checkpoints on. The training run is left as it is: the evaluation is an MLflow
    run of its own, nested under the training run (tags ``rkd.evaluates``, ``rkd.evaluated_split``),
    that can fail or be stopped without touching it. Test results become the directory's
    ``results.json``/``results.md``, validation results ``validation/results.json``/``.md``; the
    ones they replace are kept under ``history/`` there. The directory is claimed
    (rkd.experiment.run_claim) while it runs."""
    run_dir = Path(run_dir)
    with claimed(run_dir):
        return _evaluate_claimed(run_dir, list(eval_overrides), eval_config, track, split)


def results_dir(run_dir: str | Path, split: str = "test") -> Path:
    """Where the results of ``split`` live in a run directory."""
    return Path(run_dir) if split == "test" else Path(run_dir) / split


def _evaluate_claimed(run_dir: Path, overrides: list[str], eval_config: str | None, track: bool, split: str) -> dict:
    if eval_config is not None:
        other = load_config(eval_config)
        overrides = [f"eval={json.dumps(other.eval.model_dump(mode='json'))}"] + overrides
    cfg = load_config(str(run_dir / "config.yaml"), overrides)
    device = resolve_device(cfg.device)
    _, model, images = load_trained_model(run_dir, device, split)
    spec = cfg.transfer_source()
    source, source_run = (load_teacher(spec, device, tracking=cfg.tracking, output_dir=cfg.output_dir)
                          if spec is not None else (None, None))
    previous = read_run_json(run_dir)
    roles = {k: v for k, v in previous.items() if isinstance(v, dict) and "run_dir" in v}
    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    trained = previous.get("mlflow_run_id")
    tags = {"rkd.method": cfg.method.name, "rkd.dataset": cfg.data.dataset, "rkd.arch": cfg.model.arch,
            "rkd.run_dir": str(run_dir.resolve()), "rkd.evaluates": trained or "none", SPLIT_TAG: split,
            "rkd.role": "evaluation", "rkd.label": f"{cfg.name}: evaluated again on its {split} split"}
    name = f"{cfg.name} (re-evaluation)" if split == "test" else f"{cfg.name} ({split})"
    with MlflowRun(tracking, run_name=name, tags=tags, parent_run_id=trained) as tracker:
        body = evaluate(model, images, cfg.resolved_eval(), device=device, batch_size=cfg.data.eval_batch_size,
                        source=source, source_label=source_run.cfg.name if source_run is not None else None,
                        log=eval_log(cfg.name))
        body = {**body, "evaluated_split": split,
                "splits": {**(previous.get("splits") or {}), split: body["num_samples"]}}
        results = make_results(body, run=run_info(cfg, run_dir, trained, roles),
                               train_wall_time_s=previous.get("train_wall_time_s"))
        out = results_dir(run_dir, split)
        kept = archive_results(out)
        tracker.log_results(results, write_result_files(results, out))
        key = "last_evaluation" if split == "test" else f"last_{split}_evaluation"
        write_run_json(run_dir, **{key: {"mlflow_run_id": tracker.run_id,
                                         "previous_results": kept and str(kept.relative_to(run_dir))}})
    return results
