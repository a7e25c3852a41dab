"""Progress lines: rkd.experiment.progress.Progress (unknown totals, parallel steps, a caller's
own count) and the sweep's per-trial line (rkd.orchestration.tune.SweepProgress), driven with
fake trial objects: no Ray cluster starts here."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from rkd.config.tune_space import Distribution
from rkd.experiment.progress import Progress
from rkd.orchestration.train import DONE_KEY, EPOCH_KEY
from rkd.orchestration.tune import SweepProgress, sweep_total, trial_outcome

ANSI = re.compile(r"\x1b\[")


class Clock:
    """A settable clock for ``now=``."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_progress_with_an_unknown_total_counts_without_an_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(None, out=out, now=clock)
    clock.t += 30
    p.done("row", 30)
    assert out.getvalue() == "[1] row done in 30s | elapsed 30s\n"


def test_progress_divides_the_eta_by_the_steps_that_run_together():
    clock = Clock()
    p = Progress(8, out=io.StringIO(), now=clock, parallel=4)
    clock.t += 60
    assert p.record(60) == " | elapsed 1m00s | about 1m45s left"  # 7 left x 60 s / 4 at once
    p.finished = 6
    assert p.record(60) == " | elapsed 1m00s | about 1m00s left"  # 1 left: one trial's time, not a quarter
    assert p.record(None, index=8) == " | elapsed 1m00s" and p.count() == "8/8"


def _trial(trial_id: str, status: str = "RUNNING", **last) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=last)


def test_trial_outcome_names_how_a_trial_ended():
    assert trial_outcome({DONE_KEY: 1, EPOCH_KEY: 3}, error=False) == "TERMINATED"
    assert trial_outcome({EPOCH_KEY: 2}, error=False) == "stopped at epoch 2"
    assert trial_outcome({EPOCH_KEY: 1}, error=True) == "ERROR at epoch 1"
    assert (trial_outcome({}, error=True), trial_outcome({}, error=False)) == ("ERROR", "stopped")


def test_sweep_progress_prints_one_plain_line_per_ended_trial():
    clock, out = Clock(), io.StringIO()
    cb = SweepProgress("s", 4, parallel=2, out=out, now=clock)
    cb.setup(total_num_samples=4)
    a, b, c = _trial("a_00000"), _trial("a_00001"), _trial("a_00002")
    for t in (a, b):
        cb.on_trial_start(0, [a, b], t)
    clock.t += 72
    a.last_result = {DONE_KEY: 1, EPOCH_KEY: 3}
    cb.on_trial_complete(1, [a, b], a)
    a.status = "TERMINATED"
    cb.on_trial_start(1, [a, b, c], c)
    clock.t += 48
    b.last_result, b.status = {EPOCH_KEY: 2}, "ERROR"  # Tune marks an errored trial before the callback
    cb.on_trial_error(2, [a, b, c], b)
    clock.t += 10
    c.last_result = {EPOCH_KEY: 1}
    cb.on_trial_complete(3, [a, b, c], c)
    lines = out.getvalue().splitlines()
    assert lines == [
        "[sweep s] trial 1/4 a_00000 finished (TERMINATED) in 1m12s | elapsed 1m12s | about 1m48s left",
        "[sweep s] trial 2/4 a_00001 finished (ERROR at epoch 2) in 2m00s | elapsed 2m00s | about 1m36s left",
        "[sweep s] trial 3/4 a_00002 finished (stopped at epoch 1) in 58s | elapsed 2m10s | about 1m23s left",
    ]
    assert not ANSI.search(out.getvalue())


def test_sweep_progress_counts_trials_that_ended_before_a_resume_and_knows_no_total():
    out = io.StringIO()
    cb = SweepProgress("s", None, out=out, now=Clock())
    cb.setup(total_num_samples=0)  # no count from Tune: the line has no /N and no ETA
    done = [_trial(f"t{i}", "TERMINATED") for i in range(3)]
    last = _trial("t3", time_total_s=5.0, **{DONE_KEY: 1})  # started before the resume: Tune's own time
    cb.on_trial_complete(0, [*done, last], last)
    assert out.getvalue() == "[sweep s] trial 4 t3 finished (TERMINATED) in 5s | elapsed 0s\n"


def test_sweep_progress_says_when_tune_retries_a_trial():
    out = io.StringIO()
    SweepProgress("s", 2, out=out).on_trial_recover(0, [], _trial("t0", **{EPOCH_KEY: 2}))
    assert out.getvalue() == "[sweep s] trial t0 failed at epoch 2, retrying from its last checkpoint\n"


def test_sweep_total_multiplies_the_samples_by_the_grid():
    params = {"a": Distribution("grid", (1, 2, 3)), "b": Distribution("grid", (0.1, 0.2)),
              "c": Distribution("uniform", (0.0, 1.0)), "d": Distribution("choice", (1, 2))}
    assert sweep_total(SimpleNamespace(spec=SimpleNamespace(num_samples=2), params=params)) == 12
    assert sweep_total(SimpleNamespace(spec=SimpleNamespace(num_samples=5), params={"c": params["c"]})) == 5
