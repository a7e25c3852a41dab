"""Reproduce a paper table: every config of a table's folder (or listed files) as one graph on
the Ray cluster, then the comparison table of their MLflow experiment.

    ray job submit --working-dir . -- python jobs/reproduce.py jobs/macd/cifar10_resnet50 --experiment macd-cifar10
    python jobs/reproduce.py jobs/digits/macd/table6 --experiment digits-macd-table6
    python jobs/reproduce.py jobs/digits/table1 --experiment rkd-digits-table1 --seeds 0 1 2
    python jobs/reproduce.py jobs/digits/macd_fidelity --experiment rkd-digits-macd-fidelity --seeds 0 1 2 --validation
    python jobs/reproduce.py jobs/digits/robust_kd_shift --experiment rkd-digits-robust-kd-shift --seeds 0 1 2 3 4 \\
        --paired digits-rks-robust-kd digits-rks-shafahi

The table runs as one graph (rkd.orchestration.table): every stage the rows load (teachers, MAE
stages, sources) once, each as soon as its own inputs exist and with the resources of its own
config (a GPU worker when it asks for one), then every row as soon as its stages exist, as many
at once as the cluster's resources allow. A failed row is recorded FAILED and named at the end;
the others go on. It joins the cluster of ``$RAY_ADDRESS`` (``ray job submit`` sets it) or
starts a local one. ``--sequential`` runs the rows one after another in this process instead
(each through ``rkd train``, without Ray), as this script did before.

Each run has a fixed directory, ``<output_dir>/reproduce/<name>[-seed<N>]``: running the same
command again reuses every run that finished (its results.json is there) and resumes one that
was interrupted (one stopped before its first checkpoint is set aside and trained again), so a
stopped table continues where it stopped. With ``--seeds`` every config
runs once per seed (``seed=N``) and the table gives each configuration's mean ± sample std over
them. With ``--validation`` every run is also evaluated on the validation split it held out
(``rkd eval RUN --split validation``; the configs must set ``data.val_size``) and that table is
printed too: the one to choose options on. With ``--paired A B`` (config names; repeatable) the
table is also written to ``<output_dir>/reproduce/<experiment>.md`` and, under it, one line per
metric (``--paired-metrics``) with the per-seed differences A - B, their mean and sample std and
a paired t-test over the seeds both rows finished (rkd.evaluation.paired), read from each run's
results.json; the lines are printed under the table too.
"""

import argparse
import time
from pathlib import Path

import _common


def run_dir_of(cfg, seed: int | None) -> Path:
    return Path(cfg.output_dir) / "reproduce" / (cfg.name if seed is None else f"{cfg.name}-seed{seed}")


def train(cli, config: str, run_dir: Path, overrides: list[str]) -> int:
    """``--sequential``: train one row unless it finished before; resume it when it was interrupted."""
    if (run_dir / "results.json").is_file():
        print(f"reproduce: {run_dir} finished before; reused")
        return 0
    if (run_dir / "config.yaml").is_file():
        if any((run_dir / "checkpoints").glob("epoch_*.pt")):
            print(f"reproduce: {run_dir} was interrupted; resuming it")
            return cli(["train", "--resume", str(run_dir)])
        kept = run_dir.with_name(f"{run_dir.name}.stopped-{time.strftime('%Y%m%dT%H%M%S')}")
        run_dir.rename(kept)  # stopped before its first checkpoint: start again, keep what it left
        print(f"reproduce: {run_dir} stopped before its first checkpoint; kept as {kept.name}, training again")
    return cli(["train", config, *overrides, "--run-dir", str(run_dir)])


def check_paired(pairs: list[list[str]], names: set[str], seeds: list[int] | None) -> None:
    """``--paired``: every name a config of the table, and at least two seeds to pair."""
    if not pairs:
        return
    if not seeds or len(set(seeds)) < 2:
        raise SystemExit("reproduce --paired: needs --seeds with at least two seeds (a paired test pairs them)")
    unknown = sorted({n for pair in pairs for n in pair} - names)
    if unknown:
        raise SystemExit(f"reproduce --paired: {', '.join(unknown)} not a config name of this table; "
                         f"names: {', '.join(sorted(names))}")


def finished_metrics(seed_dirs: dict) -> dict[int, dict[str, float]]:
    """``{seed: {column: accuracy in %}}`` of the runs in ``seed_dirs`` that finished."""
    import json

    from rkd.evaluation.paired import row_metrics

    found = {seed: d / "results.json" for seed, d in seed_dirs.items()}
    return {seed: row_metrics(json.loads(p.read_text())) for seed, p in found.items() if p.is_file()}


def paired_lines(pairs: list[list[str]], runs: dict, metrics: list[str]) -> list[str]:
    """One line per pair and metric (rkd.evaluation.paired), over the seeds both rows finished;
    ``runs``: config name -> {seed: run directory}."""
    from rkd.evaluation.paired import paired_comparison, paired_line

    lines = []
    for a, b in pairs:
        va, vb = finished_metrics(runs[a]), finished_metrics(runs[b])
        seeds = sorted(set(va) & set(vb))
        left_out = sorted((set(runs[a]) | set(runs[b])) - set(seeds))
        note = f" (seeds {', '.join(map(str, left_out))} left out: not finished)" if left_out else ""
        for metric in metrics:
            try:
                c = paired_comparison({s: va[s][metric] for s in seeds}, {s: vb[s][metric] for s in seeds},
                                      a_name=a, b_name=b, metric=metric)
                lines.append(paired_line(c) + note)
            except KeyError:
                lines.append(f"paired {a} - {b}, {metric}: not a column of every run; "
                             f"columns: {', '.join(va[seeds[0]])}")
            except ValueError as exc:
                lines.append(f"paired {a} - {b}, {metric}: {exc}{note}")
    return lines


