"""rkd's headline robust accuracy against an independent reference attack, per model.

For every finished run (the run directories of a quickstart's ``summary.json``, or given one
by one) this reloads the model and its evaluated test images and runs an attack that shares no
code with rkd's evaluation: torchattacks' APGD-CE and APGD-DLR (untargeted), 100 iterations
each, one restart, per-example worst case of the two (a sample counts only if it is correct
clean and under both). It prints, per model: clean accuracy, rkd's PGD-7 Linf 8/255 (the
paper's column), rkd's worst case at the same ball (the headline, from results.json), the
reference, and the gap (rkd minus reference; positive = rkd's headline is too high).

    python benchmarks/reference_check.py --summary runs/quickstart-*/summary.json
    python benchmarks/reference_check.py --run-dir RUN_DIR [--run-dir RUN_DIR ...] [--samples 360]

Needs torchattacks (a dependency of rkd). Results of the quickstart are in the README with the
command that produced them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rkd.config.numbers import format_eps, parse_number
from rkd.data.loader import make_loader
from rkd.evaluation import read_results
from rkd.evaluation.robust_accuracy import eval_subset
from rkd.experiment.reevaluate import load_trained_model


def reference_robust(model, loader, eps: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean-correct, robust to torchattacks APGD-CE and APGD-DLR) masks, in loader order."""
    import torchattacks

    ce = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, loss="ce", n_restarts=1, seed=0)
    dlr = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, loss="dlr", n_restarts=1, seed=0)
    clean, robust = [], []
    for x, y in loader:
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        rob = ok.clone()
        for atk in (ce, dlr):
            x_adv = atk(x, y)
            with torch.no_grad():
                rob &= model(x_adv).argmax(1) == y
        clean.append(ok)
        robust.append(rob)
    return torch.cat(clean), torch.cat(robust)


def _entry(results: dict, name: str) -> float | None:
    return next((a["accuracy"] for a in results["attacks"] if a["name"] == name and a["protocol"] == "white-box"),
                None)


def check_run(run_dir: Path, label: str, eps: float, steps: int, samples: int | None) -> dict:
    results = read_results(run_dir / "results.json")
    cfg, model, test = load_trained_model(run_dir)
    n = samples or results["num_samples"]
    data = eval_subset(test, n)
    t0 = time.perf_counter()
    clean, robust = reference_robust(model, make_loader(data, cfg.data.eval_batch_size), eps, steps)
    worst = next((w for w in results.get("worst_case") or [] if w["norm"] == "linf" and abs(w["eps"] - eps) < 1e-9),
                 None)
    return {"model": label, "num_samples": len(data), "clean": clean.float().mean().item(),
            "pgd7": _entry(results, f"PGD-7 Linf {format_eps(eps, 'linf')}"),
            "worst_case": worst["accuracy"] if worst else None, "suite": worst["suite"] if worst else None,
            "flags": results.get("flags"), "reference": robust.float().mean().item(),
            "reference_s": time.perf_counter() - t0}


def _pct(x):
    return "" if x is None else f"{100 * x:.2f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--summary", help="a quickstart's summary.json (all its runs)")
    p.add_argument("--run-dir", action="append", default=[], help="a finished run directory (repeatable)")
    p.add_argument("--eps", default="8/255", help="Linf radius (default 8/255)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--samples", type=int, default=None, help="first N test images (default: as evaluated)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    eps = parse_number(args.eps)
    runs = [(Path(r), Path(r).name) for r in args.run_dir]
    if args.summary:
        runs += [(Path(r["run_dir"]), r["label"]) for r in json.loads(Path(args.summary).read_text())["runs"]]
    if not runs:
        p.error("give --summary or --run-dir")
    rows = [check_run(d, label, eps, args.steps, args.samples) for d, label in runs]
    print(f"| model | clean | PGD-7 Linf {args.eps} | rkd worst case (suite) | reference APGD-CE+DLR-{args.steps} "
          "| gap | masking flags |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gap = None if r["worst_case"] is None else r["worst_case"] - r["reference"]
        flags = "" if r["flags"] is None else (", ".join(r["flags"]) or "none")
        print(f"| {r['model']} | {_pct(r['clean'])} | {_pct(r['pgd7'])} | {_pct(r['worst_case'])} ({r['suite']}) | "
              f"{_pct(r['reference'])} | {'' if gap is None else f'{100 * gap:+.2f}'} | {flags} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
