"""Give back the resources of a Tune trial's Train workers when the trial ends before them.

A sweep trial with ``scaling.num_workers > 0`` runs a TorchTrainer: the trial's process owns the
Train controller actor, which creates a placement group for its workers. Ray scopes a placement
group that a (non-detached) actor creates to the *job*, not to that actor: when Tune stops such a
trial early (an ASHA decision) or its process dies, the controller and its workers die with it,
but their placement group keeps its CPUs/GPUs reserved until the sweep's driver exits -- later
trials then wait forever for workers. (Ray Train's own ``PlacementGroupCleaner`` asks the
dashboard's state API whether the controller is alive; a local cluster started without a
dashboard cannot answer, so it never cleans up.)

So rank 0 reports its placement group and its own actor id with every result
(:func:`worker_group_ids`), and the sweep driver, for each trial that ended without its final
report, waits until that worker is dead -- its controller is gone, nothing will use the group
again -- and removes the group (:class:`OrphanedWorkerGroups`). A trial that finishes normally
needs none of this: its controller removes the group itself.
"""

from __future__ import annotations

import logging
import time

import ray
from ray.util.placement_group import PlacementGroup, get_current_placement_group, remove_placement_group

log = logging.getLogger(__name__)

#: result keys set by rank 0 of a TorchTrainer
GROUP_KEY, WORKER_KEY = "worker_group", "worker_actor"


def worker_group_ids() -> dict[str, str]:
    """In a Train worker: its placement group's and its own actor's ids (hex), for results."""
    pg = get_current_placement_group()
    actor = ray.get_runtime_context().get_actor_id()
    return {GROUP_KEY: pg.id.hex(), WORKER_KEY: actor} if pg is not None and actor else {}


def _actor_dead(actor_id: str) -> bool:
    # the GCS actor table (no dashboard needed); an unknown id counts as dead
    info = ray._private.state.actors(actor_id=actor_id)
    return not info or info.get("State") == "DEAD"


def _group_live(group_id: str) -> bool:
    entry = ray.util.placement_group_table().get(group_id)
    return bool(entry) and entry.get("state") != "REMOVED"


class OrphanedWorkerGroups:
    """Driver side: worker placement groups of trials that ended early, removed once orphaned."""

    def __init__(self) -> None:
        self._pending: dict[str, str] = {}  # placement group id -> rank-0 worker actor id

    def watch(self, result: dict | None) -> None:
        """A trial ended without finishing; ``result`` is its last result."""
        if result and result.get(GROUP_KEY) and result.get(WORKER_KEY):
            self._pending[result[GROUP_KEY]] = result[WORKER_KEY]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def release(self) -> list[str]:
        """Remove every watched group whose worker is dead; returns their ids. Never blocks."""
        released = []
        for group_id, worker in list(self._pending.items()):
            if not _actor_dead(worker):
                continue
            del self._pending[group_id]
            if _group_live(group_id):
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
                log.info("released the workers' placement group %s of a trial stopped early", group_id)
                released.append(group_id)
        return released

    def drain(self, timeout_s: float = 30.0) -> None:
        """At the end of a sweep: release until nothing is watched (or ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            self.release()
            if self._pending:
                time.sleep(0.2)
        if self._pending:
            log.warning("placement groups %s still held by live workers after %.0f s",
                        sorted(self._pending), timeout_s)
