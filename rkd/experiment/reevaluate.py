"""A finished run again: its trained model, and its evaluation with another grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from rkd.config import load_config
from rkd.engine import verified_torch_load
from rkd.evaluation import evaluate, make_results, write_results
from rkd.evaluation.results import archive_results
from rkd.experiment.builders import build_datasets, build_model, resolve_device
from rkd.experiment.pipeline import eval_log, load_teacher, run_info
from rkd.experiment.run_claim import claimed
from rkd.experiment.run_dir import read_run_json, write_run_json
from rkd.tracking import MlflowRun


def load_trained_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(config, model with the run's final weights, test set) of a finished run directory."""
    run_dir = Path(run_dir)
    cfg = load_config(str(run_dir / "config.yaml"))
    _, test_set, num_classes = build_datasets(cfg.data)
    model = build_model(cfg, num_classes)
    model.load_state_dict(verified_torch_load(run_dir / "model.pt"))
    return cfg, model.to(device).eval(), test_set


def evaluate_run(run_dir: str | Path, *, eval_overrides: Iterable[str] = (), eval_config: str | None = None,
                 track: bool = True) -> dict:
    """Evaluate a finished run again (e.g. with another grid). The training run is left as it
    is: the evaluation is an MLflow run of its own, nested under the training run (tag
    ``rkd.evaluates``), that can fail or be stopped without touching it. Its results become the
    directory's ``results.json``/``results.md``; the ones they replace are kept under
    ``history/``. The directory is claimed (rkd.experiment.run_claim) while it runs."""
    run_dir = Path(run_dir)
    with claimed(run_dir):
        return _evaluate_claimed(run_dir, list(eval_overrides), eval_config, track)


def _evaluate_claimed(run_dir: Path, overrides: list[str], eval_config: str | None, track: bool) -> dict:
    if eval_config is not None:
        other = load_config(eval_config)
        overrides = [f"eval={json.dumps(other.eval.model_dump(mode='json'))}"] + overrides
    cfg = load_config(str(run_dir / "config.yaml"), overrides)
    device = resolve_device(cfg.device)
    _, model, test_set = load_trained_model(run_dir, device)
    spec = cfg.transfer_source()
    source, source_run = (load_teacher(spec, device, tracking=cfg.tracking, output_dir=cfg.output_dir)
                          if spec is not None else (None, None))
    previous = read_run_json(run_dir)
    roles = {k: v for k, v in previous.items() if isinstance(v, dict) and "run_dir" in v}
    tracking = cfg.tracking if track else cfg.tracking.model_copy(update={"enabled": False})
    trained = previous.get("mlflow_run_id")
    tags = {"rkd.method": cfg.method.name, "rkd.dataset": cfg.data.dataset, "rkd.arch": cfg.model.arch,
            "rkd.run_dir": str(run_dir.resolve()), "rkd.evaluates": trained or "none"}
    with MlflowRun(tracking, run_name=f"{cfg.name} (re-evaluation)", tags=tags, parent_run_id=trained) as tracker:
        body = evaluate(model, test_set, cfg.resolved_eval(), device=device, batch_size=cfg.data.eval_batch_size,
                        source=source, source_label=source_run.cfg.name if source_run is not None else None,
                        log=eval_log(cfg.name))
        body = {**body, "splits": {**(previous.get("splits") or {}), "test": body["num_samples"]}}
        results = make_results(body, run=run_info(cfg, run_dir, trained, roles),
                               train_wall_time_s=previous.get("train_wall_time_s"))
        kept = archive_results(run_dir)
        files = write_results(results, run_dir)
        tracker.log_results(results, list(files))
        write_run_json(run_dir, last_evaluation={"mlflow_run_id": tracker.run_id,
                                                 "previous_results": kept and str(kept.relative_to(run_dir))})
    return results
