"""Every stage's dataset on disk before the first stage trains.

A chain (a student, its teacher, MACD's MAE stages and source ...) trains its models one after
another; a student whose own dataset is missing used to fail only after its teacher had
trained for minutes or hours. :func:`require_chain_data` looks for the files of the run's data
and of every model of its chain that is not in the teacher cache yet (recursively), reading
no images, and raises the first :class:`~rkd.data.DatasetNotFoundError` (naming the files).
"""

from __future__ import annotations

from rkd.config import ExperimentConfig
from rkd.data import require_dataset
from rkd.experiment.model_cache import cached_teacher_dir, teacher_config
from rkd.experiment.run_dir import run_status


def require_chain_data(cfg: ExperimentConfig, output_dir: str) -> None:
    """Raise DatasetNotFoundError if a dataset this run or an untrained model of its chain reads
    is missing; ``output_dir`` is where the chain's teacher cache lives (the run's)."""
    d = cfg.data
    for train in (True, False):
        require_dataset(d.dataset, root=d.root, train=train, download=d.download)
    for spec in cfg.trained_models().values():
        if spec.config is None:  # a finished run directory: nothing left to train
            continue
        member = teacher_config(spec)
        cached = cached_teacher_dir(spec, member, output_dir)
        if run_status(cached) == "FINISHED" and (cached / "model.pt").is_file():
            continue
        require_chain_data(member, output_dir)


__all__ = ["require_chain_data"]
