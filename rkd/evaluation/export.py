"""A finished run as one RobustBench-style leaderboard entry (``rkd export``).

:func:`robustbench_entry` reads a run directory's ``config.yaml`` (with the project's loader, as
a reopened run is loaded) and ``results.json``; it loads no weights. The entry carries the fields
of RobustBench's ``model_info/<dataset>/<threat_model>/<name>.json`` files and rkd's additions::

    name, architecture, model {arch + the size knobs set}, dataset, threat_model ("Linf"|"L2"),
    eps ("8/255", RobustBench's label), eps_value (float, pixel units in [0, 1]),
    clean_acc, autoattack_acc, worst_case_acc (percent, 2 decimals), worst_case_suite,
    number_samples, number_forward_passes (1: rkd models are deterministic),
    additional_data, additional_data_sources, attacks, gradient_masking_flags,
    gradient_masking_checks, unreliable, footnote, splits, method, rkd_version, config_hash,
    run_dir, evaluated (results.json's time), created (this export's time),
    link, authors, venue, reported (null: filled in by hand, as RobustBench asks)

RobustBench stores accuracies as strings (``"59.53"``); here they are JSON numbers in percent
rounded to two decimals (RobustBench's own readers parse them with ``float``).

``autoattack_acc`` is the worst case only when the threat's suite is ``autoattack`` (the
reference set: APGD-CE, APGD-T, FAB-T, Square), else null; ``worst_case_acc`` is always given,
``worst_case_suite`` names the suite. The worst case also counts the grid's white-box attacks of
that ball, so it is at most what AutoAttack alone gives; ``attacks`` lists every attack counted
(the grid's first, ``stage: grid``; then the cascade's, ``stage: cascade``) with its params.

``additional_data`` follows RobustBench's meaning (data beyond the benchmark's own training set)
by this rule: every model whose training the run's weights depend on is inspected -- the run's
own initialisation (``model.pretrained``: torchvision ImageNet weights; ``model.weights_path``:
weights of unknown origin) and the method's trained models (``method.trained_models()``:
teachers, sources, MAE stages; their own trained models recursively, and their ``model``
sections the same way). The transfer protocol's source (``eval.transfer``) is evaluation only
and not counted. ``true`` when any of them was trained on a dataset other than the run's
``data.dataset`` (another half or class subset of the same dataset is not additional data);
``null`` when none is known to differ but one could not be inspected (a teacher run directory
without its ``config.yaml``, a ``weights_path``); ``false`` otherwise.
``additional_data_sources`` lists what was inspected.

``unreliable`` is true when a gradient-masking check flagged the evaluation (the checks are in
``results.json`` ``checks``; null when the file has none).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from rkd.config import ConfigError, load_config
from rkd.config.identity import identity_key
from rkd.config.numbers import format_eps, parse_number
from rkd.config.schema import NORMS, ExperimentConfig
from rkd.evaluation.results import read_results

#: RobustBench's spelling of the norms
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
#: torchvision's ``pretrained`` weights are ImageNet-trained
PRETRAINED_DATASET = "imagenet"
#: nesting depth of trained models (a teacher's teacher ...) followed for additional_data
MAX_DEPTH = 8


class ExportError(ValueError):
    """A run directory that cannot be exported (not a run, not evaluated, no worst case, no such threat)."""


# ------------------------------------------------------------------------------------- threats
def parse_threat(text: str) -> tuple[str, float]:
    """``"linf:8/255"`` / ``"L2:0.5"`` -> ``(norm, eps)``."""
    norm, sep, eps = str(text).partition(":")
    norm = norm.strip().lower()
    value = parse_number(eps)
    if not sep or norm not in NORMS or not isinstance(value, float) or value <= 0:
        raise ExportError(f"threat {text!r}: expected NORM:EPS with NORM one of {', '.join(NORMS)} "
                          "and a positive EPS, e.g. linf:8/255 or l2:0.5")
    return norm, value


def _label(entry: dict) -> str:
    return f"{entry['norm']}:{entry.get('eps_label') or format_eps(entry['eps'], entry['norm'])}"


def select_worst_case(entries: list[dict], threat: str | tuple[str, float] | None = None) -> dict:
    """The ``worst_case`` entry of ``threat`` (``"linf:8/255"`` or ``(norm, eps)``); by default
    the largest Linf ball, else the first entry."""
    if threat is None:
        linf = [e for e in entries if e["norm"] == "linf"]
        return max(linf, key=lambda e: e["eps"]) if linf else entries[0]
    norm, eps = parse_threat(threat) if isinstance(threat, str) else (threat[0], float(threat[1]))
    for e in entries:
        if e["norm"] == norm and abs(e["eps"] - eps) <= 1e-9 * max(1.0, eps):
            return e
    raise ExportError(f"no worst case for {norm}:{format_eps(eps, norm)} in this run; it has "
                      f"{', '.join(_label(e) for e in entries)}")


# ------------------------------------------------------------------------------ additional data
def _load(path: str, overrides: list[str] = ()) -> ExperimentConfig | None:
    try:
        return load_config(path, overrides)
    except (ConfigError, OSError):
        return None


def _spec_config(spec: Any, recorded: dict | None) -> ExperimentConfig | None:
    """The config a trained model was trained from: its ``config`` (+ overrides), its ``run_dir``'s
    config.yaml, else the config.yaml of the run directory the run recorded for that role."""
    cfg = None
    if spec.config is not None:
        cfg = _load(spec.config, list(spec.overrides))
    elif (Path(spec.run_dir) / "config.yaml").is_file():
        cfg = _load(str(Path(spec.run_dir) / "config.yaml"))
    if cfg is None and recorded and recorded.get("run_dir") and (Path(recorded["run_dir"]) / "config.yaml").is_file():
        cfg = _load(str(Path(recorded["run_dir"]) / "config.yaml"))
    return cfg


def _init_sources(cfg: ExperimentConfig, role: str) -> list[dict]:
    out = []
    if cfg.model.pretrained:
        out.append({"role": role, "via": "model.pretrained", "dataset": PRETRAINED_DATASET})
    if cfg.model.weights_path:
        out.append({"role": role, "via": "model.weights_path", "dataset": None, "path": cfg.model.weights_path})
    return out


def training_data_sources(cfg: ExperimentConfig, recorded_roles: dict | None = None, *, _prefix: str = "",
                          _depth: int = 0) -> list[dict]:
    """Every model the run's training depends on, with the dataset it was trained on (None: unknown)."""
    out = _init_sources(cfg, "model") if _depth == 0 else []
    if _depth >= MAX_DEPTH:
        return out
    for key, spec in cfg.method.trained_models().items():
        role = f"{_prefix}{key}"
        sub = _spec_config(spec, (recorded_roles or {}).get(key) if _depth == 0 else None)
        if sub is None:
            out.append({"role": role, "via": "run_dir" if spec.config is None else "config", "dataset": None,
                        "source": spec.run_dir or spec.config})
            continue
        out.append({"role": role, "via": "run_dir" if spec.config is None else "config", "dataset": sub.data.dataset,
                    "half": sub.data.half, "classes": sub.data.classes, "source": spec.run_dir or spec.config})
        out += _init_sources(sub, role)
        out += training_data_sources(sub, _prefix=f"{role}.", _depth=_depth + 1)
    return out


