"""``rkd`` command line: train, eval, quickstart.

Every command validates its whole configuration before doing any work; a configuration error
prints the file and key and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from rkd.config import ConfigError, list_presets, load_config

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
    if args.resume:
        cfg = load_config(f"{args.resume}/config.yaml", args.overrides)
        out = run_experiment(cfg, run_dir=args.resume, resume=True)
    else:
        if not args.config:
            raise SystemExit("rkd train: give CONFIG (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.overrides)
        out = run_experiment(cfg, run_dir=args.run_dir)
    print(f"run directory: {out.run_dir}")
    if out.mlflow_run_id:
        print(f"mlflow run id: {out.mlflow_run_id}")
    if out.results:
        print((out.run_dir / "results.md").read_text())
    return 0


def _cmd_eval(args) -> int:
    from rkd.experiment import evaluate_run

    results = evaluate_run(args.run_dir, eval_overrides=args.overrides, eval_config=args.config,
                           track=not args.no_track)
    print((__import__("pathlib").Path(args.run_dir) / "results.md").read_text())
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _cmd_quickstart(args) -> int:
    from rkd.quickstart import run_quickstart

    try:
        run_quickstart(args.overrides, output_dir=args.output_dir, only=args.only)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        print(f"rkd quickstart: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    presets = ", ".join(list_presets())
    p = argparse.ArgumentParser(prog="rkd", description="Distil adversarial robustness: train, evaluate, track.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (and evaluate) one configured run",
                       description="Train one run from CONFIG, evaluate it on the configured attack grid, "
                                   "log it to MLflow.", epilog=EPILOG_CONFIG.format(presets=presets),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", help="YAML config path or preset:NAME")
    t.add_argument("overrides", nargs="*", help="key=value overrides")
    t.add_argument("--run-dir", help="run directory (default <output_dir>/<name>-<timestamp>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest checkpoint")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a finished run directory",
                       description="Evaluate RUN_DIR's final model on its configured grid (or another), write "
                                   "results.json/results.md there and add them to its MLflow run.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  rkd eval runs/digits-standard-20261121-101500\n"
                              "  rkd eval RUN_DIR eval.max_samples=100 'eval.step_sweep={steps: [0, 7, 25]}'")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the run's config (eval.*)")
    e.add_argument("--config", help="take the eval section from this config file instead")
    e.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    e.add_argument("--json", action="store_true", help="also print results.json")
    e.set_defaults(func=_cmd_eval)

    q = sub.add_parser("quickstart", help="the main job: every method on offline digits, one table",
                       description="Train and evaluate each quickstart method on the offline digits data "
                                   "(CPU, minutes), print the comparison table, log to MLflow.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="overrides apply to every method (train.epochs=2 eval.max_samples=100)\n"
                              "or to one, prefixed with its name (adversarial:method.attack.steps=3)")
    q.add_argument("overrides", nargs="*", help="key=value overrides applied to every method")
    q.add_argument("--output-dir", default="runs")
    q.add_argument("--only", nargs="+", metavar="METHOD", help="run only these (e.g. standard adversarial)")
    q.set_defaults(func=_cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"rkd: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, RuntimeError) as exc:
        from rkd.engine import CheckpointError  # lazy: keeps `rkd --help` free of torch

        # missing dataset (DatasetNotFoundError is a FileNotFoundError), nothing to resume,
        # a used run directory, an unusable checkpoint: user errors, not tracebacks
        if isinstance(exc, RuntimeError) and not isinstance(exc, CheckpointError):
            raise
        print(f"rkd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
