"""Per-sample outcomes every part of the evaluation shares: correct (clean, or also under an
attack) and the norms of the input gradient. Masks are on the CPU, in the loader's order."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rkd.data.loader import make_loader
from rkd.evaluation.subsets import subset_of
from rkd.models.modes import evaluation_mode

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def correct_mask(model: nn.Module, loader: DataLoader, device, attack: AttackFn | None = None,
                 distortions: list | None = None) -> torch.Tensor:
    """Per sample of ``loader`` (in order, on the CPU): classified correctly by ``model`` (in
    eval mode) and, with ``attack``, also on ``attack(model, x, y)``. With ``distortions`` (a
    list), the L2 norms ``||x_adv - x||`` of the samples the attack turned wrong are appended."""
    masks = []
    with evaluation_mode(model):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            if attack is not None:
                x_adv = attack(model, x, y)
                with torch.no_grad():
                    ok_adv = model(x_adv).argmax(1) == y
                if distortions is not None:
                    distortions.append((x_adv - x).flatten(1).norm(dim=1)[ok & ~ok_adv].cpu())
                ok &= ok_adv
            masks.append(ok.cpu())
    return torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)


def robust_mask(model: nn.Module, data: Dataset, only: torch.Tensor, attack: AttackFn, *, device, batch_size: int,
                distortions: list | None = None) -> torch.Tensor:
    """:func:`correct_mask` under ``attack`` for the samples of ``data`` where ``only`` holds;
    False elsewhere. Attacking a sample that is already wrong cannot change any figure, so the
    grid and the cascade attack only the samples still correct."""
    out = torch.zeros(len(data), dtype=torch.bool)
    idx = only.nonzero().flatten().tolist()
    if idx:
        out[idx] = correct_mask(model, make_loader(subset_of(data, idx), batch_size), device, attack, distortions)
    return out


def input_gradient_norms(model: nn.Module, loader: DataLoader, device) -> dict[str, torch.Tensor]:
    """Per sample (float64, CPU): the L2, L1 and Linf norms of ``d CE(model(x), y) / dx`` at the
    model's own logits (T = 1, eval mode). The loss is summed over the batch so each sample's
    gradient is that of its own loss; parameter ``.grad`` is untouched."""
    out: dict[str, list] = {"l2": [], "l1": [], "linf": []}
    with evaluation_mode(model):
        for x, y in loader:
            x, y = x.to(device).detach().requires_grad_(True), y.to(device)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
            g = g.flatten(1).double()
            out["l2"].append(g.norm(dim=1).cpu())
            out["l1"].append(g.abs().sum(dim=1).cpu())
            out["linf"].append(g.abs().amax(dim=1).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for k, v in out.items()}
