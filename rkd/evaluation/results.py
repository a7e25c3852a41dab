"""``results.json``: the one machine-readable result of a run, and its markdown tables.

Schema ``rkd.results/1``::

    {
      "schema": "rkd.results/1",
      "run":   {"name", "method", "arch", "dataset", "run_dir", "mlflow_run_id"},
      "num_samples": int,                 # test images evaluated (first N of the test set)
      "clean_accuracy": float,            # in [0, 1]
      "attacks": [                        # one per attack, in config order
        {"name": "PGD-7 Linf 8/255", "kind": "pgd", "norm": "linf"|"l2", "eps": float,
         "eps_label": "8/255", "steps": int|null, "step_size": float|null (the step actually
         used: FGSM eps, MI-FGSM eps/steps, PGD 2.5*eps/steps unless set), "restarts": int|null,
         "protocol": "white-box"|"transfer", "source_model": str|null (transfer: the model the
         attack ran on), "accuracy": float (correct on the clean AND the attacked image),
         "wall_time_s": float, "params": {every parameter the attack ran with},
         "median_l2_distortion": float|null (CW only: median ||x_adv - x||_2 of the samples it
         broke; CW is unbounded, its norm/eps are null), "note": str (where a budget needs one)}
      ],
      "worst_case": [                     # per threat model (norm, eps): the headline figures
        {"norm", "eps", "eps_label", "accuracy" (correct clean AND under every attack in the
         ball: the grid's and the suite's cascade), "num_samples", "suite": "autoattack"|"fast"|
         "custom", "attacks": [labels counted], "cascade": [{"name", "kind", "params", "ran_on",
         "robust_after", "wall_time_s"}], "wall_time_s"}     (rkd.evaluation.worst_case)
      ],
      "headline": null | {"norm", "eps", "eps_label", "accuracy", "suite"},  # the worst case at
                                          # the largest Linf ball (else the first threat)
      "checks": null | [                  # gradient-masking checks (rkd.evaluation.masking_checks)
        {"name", "status": "ok"|"flagged"|"skipped", "evidence": {...}, "description", "reference"}
      ],
      "flags": null | [names of the flagged checks],
      "splits": {"train", "validation", "test", "validation_source", "split_seed"},
      "step_sweep": null | {"norm", "eps", "eps_label",
                            "points": [{"steps", "step_size", "accuracy", "wall_time_s"}]},
      "jsma": null | [                    # optional (eval.jsma): targeted JSMA, one per saliency
        {"saliency": "probabilities"|"logits", "success_rate": float|null (over the attacked
         (sample, target) pairs; null when there were none), "targets": "random"|"all",
         "num_samples": int (correctly classified samples among the first eval.jsma.max_samples,
         the ones attacked), "num_pairs": int, "theta": float, "gamma": float,
         "mean_changed_fraction": float|null (features changed, mean over successful pairs),
         "wall_time_s": float}
      ],
      "input_gradient": null | {          # optional (eval.input_gradient): d CE / dx at T = 1
        "l2_mean", "l1_mean", "linf_mean": float (per-sample norms, averaged),
        "l2_median": float (median of the per-sample L2 norms; absent in older files),
        "zero_fraction": float (samples whose gradient is exactly zero: saturated softmax),
        "num_samples": int},
      "train_wall_time_s": float|null,    # training time of this run (resumes included)
      "eval_wall_time_s": float,
      "created": ISO-8601 UTC time
    }

``jsma``, ``input_gradient``, ``worst_case``, ``headline``, ``checks``, ``flags`` and ``splits``
are additions to the same schema: files written before them lack the keys, and readers treat a
missing key like ``null`` (or an empty list).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

from rkd.evaluation.metric_names import worst_case_label
from rkd.evaluation.table_formats import markdown

SCHEMA = "rkd.results/1"


def make_results(body: dict, *, run: dict, train_wall_time_s: float | None) -> dict:
    return {"schema": SCHEMA, "run": run, **body, "train_wall_time_s": train_wall_time_s,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def write_results(results: dict, directory: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    js = directory / "results.json"
    js.write_text(json.dumps(results, indent=2))
    md = directory / "results.md"
    md.write_text(results_markdown(results))
    return js, md


def write_result_files(results: dict, directory: str | Path) -> list[Path]:
    """:func:`write_results` plus ``robustness.png`` (the curves of
    :func:`rkd.evaluation.figures.robustness_figure`) when there is one to draw."""
    from rkd.evaluation.figures import robustness_figure, save_png

    files = list(write_results(results, directory))
    fig = robustness_figure(results)
    if fig is not None:
        files.append(save_png(fig, Path(directory) / "robustness.png"))
    return files


def archive_results(directory: str | Path) -> Path | None:
    """Copy ``directory``'s ``results.json`` (and ``results.md``) to
    ``history/results-<UTC time>.json`` before new results replace them; the copy's path, or
    None when there were none."""
    directory = Path(directory)
    current = directory / "results.json"
    if not current.is_file():
        return None
    history = directory / "history"
    history.mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    kept = history / f"results-{stamp}.json"
    shutil.copy2(current, kept)
    if (directory / "results.md").is_file():
        shutil.copy2(directory / "results.md", kept.with_suffix(".md"))
    return kept


def read_results(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an rkd results file (schema {data.get('schema')!r})")
    return data


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _time(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def comparison_table(rows: list[tuple[str, dict]], columns: list[tuple[str, str]] | None = None,
                     protocols: tuple[str, ...] | None = None) -> str:
    """:func:`comparison_grid` as Markdown."""
    return markdown(*comparison_grid(rows, columns, protocols))


def comparison_grid(rows: list[tuple[str, dict]], columns: list[tuple[str, str]] | None = None,
                    protocols: tuple[str, ...] | None = None) -> tuple[list[str], list[list[str]]]:
    """``(header, rows of cells)``, one row per (label, results): clean, the worst case per
    threat (the headline figures), every attack, the gradient-masking flags, train time.

    Attack columns are the union of attack names in first-seen order (only those of ``protocols``
    when given, then ``columns``, ``(name, protocol)`` pairs, appended), labelled with their
    protocol when more than one protocol appears. A flagged row names its flags; rows evaluated
    without checks leave the cell empty.
    """
    cols: list[tuple[str, str]] = []
    for _, r in rows:
        for a in r["attacks"]:
            key = (a["name"], a["protocol"])
            if key not in cols and (protocols is None or a["protocol"] in protocols):
                cols.append(key)
    cols += [c for c in columns or [] if c not in cols]
    worst = []
    for _, r in rows:
        worst += [w for w in (worst_case_label(w["norm"], w["eps_label"]) for w in r.get("worst_case") or [])
                  if w not in worst]
    with_flags = any(r.get("checks") is not None for _, r in rows)
    protocols = {p for _, p in cols}
    head = (["method", "clean"] + worst + [n if len(protocols) == 1 else f"{n} ({p})" for n, p in cols]
            + (["masking flags"] if with_flags else []) + ["train time"])
    body = []
    for label, r in rows:
        acc = {(a["name"], a["protocol"]): a["accuracy"] for a in r["attacks"]}
        wc = {worst_case_label(w["norm"], w["eps_label"]): w["accuracy"] for w in r.get("worst_case") or []}
        cells = ([label, _pct(r["clean_accuracy"])] + [_pct(wc.get(w)) for w in worst]
                 + [_pct(acc.get(c)) for c in cols] + ([flags_cell(r)] if with_flags else [])
                 + [_time(r.get("train_wall_time_s"))])
        body.append(cells)
    return head, body


def flags_cell(results: dict) -> str:
    """``FLAGGED: a, b`` / ``none`` / empty (not checked)."""
    if results.get("checks") is None:
        return ""
    names = results.get("flags") or []
    return "FLAGGED: " + ", ".join(names) if names else "none"


def worst_case_markdown(results: dict) -> list[str]:
    out = []
    for w in results.get("worst_case") or []:
        steps = "; ".join(f"{c['name']} on {c['ran_on']} -> {_pct(c['robust_after'])}" for c in w["cascade"])
        out.append(f"- {worst_case_label(w['norm'], w['eps_label'])}: **{_pct(w['accuracy'])}** over "
                   f"{', '.join(w['attacks'])} (suite {w['suite']}; cascade: {steps or 'none'}; "
                   f"{_time(w['wall_time_s'])})")
    return ["", "Per-example worst case (%) per threat model", "", *out, ""] if out else []


def checks_markdown(results: dict) -> list[str]:
    checks = results.get("checks")
    if not checks:
        return []
    out = ["", "Gradient-masking checks (rkd.evaluation.masking_checks; warnings, no number was changed)", "",
           "| check | status | evidence |", "|---|---|---|"]
    for c in checks:
        ev = ", ".join(f"{k}={_short(v)}" for k, v in c["evidence"].items())
        out.append(f"| {c['name']} | {c['status'].upper() if c['status'] == 'flagged' else c['status']} | {ev} |")
    return out + [""]


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 80 else text[:77] + "..."


def _sci(x: float | None) -> str:
    return "" if x is None else f"{x:.2e}"


def distillation_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table for defensive-distillation comparisons, one row per (label, results).

    Columns: clean, white-box ``FGSM 8/255`` and the first white-box CW attack (accuracy, %),
    JSMA success rate (%) with probability and logit saliency, and the mean and median L2 norm
    and zero fraction (%) of the input gradient. A cell is empty where the run lacks that result.
    """
    head = ["method", "clean", "FGSM 8/255", "CW", "JSMA success (probabilities)", "JSMA success (logits)",
            "input grad L2 (mean)", "input grad L2 (median)", "zero input grad"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows:
        white = [a for a in r["attacks"] if a["protocol"] == "white-box"]
        fgsm = next((a["accuracy"] for a in white if a["name"] == "FGSM 8/255"), None)
        cw = next((a["accuracy"] for a in white if a["kind"] == "cw"), None)
        jsma = {e["saliency"]: e["success_rate"] for e in r.get("jsma") or []}
        grad = r.get("input_gradient") or {}
        cells = [label, _pct(r["clean_accuracy"]), _pct(fgsm), _pct(cw), _pct(jsma.get("probabilities")),
                 _pct(jsma.get("logits")), _sci(grad.get("l2_mean")), _sci(grad.get("l2_median")),
                 _pct(grad.get("zero_fraction"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(results: dict) -> str:
    run = results.get("run", {})
    title = run.get("name") or "results"
    out = [f"# {title}", "", f"Accuracy (%) on {results['num_samples']} test images.", "",
           comparison_table([(run.get("method", title), results)])]
    out += worst_case_markdown(results) + checks_markdown(results)
    sweep = results.get("step_sweep")
    if sweep:
        out += ["", f"PGD {sweep['norm']} eps {sweep['eps_label']}: accuracy vs steps", "",
                "| steps | " + " | ".join(str(p["steps"]) for p in sweep["points"]) + " |",
                "|---|" + "---|" * len(sweep["points"]),
                "| accuracy | " + " | ".join(_pct(p["accuracy"]) for p in sweep["points"]) + " |", ""]
    jsma = results.get("jsma")
    if jsma:
        out += ["", "Targeted JSMA success rate (%) on the correctly classified test images", "",
                "| saliency | success | samples | pairs | targets | theta | gamma | changed features (%) | time |",
                "|" + "---|" * 9]
        out += [f"| {e['saliency']} | {_pct(e['success_rate'])} | {e['num_samples']} | {e['num_pairs']} | "
                f"{e['targets']} | {e['theta']:g} | {e['gamma']:g} | {_pct(e['mean_changed_fraction'])} | "
                f"{_time(e['wall_time_s'])} |" for e in jsma]
        out.append("")
    grad = results.get("input_gradient")
    if grad:
        out += ["", f"Input gradient of the CE loss (T = 1) over {grad['num_samples']} test images: mean L2 "
                f"{_sci(grad['l2_mean'])} (median {_sci(grad.get('l2_median'))}), L1 {_sci(grad['l1_mean'])}, "
                f"Linf {_sci(grad['linf_mean'])}; "
                f"exactly zero for {_pct(grad['zero_fraction'])}% of the images.", ""]
    return "\n".join(out)
