"""Training loop, callbacks, checkpoints, optimiser/schedule."""

from rkd.engine import precision
from rkd.engine.callbacks import (
    Callback,
    CheckpointCallback,
    HistoryCallback,
    ProgressCallback,
    latest_checkpoint,
    list_checkpoints,
)
from rkd.engine.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    seed_everything,
    sha256_file,
    verified_torch_load,
)
from rkd.engine.distributed import DistributedEpochSampler, GradientAllReduce
from rkd.engine.sampler import EpochShuffleSampler
from rkd.engine.trainer import Trainer

__all__ = ["Callback", "CheckpointCallback", "CheckpointError", "DistributedEpochSampler", "EpochShuffleSampler",
           "GradientAllReduce", "HistoryCallback", "ProgressCallback", "Trainer", "atomic_torch_save",
           "latest_checkpoint", "list_checkpoints", "precision", "seed_everything", "sha256_file",
           "verified_torch_load"]
