"""Hyperparameter search spaces (``tune_spaces/*.yaml``): a small, validated grammar.

A space file names a base experiment config, the metric to optimise and how to search::

    base: preset:digits_robust_kd        # or a path, relative to this file
    overrides: [train.epochs=6]          # applied to the base first
    metric: PGD-7 Linf 8/255             # "clean", an eval.attacks label, or "<label> (transfer)"
    mode: max
    num_samples: 8                       # samples of the random part (x the grid, Ray's semantics)
    scheduler: {name: asha, grace_period: 2, reduction_factor: 2}   # or {name: fifo}
    searcher: random                     # random | grid | optuna (pip install 'rkd[optuna]')
    max_concurrent_trials: null          # null: as many as the cluster's resources allow
    val_samples: 0.1                     # the validation split of every trial (see below)
    params:
      method.beta:   {loguniform: [0.5, 500]}
      method.n_proj: {choice: [1, 5, 10]}
      method.stages: {grid: [[1], [2], [3], [4], [1, 2, 3, 4]]}

Model selection never sees the test set: every trial holds ``val_samples`` images out of its
training set (a count, or a fraction if < 1; stratified, seeded by ``data.split_seed``) as its
``data.val_size`` -- unless the base config sets its own ``data.val_size``, which is kept -- and
the ``objective`` that schedulers and searchers read, each epoch and at the end, is the metric
on that validation split. The test set is only evaluated, as ``acc.*``.

Distributions (exactly one key per parameter): ``choice: [v, ...]`` (random pick),
``grid: [v, ...]`` (every value), ``uniform: [low, high]``, ``loguniform: [low, high]``
(``low > 0``), ``randint: [low, high]`` (integers, ``high`` excluded), ``quniform: [low, high,
q]``. Parameter names are dotted config keys, exactly as ``key=value`` overrides.

:func:`load_space` checks everything before Ray starts: the grammar (unknown distribution, empty
choice, ``low >= high`` ...), that every parameter is a key of the base config and that every
value it can take (each choice, both ends of a range) passes the experiment schema, and that
the metric is one the base config's evaluation produces. Errors name the space file and the key.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, field_validator

from rkd.config.errors import ConfigError
from rkd.config.loader import PRESET_PREFIX, load_config
from rkd.config.numbers import Number, format_eps
from rkd.config.schema import ExperimentConfig, Strict

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform")


#: where inside a continuous range the check samples (an irrational fraction: not a whole number)
FRACTION = (5 ** 0.5 - 1) / 2 - 0.25
#: most combinations of the parameters' candidate values checked together
MAX_COMBINATIONS = 32


@dataclass(frozen=True)
class Distribution:
    """One parameter's distribution: ``kind`` in :data:`DISTRIBUTIONS` and its arguments."""

    kind: str
    args: tuple

    def candidates(self) -> list:
        """Values that stand for the whole distribution when checking it against the schema:
        every value of a finite one; a range's ends and, for a continuous range, a point
        inside it that is not a whole number (a float range on an integer key fails there)."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        low, high = self.args[0], self.args[1]
        if self.kind == "randint":
            return [low, high - 1]
        inside = low * (high / low) ** FRACTION if self.kind == "loguniform" else low + (high - low) * FRACTION
        if self.kind == "quniform":
            inside = round(inside / self.args[2]) * self.args[2]
        return [low, inside, high] if low < inside < high else [low, high]

    @property
    def finite(self) -> bool:
        return self.kind in ("choice", "grid")


def parse_distribution(spec: Any) -> Distribution:
    """``{"loguniform": [1, 100]}`` -> Distribution; ValueError with the reason otherwise."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"must be a mapping with exactly one of {', '.join(DISTRIBUTIONS)}, got {spec!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {kind!r}; valid: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list):
        raise ValueError(f"{kind} takes a list, got {args!r}")
    if kind in ("choice", "grid"):
        if not args:
            raise ValueError(f"{kind} must list at least one value")
        return Distribution(kind, tuple(args))
    from rkd.config.numbers import parse_number

    want = 3 if kind == "quniform" else 2
    if len(args) != want:
        raise ValueError(f"{kind} takes [low, high{', q' if want == 3 else ''}], got {args!r}")
    try:
        nums = [parse_number(a) for a in args]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind} bounds must be numbers: {exc}") from None
    low, high = nums[0], nums[1]
    if kind == "randint" and not all(float(a).is_integer() for a in nums):
        raise ValueError(f"randint bounds must be integers, got {args!r}")
    if not low < high:
        raise ValueError(f"{kind} needs low < high, got low={low:g}, high={high:g}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"loguniform needs low > 0, got {low:g}")
    if kind == "quniform" and not 0 < nums[2] <= high - low:
        raise ValueError(f"quniform needs 0 < q <= high - low, got q={nums[2]:g}")
    if kind == "randint":
        nums = [int(a) for a in nums]
    return Distribution(kind, tuple(nums))


class SchedulerConfig(Strict):
    """Trial scheduler: ``asha`` (async successive halving on the per-epoch metric; the default)
    or ``fifo`` (every trial runs to the end)."""

    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: Number = Field(2.0, gt=1)
    max_t: Optional[int] = Field(None, ge=1, description="epochs up to which ASHA's rungs may stop trials (default: "
                                                           "the base config's train.epochs); survivors run to the end")


class TuneSpace(Strict):
    base: str
    overrides: list[str] = Field(default_factory=list)
    metric: str = "clean"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(1, ge=1)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    searcher: Literal["random", "grid", "optuna"] = "random"
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    val_samples: Number = Field(
        0.1, gt=0, description="the validation split every trial holds out of its TRAINING set (its data.val_size, "
        "when the base config sets none): a count, or a fraction if < 1; the objective schedulers and searchers "
        "read is measured on it, never on test images")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict) -> dict:
        if not v:
            raise ValueError("a space needs at least one parameter")
        return v


