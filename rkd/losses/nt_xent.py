"""NT-Xent (SimCLR's normalised temperature-scaled cross-entropy) over several views, as RoCL's
code computes it (Kim et al. 2020, ``src/loss.py``).

For ``V`` views of ``N`` instances (``V * N`` embeddings, L2-normalised), every embedding is an
anchor; its positives are the other views of the same instance, its candidates every other
embedding (itself excluded)::

    L = 1/(V N) * sum_anchors sum_positives -log( exp(s_ap / tau) / sum_{j != a} exp(s_aj / tau) )

with ``s`` the cosine similarity. For two views this is SimCLR's loss; for RoCL's three views
(two augmentations and the adversarial one) each anchor has two positives, the sum over the six
cross-view pairs divided by ``3 N`` as in the authors' code. ``detach_keys`` detaches the second
factor of the similarity matrix (``outputs_norm @ outputs_norm.T.detach()`` in their code), so
the gradient reaches each embedding only as an anchor; False gives the symmetric gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(views: list[torch.Tensor], temperature: float = 0.5, *, detach_keys: bool = True) -> torch.Tensor:
    """The loss above; ``views`` are ``V >= 2`` tensors ``(N, D)`` of the same instances."""
    if len(views) < 2 or any(v.shape != views[0].shape or v.dim() != 2 for v in views):
        raise ValueError(f"need at least two (N, D) views of one shape, got {[tuple(v.shape) for v in views]}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n, v = views[0].shape[0], len(views)
    z = F.normalize(torch.cat(views), dim=1)
    keys = z.detach() if detach_keys else z
    logits = z @ keys.T / temperature
    eye = torch.eye(v * n, dtype=torch.bool, device=z.device)
    log_prob = logits.masked_fill(eye, float("-inf")).log_softmax(dim=1)
    instance = torch.arange(v * n, device=z.device) % n
    positive = (instance[:, None] == instance[None, :]) & ~eye
    return -(log_prob.masked_fill(~positive, 0.0)).sum() / (v * n)
