"""``--smoke``: a whole chain at its real architectures and resolutions, in seconds per stage.

A paper-scale job fails for reasons a few steps would show: a dataset that is not where the
config says, a teacher whose stage shapes do not fit, a MACD stage that loads the wrong MAE, an
attack that crashes at 224 px. :func:`smoke_config` rewrites a validated config, and every
config of its chain (teachers, MAE stages, sources: each :class:`~rkd.config.schema.TeacherConfig`
given by ``config``, recursively), so that each stage runs a few steps on a handful of samples:

* ``data``: the first :data:`SMOKE.train` training and :data:`SMOKE.test` test images, batch
  :data:`SMOKE.batch`, no validation split, no loader workers; the dataset itself (files,
  format, class subset) is read as in the real run;
* ``train``: one epoch, no warm-up, no milestones (a step schedule becomes constant), so the
  schedule always fits; a non-finite loss is a warning, not the end (``train.on_divergence``):
  a student of a one-epoch teacher on 16 images can diverge, which says nothing about the job;
* every ``steps`` (attacks, PGD sets, step sweeps and probes, the worst-case suite spelled out)
  at most :data:`SMOKE.steps`, every ``max_samples`` at most :data:`SMOKE.eval`, every query
  budget at most :data:`SMOKE.queries`, ``restarts`` at most 2; ``epochs`` anywhere 1 and a
  method's ``start_epoch`` 0 (a loss term that starts late runs in the one epoch); an
  attack of kind ``autoattack`` (torchattacks' set, which has no step or query knob) becomes a
  2-step APGD under the same name;
* outputs (runs, teacher caches, adversarial caches) under one throwaway ``output_dir``;
  tracking off unless asked for.

Architectures, input sizes, losses, methods and the evaluation's parts are left as configured:
what runs is the real code path of every stage. A run from a finished ``run_dir`` teacher is
used as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from rkd.config.loader import config_from_dict
from rkd.config.schema import WORST_CASE_SUITES, ExperimentConfig


@dataclass(frozen=True)
class SmokeSizes:
    train: int = 16
    test: int = 8
    batch: int = 4
    eval: int = 4
    steps: int = 2
    queries: int = 10


SMOKE = SmokeSizes()
#: the sections a smoke rewrites (and hands to a chain's other configs as overrides)
SECTIONS = ("data", "train", "eval", "method", "tracking", "output_dir", "device")


def _is_teacher_spec(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"run_dir", "config", "overrides", "cache_dir"}


def _shrink(value: Any, key: str = "") -> Any:
    """The generic rules of the module docstring, over any nested dict/list."""
    if isinstance(value, dict):
        if value.get("kind") == "autoattack":  # torchattacks' AutoAttack has no step or query knob
            value = {**value, "kind": "apgd", "steps": SMOKE.steps}
        out = {k: v if _is_teacher_spec(v) else _shrink(v, k) for k, v in value.items()}
        if "kind" in value and value["kind"] != "square" and "n_queries" in value:
            out["n_queries"] = value["n_queries"]  # an attack's knob that only Square takes stays as it was
        return out
    if isinstance(value, list):
        if key in ("steps", "step_counts") and all(isinstance(v, int) for v in value):  # step sweeps, probes
            return sorted({min(v, SMOKE.steps) for v in value})
        return [_shrink(v, key) for v in value]
    if key == "cache_dir":
        return None  # the default: under the smoke's output_dir
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    if key == "steps":
        return min(value, SMOKE.steps)
    if key == "epochs":
        return 1
    if key == "start_epoch":
        return 0
    if key == "max_samples":
        return min(value, SMOKE.eval)
    if key.endswith("queries"):
        return min(value, SMOKE.queries)
    if key == "restarts":
        return min(value, 2)
    return value


def smoke_dict(data: dict, output_dir: str, *, track: bool = False) -> dict:
    """A resolved config (``model_dump(mode="json")``) rewritten for a smoke run (not its chain)."""
    out = _shrink({**data, "eval": _explicit_suite(data["eval"])})
    d = out["data"]
    d.update(limit_train=min(d.get("limit_train") or SMOKE.train, SMOKE.train),
             limit_test=min(d.get("limit_test") or SMOKE.test, SMOKE.test),
             batch_size=min(d["batch_size"], SMOKE.batch), eval_batch_size=min(d["eval_batch_size"], 2 * SMOKE.batch),
             num_workers=0, val_size=0)
    t = out["train"]
    t.update(epochs=1, warmup_epochs=0, milestones=[], checkpoint_every=1, on_divergence="warn")
    if t["schedule"] == "step":
        t["schedule"] = "constant"
    out["output_dir"] = output_dir
    out["tracking"]["enabled"] = bool(track) and out["tracking"]["enabled"]
    return out


def _explicit_suite(ev: dict) -> dict:
    """A named worst-case suite spelled out as its attacks, so that their steps can shrink."""
    wc = ev.get("worst_case") or {}
    if not isinstance(wc.get("suite"), str):
        return ev
    suite = [a.model_dump(mode="json", exclude_unset=True) for a in WORST_CASE_SUITES[wc["suite"]]()]
    return {**ev, "worst_case": {**wc, "suite": suite}}


def smoke_config(cfg: ExperimentConfig, output_dir: str, load: Callable[[str, list[str]], ExperimentConfig], *,
                 track: bool = False) -> ExperimentConfig:
    """``cfg`` and every config its chain trains, rewritten for a smoke run under ``output_dir``;
    ``load(config, overrides)`` loads a chain member (rkd.config.load_config). Where the data
    lives and how it is checked (``data.root``, ``data.verify``, ``data.download``) and the
    ``device`` are the top config's for the whole chain: a smoke runs on one machine."""
    top = cfg.model_dump(mode="json")
    where = {"data": {k: top["data"][k] for k in PLACE_KEYS}, "device": top["device"]}
    smoked = smoke_dict(top, output_dir, track=track)
    _smoke_chain(smoked, _Chain(output_dir, load, track, where))
    return config_from_dict(smoked, f"<smoke of {cfg.name}>")


#: data keys a smoke takes from the top config for every stage of the chain
PLACE_KEYS = ("root", "verify", "download")


@dataclass(frozen=True)
class _Chain:
    output_dir: str
    load: Callable[[str, list[str]], ExperimentConfig]
    track: bool
    where: dict


def _smoke_chain(node: Any, chain: _Chain) -> None:
    """Every teacher spec given by ``config`` under ``node`` gets overrides that replace its
    config's sections with their smoke versions (its own chain smoked the same way)."""
    if isinstance(node, list):
        for v in node:
            _smoke_chain(v, chain)
        return
    if not isinstance(node, dict):
        return
    if _is_teacher_spec(node):
        node["cache_dir"] = None  # the smoke's own teacher cache
        if node["config"] is not None:
            member = smoke_dict(chain.load(node["config"], node["overrides"]).model_dump(mode="json"),
                                chain.output_dir, track=chain.track)
            member["data"].update(chain.where["data"])
            member["device"] = chain.where["device"]
            _smoke_chain(member, chain)
            node["overrides"] = list(node["overrides"]) + [f"{k}={json.dumps(member[k])}" for k in SECTIONS]
        return
    for v in node.values():
        _smoke_chain(v, chain)


__all__ = ["SMOKE", "SmokeSizes", "smoke_config", "smoke_dict"]