@dataclass
class LoadedSpace:
    """A validated space: the raw settings, the parsed distributions and the base config."""

    path: str
    spec: TuneSpace
    params: dict[str, Distribution]
    base_source: str
    base: ExperimentConfig   # with the trials' validation split (``overrides``)
    overrides: list[str]     # the space's overrides, then the validation split's (validation_overrides)

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def trial_config(self, sample: dict[str, Any], extra: list[str] = ()) -> ExperimentConfig:
        """The experiment config of one trial: base + overrides (with the validation split) +
        the sampled values."""
        return load_config(self.base_source, self.overrides + list(extra) + overrides_for(sample))


def validation_overrides(spec: TuneSpace, base: ExperimentConfig) -> list[str]:
    """``data.val_size=<val_samples>`` when the base config holds no validation split out (its
    own ``data.val_size`` is kept otherwise)."""
    return [] if base.data.val_size else [f"data.val_size={json.dumps(spec.val_samples)}"]


def overrides_for(sample: dict[str, Any]) -> list[str]:
    """``{"method.beta": 5.0}`` -> ``["method.beta=5.0"]`` (values as JSON, which YAML reads)."""
    return [f"{k}={json.dumps(v)}" for k, v in sample.items()]


def metric_names(cfg: ExperimentConfig) -> list[str]:
    """The metrics a run of ``cfg`` reports: ``clean``, each white-box attack label, the
    headline ``robust`` and each threat's ``worst case <ball>`` when the worst case is on, each
    transfer attack label with `` (transfer)``."""
    from rkd.evaluation.metric_names import worst_case_label
    from rkd.evaluation.worst_case import grid_threats

    names = ["clean"] + [a.label for a in cfg.eval.attacks]
    threats = grid_threats(cfg.eval) if cfg.eval.worst_case.enabled else []
    if threats:
        names += ["robust"] + [worst_case_label(n, format_eps(e, n)) for n, e in threats]
    if cfg.eval.transfer is not None:
        names += [f"{a.label} (transfer)" for a in cfg.eval.transfer.attacks]
    return names


