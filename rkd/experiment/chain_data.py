"""Every stage's dataset on disk before the first stage trains.

A chain (a student, its teacher, MACD's MAE stages and source ...) trains its models one after
another; a student whose own dataset is missing used to fail only after its teacher had
trained for minutes or hours. :func:`require_chain_data` looks for the files of the run's data
and of every model of its chain that is not in the teacher cache yet (recursively), reading
no images, and raises the first :class:`~rkd.data.DatasetNotFoundError` (naming the files);
likewise torchvision's pretrained weights a stage asks for (in the hub cache, or downloadable).
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
    if cfg.model.pretrained:
        require_pretrained(cfg.model.arch)
    for spec in cfg.trained_models().values():
        if spec.config is None:  # a finished run directory: nothing left to train
            continue
        member = teacher_config(spec)
        cached = cached_teacher_dir(spec, member, output_dir)
        if run_status(cached) == "FINISHED" and (cached / "model.pt").is_file():
            continue
        require_chain_data(member, output_dir)


def require_pretrained(arch: str, timeout: float = 5.0) -> None:
    """FileNotFoundError if ``arch``'s pretrained weights are neither in torch's hub cache nor
    reachable for download (a HEAD request, ``timeout`` seconds)."""
    import urllib.error
    import urllib.request

    from rkd.models.torchvision_adapters import PRETRAINED, pretrained_weights_file

    if arch not in PRETRAINED:
        return
    path, url = pretrained_weights_file(arch)
    if path.is_file():
        return
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except (urllib.error.URLError, OSError) as exc:
        raise FileNotFoundError(f"model.pretrained: {arch}'s ImageNet weights are not in torch's hub cache ({path}) "
                                f"and cannot be downloaded ({getattr(exc, 'reason', exc)}); put the file there, "
                                "or give model.weights_path") from None


__all__ = ["require_chain_data", "require_pretrained"]