def additional_data(cfg: ExperimentConfig, sources: list[dict]) -> bool | None:
    """The rule of the module docstring over :func:`training_data_sources`."""
    datasets = [s["dataset"] for s in sources]
    if any(d is not None and d != cfg.data.dataset for d in datasets):
        return True
    return None if any(d is None for d in datasets) else False


# ------------------------------------------------------------------------------------- entry
def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * float(x), 2)


def architecture(cfg: ExperimentConfig) -> tuple[str, dict]:
    """``"resnet18 (width=16, layers=[1, 1, 1, 1])"`` and the same as a mapping."""
    knobs = {k: v for k, v in cfg.model.kwargs().items() if k not in ("weights_path", "pretrained")}
    if cfg.model.input_size is not None:
        knobs["input_size"] = cfg.model.input_size
    text = cfg.model.arch + (f" ({', '.join(f'{k}={v}' for k, v in knobs.items())})" if knobs else "")
    return text, {"arch": cfg.model.arch, **knobs}


def _attacks(results: dict, wc: dict) -> list[dict]:
    cascade = wc.get("cascade") or []
    in_cascade = {c["name"] for c in cascade}
    grid = {a["name"]: a for a in results.get("attacks") or [] if a.get("protocol", "white-box") == "white-box"}
    out = []
    for label in wc.get("attacks") or []:
        if label in in_cascade:
            continue
        a = grid.get(label)
        out.append({"name": label, "stage": "grid", "kind": a and a.get("kind"), "params": a and a.get("params"),
                    "accuracy": a and a.get("accuracy")})
    out += [{"name": c["name"], "stage": "cascade", "kind": c.get("kind"), "params": c.get("params"),
             "ran_on": c.get("ran_on"), "robust_after": c.get("robust_after")} for c in cascade]
    return out