def load_space(path: str | Path) -> LoadedSpace:
    """Read and validate a space file (see the module docstring); raises :class:`ConfigError`."""
    path = str(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(path, [("", "tune space file not found")])
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(path, [("", f"not valid YAML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(path, [("", "top level must be a mapping")])
    try:
        spec = TuneSpace.model_validate(raw)
    except ValidationError as exc:
        problems = [(".".join(str(x) for x in e["loc"]),
                     "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, "))
                    for e in exc.errors()]
        raise ConfigError(path, problems) from None

    problems: list[tuple[str, str]] = []
    params: dict[str, Distribution] = {}
    for key, dist_spec in spec.params.items():
        try:
            params[key] = parse_distribution(dist_spec)
        except ValueError as exc:
            problems.append((f"params.{key}", str(exc)))
    if spec.searcher == "grid" and any(not d.finite for d in params.values()):
        bad = [k for k, d in params.items() if not d.finite]
        problems.append(("searcher", f"grid search needs finite parameters (grid/choice); {bad} are ranges"))
    if spec.searcher == "optuna" and any(d.kind == "grid" for d in params.values()):
        problems.append(("searcher", "optuna does not take 'grid' parameters; use choice"))
    if problems:
        raise ConfigError(path, problems)

    base_source = spec.base
    if not base_source.startswith(PRESET_PREFIX) and not Path(base_source).is_absolute():
        base_source = str(p.parent / base_source)
    try:
        base = load_config(base_source, spec.overrides)
    except ConfigError as exc:
        raise ConfigError(path, [("base", str(exc))]) from None
    overrides = spec.overrides + validation_overrides(spec, base)
    try:
        base = load_config(base_source, overrides)
    except ConfigError as exc:
        reasons = "; ".join(f"{k}: {m}" if k else m for k, m in exc.problems)
        raise ConfigError(path, [("val_samples", f"the trials' validation split: {reasons}")]) from None
    flat_keys = _keys(base.model_dump(mode="json"))
    for key, dist in params.items():
        if key not in flat_keys and not any(k.startswith(key + ".") for k in flat_keys):
            problems.append((f"params.{key}", f"not a key of the base config {spec.base}"))
            continue
        for value in dist.candidates():
            try:
                load_config(base_source, overrides + overrides_for({key: value}))
            except ConfigError as exc:
                reasons = "; ".join(m for _, m in exc.problems)
                problems.append((f"params.{key}", f"value {value!r} is invalid for the base config: {reasons}"))
                break
    if not problems:
        problems += combination_problems(base_source, overrides, params)
    names = metric_names(base)
    if spec.metric not in names:
        problems.append(("metric", f"{spec.metric!r} is not reported by the base config; choose from {names}"))
    if spec.scheduler.name == "asha" and spec.metric.endswith("(transfer)"):
        problems.append(("scheduler", "ASHA stops trials on a per-epoch metric; transfer metrics are measured at "
                                      "the end only: use scheduler {name: fifo}"))
    if spec.scheduler.max_t is not None and spec.scheduler.max_t > base.train.epochs:
        problems.append(("scheduler.max_t",
                         f"{spec.scheduler.max_t} exceeds the base config's {base.train.epochs} epochs"))
    if problems:
        raise ConfigError(path, problems)
    return LoadedSpace(path, spec, params, base_source, base, overrides)


def combination_problems(base_source: str, overrides: list[str], params: dict[str, Distribution]) -> list:
    """Values valid one at a time can be invalid together (``train.epochs`` 5 with
    ``train.warmup_epochs`` 5): the parameters' candidate values are checked in combination
    (all of them up to :data:`MAX_COMBINATIONS`, the first that many otherwise); the first
    invalid combination is the problem."""
    if len(params) < 2:
        return []
    keys = list(params)
    for values in itertools.islice(itertools.product(*(params[k].candidates() for k in keys)), MAX_COMBINATIONS):
        sample = dict(zip(keys, values))
        try:
            load_config(base_source, overrides + overrides_for(sample))
        except ConfigError as exc:
            reasons = "; ".join(m for _, m in exc.problems)
            return [("params", f"the combination {sample} is invalid for the base config: {reasons}")]
    return []


def _keys(data: Any, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(data, dict):
        for k, v in data.items():
            out.add(prefix + k)
            out |= _keys(v, f"{prefix}{k}.")
    return out
