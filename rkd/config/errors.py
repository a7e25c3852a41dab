"""The one error type for bad configuration, carrying the file and the key path."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem found before any work starts.

    The message always names the source (a file path, ``<override>`` or ``<dict>``) and, for
    each problem, the dotted key path, e.g.::

        jobs/x.yaml: method.beta: Input should be greater than or equal to 0 (got -1)
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems]
        super().__init__("invalid configuration\n  " + "\n  ".join(lines))