def _masking(results: dict) -> tuple[list[dict] | None, list[dict] | None]:
    checks, flags = results.get("checks"), results.get("flags")
    if checks is None and flags is None:
        return None, None
    checks = checks or []
    names = list(flags) if flags is not None else [c["name"] for c in checks if c.get("status") == "flagged"]
    names += [c["name"] for c in checks if c.get("status") == "flagged" and c["name"] not in names]
    by_name = {c["name"]: c for c in checks}
    flagged = [{"name": n, "evidence": by_name.get(n, {}).get("evidence"),
                "description": by_name.get(n, {}).get("description"),
                "reference": by_name.get(n, {}).get("reference")} for n in names]
    return flagged, [{"name": c["name"], "status": c.get("status")} for c in checks]


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("rkd")
    except PackageNotFoundError:
        import rkd

        return rkd.__version__


def _read(run_dir: Path) -> tuple[ExperimentConfig, dict]:
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.yaml").is_file():
        raise ExportError(f"{run_dir}: no config.yaml (not an rkd run directory)")
    if not (run_dir / "results.json").is_file():
        raise ExportError(f"{run_dir}: no results.json (the run was not evaluated; run `rkd eval {run_dir}`)")
    try:
        results = read_results(run_dir / "results.json")
    except json.JSONDecodeError as exc:
        raise ExportError(f"{run_dir / 'results.json'}: not valid JSON ({exc})") from None
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if not results.get("worst_case"):
        raise ExportError(f"{run_dir / 'results.json'}: no worst_case results (written before the worst-case "
                          f"evaluation, or with eval.worst_case.enabled false); run `rkd eval {run_dir}` again")
    return load_config(str(run_dir / "config.yaml")), results


def robustbench_entry(run_dir: str | Path, *, threat: str | tuple[str, float] | None = None,
                      name: str | None = None) -> dict:
    """The RobustBench-style entry of a finished, evaluated run (see the module docstring).
    ``threat``: ``"linf:8/255"`` or ``(norm, eps)``; default the largest Linf ball, else the first.
    Raises :class:`ExportError` for a run that cannot be exported."""
    run_dir = Path(run_dir)
    cfg, results = _read(run_dir)
    wc = select_worst_case(results["worst_case"], threat)
    arch_text, model = architecture(cfg)
    recorded = {k: v for k, v in (results.get("run") or {}).items() if isinstance(v, dict)}
    sources = training_data_sources(cfg, recorded)
    flagged, checks = _masking(results)
    suite = wc.get("suite")
    eps_label = wc.get("eps_label") or format_eps(wc["eps"], wc["norm"])
    footnote = (f"Per-example worst case over {len(wc.get('attacks') or [])} white-box attacks in the "
                f"{THREAT_MODELS[wc['norm']]} {eps_label} ball (suite {suite}) on {wc['num_samples']} test images.")
    if flagged:
        footnote += f" Gradient-masking checks flagged: {', '.join(f['name'] for f in flagged)}."
    return {
        "name": name or cfg.name,
        "link": None, "authors": None, "venue": None, "reported": None,
        "architecture": arch_text,
        "model": model,
        "dataset": cfg.data.dataset,
        "threat_model": THREAT_MODELS[wc["norm"]],
        "eps": eps_label,
        "eps_value": float(wc["eps"]),
        "clean_acc": _pct(results["clean_accuracy"]),
        "autoattack_acc": _pct(wc["accuracy"]) if suite == "autoattack" else None,
        "worst_case_acc": _pct(wc["accuracy"]),
        "worst_case_suite": suite,
        "number_samples": wc["num_samples"],
        "number_forward_passes": 1,
        "additional_data": additional_data(cfg, sources),
        "additional_data_sources": sources,
        "attacks": _attacks(results, wc),
        "gradient_masking_flags": flagged,
        "gradient_masking_checks": checks,
        "unreliable": None if flagged is None else bool(flagged),
        "footnote": footnote,
        "splits": results.get("splits"),
        "method": cfg.method.name,
        "rkd_version": _version(),
        "config_hash": identity_key(cfg),
        "run_dir": str(run_dir),
        "evaluated": results.get("created"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
