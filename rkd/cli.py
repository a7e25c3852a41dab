"""``rkd`` command line: train, eval, export, quickstart, cache, tune, report.

Every command validates its whole configuration before doing any work; a configuration error
prints the file and key and exits with status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from rkd import SOURCE_ENV, __version__
from rkd.config import ConfigError, list_presets, load_config
from rkd.config.schema import ExperimentConfig
from rkd.interrupt import Terminated, sigterm_as_interrupt

#: where runs with the default output_dir keep the adversarial cache
DEFAULT_ADV_CACHE = f"{ExperimentConfig.model_fields['output_dir'].default}/adv_cache"

EPILOG_CONFIG = """\
CONFIG is a YAML file (see jobs/ and README "Configs") or preset:NAME for a shipped preset
({presets}). Overrides are dotted key=value pairs parsed as YAML, e.g.
  rkd train preset:digits_adversarial train.epochs=3 method.attack.eps=4/255
"""


def _cmd_train(args) -> int:
    from rkd.experiment import run_experiment

    if args.resume and args.config and "=" in args.config:  # `rkd train --resume DIR k=v`
        args.overrides.insert(0, args.config)
        args.config = None
    if args.workers is not None:
        args.overrides.append(f"scaling.num_workers={args.workers}")
    if args.resume:
        if args.smoke:
            raise SystemExit("rkd train: --smoke checks a config, not a run to resume")
        cfg = load_config(f"{args.resume}/config.yaml", args.overrides)
        out = run_experiment(cfg, run_dir=args.resume, resume=True)
    else:
        if not args.config:
            raise SystemExit("rkd train: give CONFIG (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.overrides)
        if args.smoke:
            return smoke_run(cfg, args.config, args.run_dir)
        if cfg.scaling.num_workers > 0:  # a TorchTrainer on the Ray cluster
            from rkd.orchestration import connect
            from rkd.orchestration.train import fit

            connect(args.address, tracking_uri=cfg.tracking.tracking_uri)
            res = fit(cfg, run_dir=args.run_dir)
            print(f"run directory: {res['run_dir']}")
            if res.get("mlflow_run_id"):
                print(f"mlflow run id: {res['mlflow_run_id']}")
            results_md = __import__("pathlib").Path(res["run_dir"]) / "results.md"
            if results_md.is_file():
                print(results_md.read_text())
            return 0
        out = run_experiment(cfg, run_dir=args.run_dir)
    print(f"run directory: {out.run_dir}")
    if out.mlflow_run_id:
        print(f"mlflow run id: {out.mlflow_run_id}")
    if out.results:
        print((out.run_dir / "results.md").read_text())
    return 0


def smoke_run(cfg, source: str, out_dir: str | None = None) -> int:
    """``--smoke``: ``cfg``'s whole chain (rkd.config.smoke) in-process, under a throwaway
    folder (``out_dir`` or a new temporary one), without tracking; one line per stage."""
    import tempfile
    import time
    from pathlib import Path

    from rkd.config.smoke import smoke_config
    from rkd.experiment import run_experiment

    out = Path(out_dir or tempfile.mkdtemp(prefix="rkd-smoke-"))
    smoked = smoke_config(cfg, str(out), load_config).model_copy(update={"scaling": cfg.scaling.model_copy(
        update={"num_workers": 0})})
    print(f"smoke run of {source}: {cfg.model.arch}, the {len(smoked.trained_models())} model(s) it names and "
          f"theirs, a few steps each, outputs under {out}", flush=True)
    t0 = time.monotonic()
    result = run_experiment(smoked, run_dir=out / "run")
    print(f"smoke run of {source}: passed in {time.monotonic() - t0:.0f} s "
          f"({'evaluated' if result.results else 'not evaluated'}); delete {out} when done")
    return 0


def _cmd_tune(args) -> int:
    from rkd.config.tune_space import load_space

    space = load_space(args.space)  # a bad space fails here, before Ray starts
    if args.smoke:  # the trials' chain, once, at the first value of every parameter
        first = {k: d.candidates()[0] for k, d in space.params.items()}
        return smoke_run(space.trial_config(first), f"{args.space} {json.dumps(first)}")
    from rkd.orchestration import connect
    from rkd.orchestration.train import DONE_KEY
    from rkd.orchestration.tune import run_sweep

    connect(args.address, num_cpus=args.num_cpus, tracking_uri=space.base.tracking.tracking_uri)
    summary = run_sweep(args.space, resume=args.resume, name=args.name, max_concurrent_trials=args.max_concurrent)
    print(f"sweep {summary['sweep']}: {len(summary['trials'])} trials, metric {summary['metric']} ({summary['mode']})")
    for t in summary["trials"]:
        obj = t["metrics"].get("objective")
        state = "error" if t["error"] else ("finished" if t["metrics"].get(DONE_KEY) == 1 else "stopped")
        print(f"  {state:8} objective={obj if obj is None else f'{obj:.4f}'} {json.dumps(t['config'])}")
    if summary["best"]:
        print(f"best: {json.dumps(summary['best']['config'])} objective={summary['best']['metrics']['objective']:.4f}")
    print(f"sweep directory: {summary['path']}")
    return 0


def _cmd_report(args) -> int:
    from rkd.tracking.report import experiment_table

    text = experiment_table(args.experiment, tracking_uri=args.tracking_uri, parent_run_id=args.parent,
                            protocols=tuple(args.protocol) if args.protocol else None,
                            over_seeds=args.over_seeds, split=args.split, fmt=args.format)
    if args.output:
        __import__("pathlib").Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _cmd_eval(args) -> int:
    from rkd.experiment import evaluate_run
    from rkd.experiment.reevaluate import results_dir

    results = evaluate_run(args.run_dir, eval_overrides=args.overrides, eval_config=args.config,
                           track=not args.no_track, split=args.split)
    print((results_dir(args.run_dir, args.split) / "results.md").read_text())
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _cmd_sync(args) -> int:
    from rkd.experiment.run_dir import read_run_json, write_run_json
    from rkd.tracking.backlog import sync_backlog

    out = sync_backlog(args.run_dir, args.tracking_uri)
    sent = ", ".join(f"{n} {k}" for k, n in sorted(out["sent"].items())) or "nothing"
    print(f"synced into {out['uri']}, run {out['run_id']}: {sent}"
          + (f"; not replayed: {', '.join(f'{n} {k}' for k, n in out['skipped'].items())}" if out["skipped"] else "")
          + f"; the backlog is kept as {out['kept_as']}")
    gap = read_run_json(args.run_dir).get("tracking_gap")
    if gap is not None:
        write_run_json(args.run_dir, tracking_gap={**gap, "synced": out["kept_as"]})
    return 0


def _cmd_export(args) -> int:
    from rkd.evaluation.export import ExportError, robustbench_entry

    try:
        entry = robustbench_entry(args.run_dir, threat=args.threat, name=args.name)
    except ExportError as exc:
        print(f"rkd export: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(entry, indent=2)
    if args.output:
        __import__("pathlib").Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def _cmd_quickstart(args) -> int:
    from rkd.quickstart import run_quickstart

    try:
        run_quickstart(args.overrides, output_dir=args.output_dir, only=args.only, parallel=args.parallel,
                       full=args.full, stem_stride=args.stem_stride)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        print(f"rkd quickstart: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_cache(args) -> int:
    from rkd.adversarial_cache import ls, verify
    from rkd.config.numbers import format_eps

    if args.cache_command == "ls":
        entries = ls(args.root)
        if not entries:
            print(f"no entries under {args.root}")
        for e in entries:
            attack = e.get("attack") or {}
            eps = format_eps(attack["eps"], attack.get("norm", "linf")) if "eps" in attack else None
            print(f"{e['key'][:16]}  {'ok ' if e['valid'] else 'BAD'}  n={e.get('num_samples')}  "
                  f"{attack.get('norm')} eps={eps} "
                  f"steps={attack.get('steps')} seed={e.get('seed')}  "
                  f"{(e.get('size_bytes') or 0) / 2**20:.1f} MiB  {e.get('created')}"
                  + ("" if e["valid"] else f"  ({e.get('message')})"))
        return 0
    if args.cache_command == "verify":
        try:
            results = verify(args.root, args.key)
        except ValueError as exc:
            print(f"rkd cache verify: {exc}", file=sys.stderr)
            return 2
        for key, ok, message in results:
            print(f"{key}  {'ok' if ok else 'CORRUPT'}  {message}")
        return 0 if all(ok for _, ok, _ in results) else 1
    return _cache_build(args)


def _cache_build(args) -> int:
    """Adversarial examples of a finished run's model on its (un-augmented) train or test split."""
    import time

    from rkd.adversarial_cache import cached_adversarial_set
    from rkd.config.numbers import parse_number
    from rkd.experiment import build_datasets, load_trained_model, resolve_device

    cfg, model, test_set = load_trained_model(args.run_dir)
    device = resolve_device(args.device)
    dataset = test_set if args.split == "test" else build_datasets(cfg.data)[0]
    if args.limit:
        dataset = dataset.subset(range(min(args.limit, len(dataset))))
    attack = {"norm": args.norm, "eps": parse_number(args.eps), "steps": args.steps, "random_start": True}
    if args.step_size:
        attack["step_size"] = parse_number(args.step_size)
    t0 = time.perf_counter()
    adv, labels, key = cached_adversarial_set(args.root, model.to(device), dataset, attack, args.seed,
                                              batch_size=args.batch_size, device=device, return_key=True)
    print(f"key {key}: {tuple(adv.shape)} adversarial images of {args.run_dir} ({args.split} split), "
          f"{args.norm} eps {args.eps}, {args.steps} steps, seed {args.seed}; {time.perf_counter() - t0:.1f} s "
          f"(built or reused) under {args.root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    presets = ", ".join(list_presets())
    p = argparse.ArgumentParser(prog="rkd", description="Distil adversarial robustness: train, evaluate, track.")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of a user error too")
    p.add_argument("--version", action="version", version=f"rkd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (and evaluate) one configured run",
                       description="Train one run from CONFIG, evaluate it on the configured attack grid, "
                                   "log it to MLflow.", epilog=EPILOG_CONFIG.format(presets=presets),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", help="YAML config path or preset:NAME")
    t.add_argument("overrides", nargs="*", help="key=value overrides")
    t.add_argument("--run-dir", help="run directory (default <output_dir>/<name>-<timestamp>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest checkpoint")
    w = t.add_mutually_exclusive_group()
    w.add_argument("--workers", type=int, default=None,
                   help="Ray Train workers (= scaling.num_workers; 0 = in-process, no Ray)")
    w.add_argument("--local", action="store_const", const=0, dest="workers",
                   help="in-process, no Ray, whatever the config's scaling says (= --workers 0)")
    t.add_argument("--address", default=None, help="Ray cluster address (default $RAY_ADDRESS, else a local one)")
    t.add_argument("--smoke", action="store_true",
                   help="check the whole chain (teachers, MAE stages, sources, caches, the run, its evaluation) at "
                        "the real architectures, a few steps on a handful of samples each, in-process, untracked, "
                        "in a throwaway folder (or --run-dir)")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a finished run directory",
                       description="Evaluate RUN_DIR's final model on its configured grid (or another), write "
                                   "results.json/results.md there and add them to a nested MLflow run.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  rkd eval runs/digits-standard-20261121-101500\n"
                              "  rkd eval RUN_DIR eval.max_samples=100 'eval.step_sweep={steps: [0, 7, 25]}'\n"
                              "  rkd eval RUN_DIR --split validation")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (its config.yaml and model.pt)")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the run's config (eval.*)")
    e.add_argument("--config", help="take the eval section from this config file instead")
    e.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    e.add_argument("--json", action="store_true", help="also print results.json")
    e.add_argument("--split", choices=("test", "validation"), default="test",
                   help="evaluate on the test set (results.json), or on the validation split the run held out "
                        "(data.val_size; RUN_DIR/validation/results.json), the one to choose options on "
                        "(default: %(default)s)")
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("export", help="a finished run as a RobustBench-style JSON entry",
                       description="Print (or write) RUN_DIR's evaluation as one RobustBench leaderboard entry: "
                                   "clean and worst-case / AutoAttack accuracy (%) of one threat model, the "
                                   "attacks and their params, gradient-masking flags, splits, additional data, "
                                   "config hash. Reads config.yaml and results.json; loads no weights.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  rkd export runs/digits-robust-kd-20261121-101500\n"
                              "  rkd export RUN_DIR --threat l2:0.5 --name Me2026Distilling -o entry.json")
    x.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory with results.json")
    x.add_argument("--threat", metavar="NORM:EPS", default=None,
                   help="threat model, e.g. linf:8/255 or l2:0.5 (default: the largest Linf ball, else the first)")
    x.add_argument("--name", default=None, help="entry name (default: the run's config name)")
    x.add_argument("-o", "--output", metavar="OUT.json", default=None, help="write here instead of stdout")
    x.set_defaults(func=_cmd_export)

    y = sub.add_parser("sync", help="send a run's tracking backlog to MLflow once the store is back",
                       description="A run whose tracking store failed went on untracked and kept what MLflow "
                                   "missed in RUN_DIR/tracking_backlog.jsonl; this replays it into the same MLflow "
                                   "run (params, per-step metrics, tags, artifacts, the end status) and keeps the "
                                   "backlog as tracking_backlog.synced-<time>.jsonl.")
    y.add_argument("run_dir", metavar="RUN_DIR", help="the run directory holding tracking_backlog.jsonl")
    y.add_argument("--tracking-uri", default=None,
                   help="the store (default: the one in RUN_DIR/run.json, else $MLFLOW_TRACKING_URI)")
    y.set_defaults(func=_cmd_sync)

    q = sub.add_parser("quickstart", help="the main job: every method on offline digits, one table",
                       description="Train and evaluate each quickstart method on the offline digits data "
                                   "(CPU, minutes), print the comparison table, log to MLflow.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="overrides apply to every method (train.epochs=2 eval.max_samples=100)\n"
                              "or to one, prefixed with its name (adversarial:method.attack.steps=3)")
    q.add_argument("overrides", nargs="*", help="key=value overrides applied to every method")
    q.add_argument("--output-dir", default="runs",
                   help="where the runs and the teacher cache go (default: %(default)s)")
    q.add_argument("--only", nargs="+", metavar="METHOD", help="run only these (e.g. standard adversarial)")
    q.add_argument("--parallel", type=int, default=2,
                   help="tasks at once, each with 1/N of the CPUs (default %(default)s: on 2 cores, 1.25x faster "
                        "than 1 at a time; 1 gives each task every CPU)")
    q.add_argument("--full", action="store_true",
                   help="also the Robust-KD ablation rows (w/o L_J, w/o L_fm; Table 9's other rows)")
    q.add_argument("--stem-stride", type=int, choices=(1, 2), default=2,
                   help="stride of every row's ResNet stem (default %(default)s: each stage at half the side, "
                        "about 3x cheaper on the upsampled 8x8 digits; 1 = the presets as they are, as the other "
                        "digits jobs run them)")
    q.set_defaults(func=_cmd_quickstart)

    c = sub.add_parser("cache", help="the content-addressed cache of one-time adversarial examples",
                       description="Build, list and verify cached adversarial sets (key = hash of the source "
                                   "model's weights, the attack, the dataset fingerprint and the seed; stored "
                                   "losslessly with checksums).")
    csub = c.add_subparsers(dest="cache_command", required=True)
    cb = csub.add_parser("build", help="PGD examples of a finished run's model, computed once and cached")
    cb.add_argument("run_dir", help="finished run whose model is the source (e.g. a standard model)")
    cb.add_argument("--split", choices=("train", "test"), default="train",
                    help="which split of the run's dataset to attack (default: %(default)s)")
    cb.add_argument("--norm", choices=("linf", "l2"), default="linf", help="PGD threat model (default: %(default)s)")
    cb.add_argument("--eps", default="8/255", help="PGD radius, paper notation allowed (default: %(default)s)")
    cb.add_argument("--steps", type=int, default=40, help="PGD steps (default: %(default)s, MACD's)")
    cb.add_argument("--step-size", default=None, help="default 2.5*eps/steps")
    cb.add_argument("--seed", type=int, default=0, help="random start's seed, part of the key (default: %(default)s)")
    cb.add_argument("--batch-size", type=int, default=256,
                    help="attack batch size, part of the key (default: %(default)s)")
    cb.add_argument("--limit", type=int, default=None, help="only the first N images")
    cb.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    for sp in (cb, csub.add_parser("ls", help="list cached sets"),
               csub.add_parser("verify", help="check every cached file against its checksum")):
        sp.add_argument("--root", default=DEFAULT_ADV_CACHE,
                        help=f"cache directory (default {DEFAULT_ADV_CACHE}: <output_dir>/adv_cache of a run "
                             "with the default output_dir)")
    csub.choices["verify"].add_argument("key", nargs="?", help="only this entry")
    c.set_defaults(func=_cmd_cache)

    tu = sub.add_parser("tune", help="hyperparameter sweep of a tune_spaces/*.yaml space on Ray Tune",
                        description="Validate SPACE, then run its trials on the Ray cluster ($RAY_ADDRESS or a "
                        "local one), one nested MLflow run per trial. --resume continues an interrupted sweep "
                        "without rerunning finished trials.")
    tu.add_argument("space", help="space file, e.g. tune_spaces/robust_kd.yaml")
    tu.add_argument("--resume", action="store_true", help="resume the sweep of this name")
    tu.add_argument("--name", default=None, help="sweep name (default sweep-<space>)")
    tu.add_argument("--address", default=None,
                    help="Ray cluster to join (default: $RAY_ADDRESS, else a local cluster started here)")
    tu.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster")
    tu.add_argument("--max-concurrent", type=int, default=None, help="cap on concurrent trials")
    tu.add_argument("--smoke", action="store_true",
                    help="no sweep: the trials' whole chain once, at the first value of every parameter, as "
                         "rkd train --smoke does")
    tu.set_defaults(func=_cmd_tune)

    r = sub.add_parser("report", help="paper-style comparison table from the MLflow runs of an experiment")
    r.add_argument("--experiment", required=True, help="MLflow experiment name (e.g. rkd-quickstart)")
    r.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    r.add_argument("--parent", default=None,
                   help="only the nested runs of this parent run (a sweep, a quickstart), by id or by name (the "
                        "newest run of that name)")
    r.add_argument("--format", choices=("md", "csv", "latex", "json"), default="md",
                   help="md: a Markdown table with a title; csv, latex, json: the table alone (default: %(default)s)")
    r.add_argument("-o", "--output", default=None, help="write the table here instead of printing it")
    r.add_argument("--protocol", nargs="+", choices=("white-box", "transfer"), help="only these protocols")
    seeds = r.add_mutually_exclusive_group()
    seeds.add_argument("--over-seeds", dest="over_seeds", action="store_true", default=None,
                       help="one row per label: mean ± sample std over its runs' seeds (default: so when any "
                            "label has several runs)")
    seeds.add_argument("--per-run", dest="over_seeds", action="store_false", default=None,
                       help="one row per run, even when a label has several")
    r.add_argument("--split", choices=("test", "validation"), default="test",
                   help="the test results, or the evaluations on the held-out validation split "
                        "(rkd eval RUN --split validation) (default: %(default)s)")
    r.set_defaults(func=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault(SOURCE_ENV, f"rkd {args.command}")  # the runs' mlflow.source.name, workers' too
    sigterm_as_interrupt()  # kill/timeout/Slurm/Kubernetes stop a run as Ctrl-C does
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        print(f"rkd: {how}; a stopped run is recorded KILLED and keeps its newest checkpoint "
              "(rkd train --resume RUN_DIR continues it)", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        code = user_error_code(exc)
        if code is None or args.debug:
            raise
        print(f"rkd: {exc}", file=sys.stderr)
        return code


def user_error_code(exc: Exception) -> int | None:
    """The exit status of an error the user can fix, shown as its message alone: 2 for a
    configuration the run cannot start with (keys, ranges, device, tracking store), 1 for the
    state of files (a missing or corrupt dataset, nothing to resume, a used run directory, an
    unusable checkpoint, an output folder that cannot be written, a full disk). None for
    anything else: a bug, shown with its traceback."""
    from rkd.data.errors import DatasetIntegrityError  # lazy: keeps `rkd --help` free of torch
    from rkd.engine import CheckpointError
    from rkd.experiment.run_dir import OutputFolderError, RunRecordError

    if isinstance(exc, (ConfigError, ConnectionError)):
        return 2
    if isinstance(exc, (FileNotFoundError, FileExistsError, CheckpointError, DatasetIntegrityError, RunRecordError,
                        OutputFolderError)):
        return 1
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # the disk filled up during the run
        return 1
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
