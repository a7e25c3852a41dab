"""Optimiser and per-iteration LR schedule from the ``train`` config section.

Defaults follow the papers: SGD, momentum 0.9, weight decay 5e-4. The schedule is stepped every
iteration (cosine over all iterations, or step decay at epoch milestones), with an optional
linear warm-up, so short runs get a smooth schedule too.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, MultiStepLR, SequentialLR


def build_optimizer(params, cfg, *, fused: bool = False) -> torch.optim.Optimizer:
    """The optimiser of ``cfg``; ``fused``: torch's fused kernel (one launch for all parameters;
    CUDA and CPU, floating-point parameters on one device type)."""
    params = list(params)
    kw = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov, **kw)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)
    raise ValueError(cfg.optimizer)


def _constant(_step: int) -> float:  # module-level so the scheduler state stays picklable
    return 1.0


def build_scheduler(optimizer, cfg, iters_per_epoch: int):
    total = cfg.epochs * iters_per_epoch
    warm = cfg.warmup_epochs * iters_per_epoch
    if cfg.schedule == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
    elif cfg.schedule == "step":
        main = MultiStepLR(optimizer, milestones=[m * iters_per_epoch - warm for m in cfg.milestones],
                           gamma=cfg.lr_decay)
    else:
        main = LambdaLR(optimizer, _constant)
    if warm == 0:
        return main
    ramp = LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm)
    return SequentialLR(optimizer, [ramp, main], milestones=[warm])