def report_paired(cli, args, rows: dict, runs: dict, over: list[str]) -> int:
    """The table into ``<output_dir>/reproduce/<experiment>.md`` with the paired lines under it;
    both printed."""
    out = run_dir_of(next(iter(rows.values()))[1], None).parent / f"{args.experiment}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    rc = cli(["report", "--experiment", args.experiment, *over, "-o", str(out)])
    if rc:
        return rc
    lines = paired_lines(args.paired, runs, args.paired_metrics)
    text = out.read_text().rstrip("\n") + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    out.write_text(text)
    print(text, end="")
    return 0


def run_sequential(cli, rows: dict) -> list[str]:
    """Every row in this process, one after another; the names of the rows that failed."""
    failed = []
    for name, (path, _, run_dir, overrides) in rows.items():
        if train(cli, str(path), run_dir, overrides):
            failed.append(name)
    return failed


def run_graph(rows: dict) -> list[str]:
    """Every row and stage as one graph on the Ray cluster; the names of the rows that failed."""
    from rkd.orchestration import connect
    from rkd.orchestration.table import run_table

    connect()
    t0 = time.monotonic()

    def on_end(o):
        what = f"FAILED: {o.error}" if o.error else f"{o.how} in {o.seconds:.0f} s"
        print(f"reproduce: [{time.monotonic() - t0:6.0f} s] {o.name}: {what}", flush=True)

    outcomes = run_table({name: (cfg, run_dir) for name, (_, cfg, run_dir, _) in rows.items()}, on_end=on_end)
    return [name for name, o in outcomes.items() if o.error]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="config files or folders of them")
    ap.add_argument("--experiment", required=True, help="MLflow experiment to tabulate afterwards")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, metavar="N",
                    help="run every config once per seed; the table gives mean ± std over them")
    ap.add_argument("--validation", nargs="*", default=None, metavar="KEY=VALUE",
                    help="also evaluate every run on its validation split (eval.* overrides for that "
                         "evaluation may follow) and print that table")
    ap.add_argument("--paired", nargs=2, action="append", default=[], metavar=("A", "B"),
                    help="config names of two rows: per-seed differences A - B, their mean, std and a paired t-test "
                         "under the table (repeatable; needs --seeds)")
    ap.add_argument("--paired-metrics", nargs="+", default=None, metavar="COLUMN",
                    help="columns --paired compares (default: 'worst case Linf 8/255' 'PGD-7 Linf 8/255'; also "
                         "'clean', any white-box attack label, 'PGD-<k> <ball> (step sweep)')")
    ap.add_argument("--smoke", action="store_true", help="each run's whole chain, a few steps each; no table")
    ap.add_argument("--sequential", action="store_true",
                    help="the rows one after another in this process (no Ray), instead of one graph on the cluster")
    args = ap.parse_args()
    from rkd.cli import main as cli
    from rkd.config import load_config

    files = []
    for p in map(Path, args.paths):
        files += sorted(q for q in p.glob("*.yaml") if q.name != "base.yaml") if p.is_dir() else [p]
    rows = {}  # name -> (file, config, run dir, overrides); every config validated before any runs
    runs: dict[str, dict] = {}  # config name -> {seed: run dir}, for --paired
    for seed in args.seeds or [None]:
        overrides = [*args.set, *([] if seed is None else [f"seed={seed}"])]
        for f in files:
            cfg = load_config(str(f), overrides)
            rows[run_dir_of(cfg, seed).name] = (f, cfg, run_dir_of(cfg, seed), overrides)
            runs.setdefault(cfg.name, {})[seed] = run_dir_of(cfg, seed)
    check_paired(args.paired, set(runs), args.seeds)
    if args.paired_metrics is None:
        from rkd.evaluation.paired import DEFAULT_METRICS

        args.paired_metrics = list(DEFAULT_METRICS)
    if args.validation is not None:
        missing = sorted({str(f) for f, c, _, _ in rows.values() if not c.data.val_size})
        if missing:
            raise SystemExit(f"reproduce --validation: no validation split (data.val_size) in {', '.join(missing)}")
    if args.smoke:
        for f in files:
            rc = cli(["train", str(f), *args.set, "--smoke"])
            if rc:
                return rc
        return 0
    failed = run_sequential(cli, rows) if args.sequential else run_graph(rows)
    if args.validation is not None:
        for name, (_, _, run_dir, _) in rows.items():
            if name not in failed and not (run_dir / "validation" / "results.json").is_file():
                if cli(["eval", str(run_dir), *args.validation, "--split", "validation"]):
                    failed.append(f"{name} (validation evaluation)")
    over = ["--over-seeds"] if args.seeds else []
    if args.paired:
        rc = report_paired(cli, args, rows, runs, over)
    else:
        rc = cli(["report", "--experiment", args.experiment, *over])
    if not rc and args.validation is not None:
        rc = cli(["report", "--experiment", args.experiment, *over, "--split", "validation"])
    if failed:
        print(f"reproduce: {len(failed)} of {len(rows)} rows failed: {', '.join(failed)} (their runs are FAILED in "
              "MLflow and run.json; run the same command again to retry them, finished rows are reused)")
    return rc or (1 if failed else 0)


if __name__ == "__main__":
    _common.run(main)
