"""One line per finished step of a job of several rows, with the elapsed time and an ETA.

``[3/9] TRADES done in 1m52s | elapsed 6m10s | about 8m left`` -- the ETA is the mean time of
the rows finished so far times the rows left (rows differ in cost, so it is a rough guide and
says so with "about"); a cached row takes seconds and is left out of the mean.
"""

from __future__ import annotations

import sys
import time


def clock(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; under a minute ``"42s"``."""
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Counts ``total`` rows; :meth:`done` prints the line for one finished row."""

    def __init__(self, total: int, out=sys.stdout, now=time.monotonic):
        self.total, self.out, self.now = total, out, now
        self.start = now()
        self.finished = 0
        self.timed: list[float] = []

    def note(self, text: str) -> None:
        """A line about what starts now, prefixed with the elapsed time."""
        print(f"[{clock(self.now() - self.start)}] {text}", file=self.out, flush=True)

    def done(self, label: str, seconds: float | None, cached: bool = False) -> None:
        self.finished += 1
        if seconds is not None and not cached:
            self.timed.append(seconds)
        elapsed = self.now() - self.start
        left = self.total - self.finished
        took = "cached" if cached else (f"done in {clock(seconds)}" if seconds is not None else "done")
        line = f"[{self.finished}/{self.total}] {label} {took} | elapsed {clock(elapsed)}"
        if left and self.timed:
            line += f" | about {clock(left * sum(self.timed) / len(self.timed))} left"
        elif left:
            line += f" | {left} left"
        print(line, file=self.out, flush=True)


__all__ = ["Progress", "clock"]
