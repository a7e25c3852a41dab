"""A table's work as a graph: the trained models its rows load (stages) and the rows.

A row (one experiment config) loads trained models -- teachers, MAE stages, transfer sources --
that the teacher cache trains once (:mod:`rkd.experiment.model_cache`), and each of those may
load others (MACD: student <- MAE feature stage <- MAE stage). :func:`plan_table` walks every
row's chain and returns each distinct cached model once, keyed by its cache directory, with the
stages it needs; an orchestrator runs each stage as soon as its inputs exist and each row after
its own stages (:mod:`rkd.orchestration.table`). Models given as a finished ``run_dir`` are not
stages: there is nothing to train. Planning reads configs only, no weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rkd.config import ExperimentConfig
from rkd.config.schema import ScalingConfig, TeacherConfig
from rkd.experiment.model_cache import cached_teacher_dir, teacher_config
from rkd.experiment.pipeline import requested_role


@dataclass(frozen=True)
class Stage:
    """A cached model the table needs: ``key`` is its cache directory; ``cfg`` its config as the
    requesting row trains it (the row's output folder and tracking); ``needs``: stage keys."""

    key: str
    spec: TeacherConfig
    cfg: ExperimentConfig
    needs: tuple[str, ...]
    requested_as: str | None = None  # what the first row that loads it calls it (teacher, source)


@dataclass(frozen=True)
class Row:
    name: str
    cfg: ExperimentConfig
    needs: tuple[str, ...]


@dataclass
class TablePlan:
    stages: dict[str, Stage] = field(default_factory=dict)  # in an order where needs come first
    rows: dict[str, Row] = field(default_factory=dict)

    def users(self, key: str) -> list[str]:
        """The rows that need stage ``key``, directly or through other stages."""
        def reaches(needs) -> bool:
            return any(k == key or reaches(self.stages[k].needs) for k in needs)
        return [name for name, row in self.rows.items() if reaches(row.needs)]


def stage_config(spec: TeacherConfig, requester: ExperimentConfig) -> ExperimentConfig:
    """The model's config as :func:`~rkd.experiment.model_cache.ensure_cached` trains it for
    ``requester``: under the requester's output folder, logged with its tracking; a model whose
    config says nothing of where it runs (default ``scaling``) runs where the requester runs (its
    GPU, its custom resources). None of these is part of the cache key."""
    member = teacher_config(spec)
    update = {"output_dir": requester.output_dir, "tracking": requester.tracking}
    if member.scaling == ScalingConfig():
        update["scaling"] = requester.scaling
    return member.model_copy(update=update)


def add_stage(plan: TablePlan, spec: TeacherConfig, requester: ExperimentConfig,
              requested_as: str | None = None) -> str:
    """The key of ``spec``'s stage in ``plan``, added (after its own inputs) if it is new."""
    member = stage_config(spec, requester)
    key = str(cached_teacher_dir(spec, member, requester.output_dir))
    if key not in plan.stages:
        needs = _add_needs(member, plan)  # its own inputs first
        plan.stages[key] = Stage(key, spec, member, needs, requested_as)
    elif plan.stages[key].requested_as is None and requested_as is not None:
        plan.stages[key] = dataclasses.replace(plan.stages[key], requested_as=requested_as)
    return key


def _add_needs(cfg: ExperimentConfig, plan: TablePlan) -> tuple[str, ...]:
    keys = []
    for path, spec in cfg.trained_models().items():
        if spec.config is None:
            continue  # a finished run directory
        key = add_stage(plan, spec, cfg, requested_role(path))
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def plan_table(rows: dict[str, ExperimentConfig], models: Iterable[tuple[TeacherConfig, ExperimentConfig]] = ()
               ) -> TablePlan:
    """The stages and rows of a table of ``{row name: config}``; ``models``: ``(spec,
    requester)`` of cached models the table shows as rows of their own (a quickstart's
    teachers), stages whether or not a row loads them."""
    plan = TablePlan()
    for spec, requester in models:
        add_stage(plan, spec, requester)
    for name, cfg in rows.items():
        plan.rows[name] = Row(name, cfg, _add_needs(cfg, plan))
    return plan


def stage_label(key: str) -> str:
    return Path(key).name
