"""Shared bits of the ``jobs/*.py`` entry points (``ray job submit ... -- python jobs/<name>.py``).

Each entry point is thin: parse arguments, load and validate the config, call one function of
:mod:`rkd`. They run the same on a laptop (a local Ray cluster is started) and as a Ray job
(``$RAY_ADDRESS`` is set by ``ray job submit``; the working directory is this repository).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python jobs/x.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))


def run(main) -> None:
    import os

    from rkd import SOURCE_ENV
    from rkd.config import ConfigError

    os.environ.setdefault(SOURCE_ENV, f"jobs/{Path(sys.argv[0]).name}")  # the runs' mlflow.source.name

    try:
        sys.exit(main())
    except ConfigError as exc:
        print(f"{Path(sys.argv[0]).name}: {exc}", file=sys.stderr)
        sys.exit(2)
