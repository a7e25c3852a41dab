"""One line per finished step of a job of several rows, with the elapsed time and an ETA.

``[3/9] TRADES done in 1m52s | elapsed 6m10s | about 8m left`` -- the ETA is the mean time of
the rows finished so far times the rows left (rows differ in cost, so it is a rough guide and
says so with "about"); a cached row takes seconds and is left out of the mean. Steps that run
``parallel`` at a time (a sweep's concurrent trials) divide it by the steps that can still run
together. With ``total=None`` (unknown) the count is ``[3]`` and there is no ETA.
"""

from __future__ import annotations

import sys
import time


def clock(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; under a minute ``"42s"``."""
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Counts ``total`` rows (None: unknown); :meth:`done` prints the line for one finished row,
    :meth:`record` counts one and returns the line's tail for a caller with its own wording."""

    def __init__(self, total: int | None, out=sys.stdout, now=time.monotonic, parallel: int = 1):
        self.total, self.out, self.now = total, out, now
        self.parallel = max(1, parallel)
        self.start = now()
        self.finished = 0
        self.timed: list[float] = []

    def note(self, text: str) -> None:
        """A line about what starts now, prefixed with the elapsed time."""
        print(f"[{clock(self.now() - self.start)}] {text}", file=self.out, flush=True)

    def count(self) -> str:
        """``"3/9"``, or ``"3"`` when the total is unknown."""
        return f"{self.finished}/{self.total}" if self.total is not None else str(self.finished)

    def record(self, seconds: float | None, cached: bool = False, index: int | None = None) -> str:
        """Count one finished step (``index``: its number, where the caller counts, e.g. a resumed
        job whose earlier steps ended before this process) and return
        ``" | elapsed 6m10s | about 8m left"``."""
        self.finished = index if index is not None else self.finished + 1
        if seconds is not None and not cached:
            self.timed.append(seconds)
        tail = f" | elapsed {clock(self.now() - self.start)}"
        left = None if self.total is None else max(0, self.total - self.finished)
        if left and self.timed:
            tail += f" | about {clock(left * sum(self.timed) / len(self.timed) / min(self.parallel, left))} left"
        elif left:
            tail += f" | {left} left"
        return tail

    def done(self, label: str, seconds: float | None, cached: bool = False) -> None:
        """Print ``[3/9] label done in 1m52s | elapsed 6m10s | about 8m left``."""
        tail = self.record(seconds, cached)
        took = "cached" if cached else (f"done in {clock(seconds)}" if seconds is not None else "done")
        print(f"[{self.count()}] {label} {took}{tail}", file=self.out, flush=True)


__all__ = ["Progress", "clock"]
