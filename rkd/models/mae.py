"""Masked autoencoder (MAE) with the MACD feature-learning module (Zhang & Dong, 2024, stage 1).

Three pieces, pure torch (no timm):

- :class:`MaskedAutoencoderViT` -- a ViT encoder on the *visible* patches only plus a light
  transformer decoder that reconstructs the masked patches (He et al., 2022). The forward pass
  is split the way ``facebookresearch/mae`` splits it: :meth:`~MaskedAutoencoderViT.patchify`,
  :meth:`~MaskedAutoencoderViT.unpatchify`, :meth:`~MaskedAutoencoderViT.random_masking`,
  :meth:`~MaskedAutoencoderViT.forward_encoder`, :meth:`~MaskedAutoencoderViT.forward_decoder`,
  :meth:`~MaskedAutoencoderViT.forward_loss`.
- :class:`FeatureLearningModule` -- MACD's "improved MAE" block:
  ``F_o = fuse(F_v, softmax(avgpool(F_e)) * F_v)``.
- :class:`MAETeacher` -- encoder + feature module: the frozen teacher of MACD's stage 3, and
  the eq.-4 objective ``L_mae = MSE(F_o, F_e) + MSE(I_m, P_m)`` for MACD's stage-1 fine-tuning.

Conventions
-----------
- Images enter in ``[0, 1]`` and are normalised inside (:class:`InputNormalize`), like every
  model of :mod:`rkd.models`; ``mean``/``std`` follow :func:`rkd.models.normalize.resolve_stats`
  (a stats name such as ``mean="cifar10"``, two per-channel sequences, or neither = CIFAR-10).
- Shapes: ``N`` batch, ``L`` patches per image, ``L_v`` visible patches, ``D`` encoder width,
  ``p`` patch size. Token sequences carry the [CLS] token first: ``(N, 1 + L_v, D)``.
- Masks: ``(N, L)``, ``1`` = masked (hidden from the encoder), ``0`` = visible. The number of
  masked patches per sample is ``round(mask_ratio * L)`` (Python's ``round``, half to even), so
  every sample of a batch keeps exactly ``L - round(mask_ratio * L)`` patches.
- Reconstruction targets are the patches of the *normalised* image (the space the encoder
  sees; this is what the reference MAE does, whose loader normalises before the model). With
  ``norm_pix_loss=True`` each target patch is further standardised by its own mean/variance.

Registered constructors (both return the whole :class:`MAETeacher`, which is what both MAE
training stages train and save): ``mae_vit_base_patch16`` (the paper's 224 px, patch 16,
12 x 768 encoder, 8 x 512 decoder) and ``mae_vit_tiny`` (32 px, patch 4, for CPU tests).
"""

from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import StatsArg, build_normalize
from .registry import register_model

# ------------------------------------------------------------------------------ positional embeddings


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos embedding of positions ``pos`` (M,) -> (M, dim): ``[sin(pos w), cos(pos w)]``."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, dim)


def get_2d_sincos_pos_embed(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos positional embedding ``(grid_size**2 [+1], dim)`` (float32).

    Half of the channels encode the row, half the column (each a 1-D sin-cos code); patches are
    in raster order (row-major), matching :meth:`MaskedAutoencoderViT.patchify`. With
    ``cls_token`` a zero row is prepended for the [CLS] position.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos positional embedding needs dim divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (g, g) each
    emb = torch.cat([_sincos_1d(dim // 2, rows), _sincos_1d(dim // 2, cols)], dim=1)  # (g*g, dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)  # (1+g*g, dim)
    return emb.float()


# ------------------------------------------------------------------------------ transformer blocks


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv projection, scaled dot product)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (N, heads, T, d_head) each
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, d_head)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))`` (GELU MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _ids_keep(ids_restore: torch.Tensor, len_keep: int) -> torch.Tensor:
    """Original patch indices of the visible tokens, in the encoder's token order: ``(N, L_v)``."""
    return torch.argsort(ids_restore, dim=1)[:, :len_keep]


def _gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x[n, ids[n, j], :]`` for ``x`` (N, L, D) and ``ids`` (N, K) -> (N, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ------------------------------------------------------------------------------ the autoencoder


class MaskedAutoencoderViT(nn.Module):
    """Masked autoencoder with a ViT backbone (He et al., 2022), ``[0, 1]`` inputs.

    Args:
        img_size: square input side in pixels (must be a multiple of ``patch_size``).
        patch_size: patch side ``p``; ``L = (img_size / p) ** 2`` patches.
        in_chans: image channels.
        embed_dim, depth, num_heads: encoder width, blocks and heads.
        decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder's.
        mlp_ratio: MLP hidden width / model width in every block.
        norm_pix_loss: standardise each target patch by its own mean and variance.
        mean, std: normalisation statistics (see the module docstring).

    Positional embeddings are fixed 2-D sin-cos codes (buffers, not trained); the [CLS] token
    and the decoder's shared mask token are learnt.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        mean: StatsArg = None,
        std: StatsArg = None,
    ):
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size, self.in_chans = int(img_size), int(patch_size), int(in_chans)
        self.grid_size = self.img_size // self.patch_size
        self.num_patches = self.grid_size**2
        self.embed_dim, self.decoder_embed_dim = int(embed_dim), int(decoder_embed_dim)
        self.norm_pix_loss = bool(norm_pix_loss)

        self.normalize = build_normalize(mean, std, default="cifar10")

        # encoder
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer(
            "pos_embed", get_2d_sincos_pos_embed(embed_dim, self.grid_size, cls_token=True)[None],
            persistent=False,
        )  # (1, 1+L, D)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed",
            get_2d_sincos_pos_embed(decoder_embed_dim, self.grid_size, cls_token=True)[None],
            persistent=False,
        )  # (1, 1+L, D_dec)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)

        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer on flattened patches
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, L, p*p*C)``, patches in raster order, pixels ``(p, p, C)``."""
        p = self.patch_size
        n, c, h, w = imgs.shape
        if h != w or h % p != 0:
            raise ValueError(f"expected square images with side a multiple of {p}, got {h}x{w}")
        g = h // p
        x = imgs.reshape(n, c, g, p, g, p)
        x = torch.einsum("nchpwq->nhwpqc", x)  # (N, g, g, p, p, C)
        return x.reshape(n, g * g, p * p * c)  # (N, L, p*p*C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, p*p*C)`` -> ``(N, C, H, W)``; the exact inverse of :meth:`patchify`."""
        p, c = self.patch_size, self.in_chans
        n, num, _ = x.shape
        g = int(round(num**0.5))
        if g * g != num:
            raise ValueError(f"{num} patches do not form a square grid")
        x = x.reshape(n, g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, g, p, g, p)
        return x.reshape(n, c, g * p, g * p)  # (N, C, H, W)

    # ------------------------------------------------------------------ masking
    @staticmethod
    def num_visible(num_patches: int, mask_ratio: float) -> int:
        """Patches kept per sample: ``L - round(mask_ratio * L)``."""
        return num_patches - int(round(mask_ratio * num_patches))

    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by argsort of uniform noise.

        Args:
            x: patch tokens ``(N, L, D)``.
            mask_ratio: fraction to hide, in ``[0, 1)``; ``round(mask_ratio * L)`` patches are
                masked in every sample and ``L_v = L - round(mask_ratio * L) >= 1`` are kept.
            generator: optional ``torch.Generator`` for reproducible masks (its device may
                differ from ``x``'s: the noise is drawn on the generator's device and moved).

        Returns:
            ``x_visible`` ``(N, L_v, D)`` (the kept tokens, in shuffled order), ``mask``
            ``(N, L)`` (1 = masked, in the original patch order) and ``ids_restore`` ``(N, L)``
            (the permutation that puts the shuffled sequence back in patch order).
        """
        n, num, d = x.shape
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        len_keep = self.num_visible(num, mask_ratio)
        if len_keep < 1:
            raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch out of {num}")

        noise_device = generator.device if generator is not None else x.device
        noise = torch.rand(n, num, generator=generator, device=noise_device).to(x.device)  # (N, L)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the first len_keep are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (N, L)
        ids_keep = ids_shuffle[:, :len_keep]  # (N, L_v)
        x_visible = _gather_tokens(x, ids_keep)  # (N, L_v, D)

        mask = torch.ones(n, num, device=x.device, dtype=x.dtype)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (N, L), back in patch order
        return x_visible, mask, ids_restore

    # ------------------------------------------------------------------ encoder / decoder
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches of ``[0, 1]`` images ``(N, C, H, W)``.

        Returns ``latent`` ``(N, 1 + L_v, D)`` ([CLS] first, after the final LayerNorm),
        ``mask`` ``(N, L)`` and ``ids_restore`` ``(N, L)``. ``mask_ratio=0`` encodes the whole
        image with the patch tokens in their original order (no shuffle, ``ids_restore`` is the
        identity): that is MACD's ``F_e``.
        """
        x = self.patch_embed(self.normalize(imgs))  # (N, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]
        n, num, _ = x.shape
        if mask_ratio == 0:
            mask = torch.zeros(n, num, device=x.device, dtype=x.dtype)
            ids_restore = torch.arange(num, device=x.device).expand(n, num)
        else:
            x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)  # (N, L_v, D)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)  # (N, 1, D)
        x = torch.cat([cls, x], dim=1)  # (N, 1+L_v, D)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch's pixels from ``latent`` ``(N, 1 + L_v, D)`` -> ``(N, L, p*p*C)``.

        The visible tokens are embedded, the masked positions filled with the shared learnt
        mask token, the sequence unshuffled with ``ids_restore``, and the decoder's positional
        embedding added before its blocks and the linear pixel head ([CLS] dropped at the end).
        """
        x = self.decoder_embed(latent)  # (N, 1+L_v, D_dec)
        n, num = ids_restore.shape
        masks = self.mask_token.expand(n, num + 1 - x.shape[1], -1)  # (N, L-L_v, D_dec)
        x_ = torch.cat([x[:, 1:, :], masks], dim=1)  # (N, L, D_dec), shuffled order
        x_ = _gather_tokens(x_, ids_restore)  # (N, L, D_dec), patch order
        x = torch.cat([x[:, :1, :], x_], dim=1)  # (N, 1+L, D_dec)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (N, 1+L, p*p*C)
        return x[:, 1:, :]  # (N, L, p*p*C)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only.

        ``imgs`` ``(N, C, H, W)`` in ``[0, 1]``; the target is the patchified *normalised*
        image (per-patch standardised as well when ``norm_pix_loss``). ``pred`` ``(N, L,
        p*p*C)``, ``mask`` ``(N, L)`` with 1 = masked. Per-patch MSE is averaged over the
        masked patches; with no masked patch (``mask_ratio=0``) the loss is 0.
        """
        target = self.patchify(self.normalize(imgs))  # (N, L, p*p*C)
        if self.norm_pix_loss:
            mu = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mu) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L), per-patch MSE
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Plain MAE step: ``(loss, pred (N, L, p*p*C), mask (N, L))``."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)  # (N, L, p*p*C)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask


# ------------------------------------------------------------------------------ MACD feature module

Fusion = Literal["add", "concat_linear", "gated"]
FUSIONS = ("add", "concat_linear", "gated")


class FeatureLearningModule(nn.Module):
    """MACD's feature-learning module: ``F_o = fuse(F_v, A * F_v)``, ``A = softmax(avgpool(F_e))``.

    Method section of Zhang & Dong (2024): the whole-image encoding ``F_e`` (N, 1+L, D) is
    average-pooled to the size of the visible-patch encoding ``F_v`` (N, 1+L_v, D), passed
    through a softmax, multiplied elementwise with ``F_v``, and the product fused with ``F_v``.
    (The paper's closing "Background" section calls this a cross-attention; the method-section
    formula is what is implemented here.)

    Choices (the paper leaves them open):

    - Pooling: :func:`torch.nn.functional.adaptive_avg_pool1d` along the token axis, from
      ``1 + L`` to ``1 + L_v`` tokens, in raster order. With ``cls_separate=True`` the [CLS]
      token of ``F_e`` is kept as is and only its ``L`` patch tokens are pooled to ``L_v``, so
      [CLS] is matched with [CLS]. Note that the pooled token ``j`` summarises a contiguous run
      of patches of the whole image, not the patch at ``F_v``'s position ``j`` (``F_v`` is in
      shuffled order): ``A`` carries global, not position-matched, evidence.
    - Softmax axis (``softmax_dim``): ``"channel"`` (default) normalises over ``D``, so for
      every token ``A`` is a distribution over feature channels -- a channel attention telling
      which features the whole image makes salient, applied to every visible token. A softmax
      over ``"token"`` (``L_v + 1``) would instead weight positions, which the random shuffle
      makes arbitrary. Each weight is about ``1/D`` on average (``1/(1+L_v)`` for tokens).
    - Fusion:

      * ``"add"``: the residual ``F_o = F_v + A * F_v``, the paper's words taken literally. It
        has no parameters and is nearly the identity: ``A ~ 1/D`` moves ``F_v`` by about 1/D
        (2% for the tiny ViT, 0.1% for ViT-B), so stage 1b barely depends on ``F_e``.
      * ``"concat_linear"``: ``F_o = Linear_{2D->D}([A * F_v, F_v])``, initialised to pass
        ``F_v`` through unchanged (weight ``[0 | I]``, bias 0): a pretrained MAE starts from its
        own features, and the module learns how much of ``A * F_v`` to mix in.
      * ``"gated"``: ``F_o = F_v + g * (n A * F_v)``, with ``n`` the size of the softmax axis (so
        ``n A`` has mean 1: a relative saliency, above 1 where the whole image makes a channel
        salient) and a learned per-channel gate ``g`` (``D`` values, initialised to 1). At
        initialisation it moves ``F_v`` by about its own size, shaped by ``F_e``; stage 1b learns
        ``g`` (towards 0 where the whole-image evidence does not help).
    """

    def __init__(
        self,
        dim: int,
        fusion: Fusion = "add",
        softmax_dim: Literal["channel", "token"] = "channel",
        cls_separate: bool = False,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if softmax_dim not in ("channel", "token"):
            raise ValueError(f"softmax_dim must be 'channel' or 'token', got {softmax_dim!r}")
        self.dim, self.fusion, self.softmax_dim = int(dim), fusion, softmax_dim
        self.cls_separate = bool(cls_separate)
        self.proj: Optional[nn.Linear] = None
        self.gate: Optional[nn.Parameter] = nn.Parameter(torch.ones(dim)) if fusion == "gated" else None
        if fusion == "concat_linear":
            self.proj = nn.Linear(2 * dim, dim)
            with torch.no_grad():
                self.proj.weight.zero_()
                self.proj.weight[:, dim:] = torch.eye(dim)
                self.proj.bias.zero_()

    def pool(self, f_e: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Average-pool ``F_e`` (N, 1+L, D) along tokens to ``(N, num_tokens, D)``."""
        if self.cls_separate:
            patches = F.adaptive_avg_pool1d(f_e[:, 1:, :].transpose(1, 2), num_tokens - 1)
            return torch.cat([f_e[:, :1, :], patches.transpose(1, 2)], dim=1)  # (N, T_v, D)
        return F.adaptive_avg_pool1d(f_e.transpose(1, 2), num_tokens).transpose(1, 2)  # (N, T_v, D)

    def attention(self, f_v: torch.Tensor, f_e: torch.Tensor) -> torch.Tensor:
        """``A = softmax(avgpool(F_e))``, shape ``(N, 1+L_v, D)`` like ``F_v``."""
        pooled = self.pool(f_e, f_v.shape[1])  # (N, 1+L_v, D)
        return pooled.softmax(dim=-1 if self.softmax_dim == "channel" else 1)

    def forward(self, f_v: torch.Tensor, f_e: torch.Tensor) -> torch.Tensor:
        """``F_v`` (N, 1+L_v, D), ``F_e`` (N, 1+L, D) -> ``F_o`` (N, 1+L_v, D)."""
        if f_v.shape[-1] != self.dim or f_e.shape[-1] != self.dim:
            raise ValueError(f"expected feature width {self.dim}, got {f_v.shape[-1]} and {f_e.shape[-1]}")
        a = self.attention(f_v, f_e)  # (N, 1+L_v, D)
        if self.fusion == "gated":
            n = a.shape[-1] if self.softmax_dim == "channel" else a.shape[1]
            return f_v + self.gate * (n * a * f_v)
        weighted = a * f_v
        if self.proj is None:
            return f_v + weighted
        return self.proj(torch.cat([weighted, f_v], dim=-1))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, fusion={self.fusion!r}, softmax_dim={self.softmax_dim!r}, "
                f"cls_separate={self.cls_separate}")


# ------------------------------------------------------------------------------ MACD teacher


class MAETeacher(nn.Module):
    """MACD teacher: MAE encoder on the visible patches + :class:`FeatureLearningModule`.

    Args:
        mae: a :class:`MaskedAutoencoderViT` (its decoder is used only by :meth:`mae_loss`).
        feature_module: defaults to ``FeatureLearningModule(mae.embed_dim)`` (residual fusion).
        pool: ``"cls"`` -- the [CLS] token of ``F_o``; ``"mean"`` -- the mean of its patch
            tokens (the [CLS] token excluded, as in MAE's global pooling).
        detach_target: stop the gradient through ``F_e`` in the feature term of :meth:`mae_loss`
            (the target; otherwise the encoder could lower the loss by moving ``F_e`` too).

    ``forward`` runs the encoder twice (masked for ``F_v``, whole image for ``F_e``). Freezing
    for distillation (``requires_grad_(False)``, ``eval()``, ``torch.no_grad``) is the caller's.
    """

    def __init__(
        self,
        mae: MaskedAutoencoderViT,
        feature_module: Optional[FeatureLearningModule] = None,
        pool: Literal["cls", "mean"] = "cls",
        detach_target: bool = True,
    ):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.mae = mae
        self.feature_module = feature_module if feature_module is not None else FeatureLearningModule(mae.embed_dim)
        self.pool, self.detach_target = pool, bool(detach_target)
        self.num_features = mae.embed_dim

    def forward_tokens(
        self, imgs: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None
    ) -> Dict[str, torch.Tensor]:
        """All intermediate tensors: ``f_v``, ``f_e``, ``f_o`` (tokens), ``mask``, ``ids_restore``."""
        f_v, mask, ids_restore = self.mae.forward_encoder(imgs, mask_ratio, generator)  # (N, 1+L_v, D)
        f_e, _, _ = self.mae.forward_encoder(imgs, 0.0)  # (N, 1+L, D), patch order
        f_o = self.feature_module(f_v, f_e)  # (N, 1+L_v, D)
        return {"f_v": f_v, "f_e": f_e, "f_o": f_o, "mask": mask, "ids_restore": ids_restore}

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Teacher features ``(N, D)`` of ``[0, 1]`` images (pooled ``F_o``)."""
        f_o = self.forward_tokens(imgs, mask_ratio, generator)["f_o"]
        return f_o[:, 0] if self.pool == "cls" else f_o[:, 1:].mean(dim=1)

    def mae_loss(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Eq. 4: ``L_mae = MSE(F_o, F_e) + MSE(I_m, P_m)``; returns ``(total, terms)``.

        ``feature_mse``: ``F_e`` is matched to ``F_o``'s shape by taking its [CLS] token and
        gathering its patch tokens at the visible positions in ``F_v``'s (shuffled) order, so
        token ``j`` of ``F_o`` is compared with the whole-image encoding of the same patch
        (detached when ``detach_target``). ``recon``: the decoder is fed ``F_o`` and the MSE of
        :meth:`MaskedAutoencoderViT.forward_loss` is taken over the masked patches. The two
        terms are summed unweighted, as in the paper.
        """
        out = self.forward_tokens(imgs, mask_ratio, generator)
        f_e, f_o, ids_restore = out["f_e"], out["f_o"], out["ids_restore"]
        ids_keep = _ids_keep(ids_restore, f_o.shape[1] - 1)  # (N, L_v)
        target = torch.cat([f_e[:, :1], _gather_tokens(f_e[:, 1:], ids_keep)], dim=1)  # (N, 1+L_v, D)
        if self.detach_target:
            target = target.detach()
        feature_mse = F.mse_loss(f_o, target)
        pred = self.mae.forward_decoder(f_o, ids_restore)  # (N, L, p*p*C)
        recon = self.mae.forward_loss(imgs, pred, out["mask"])
        return feature_mse + recon, {"feature_mse": feature_mse, "recon": recon}


# ------------------------------------------------------------------------------ constructors


def _teacher(num_classes: Optional[int], defaults: dict, kwargs: dict) -> MAETeacher:
    # ``num_classes`` is accepted (and ignored) because generic builders pass it to every
    # registered model; the teacher is a feature extractor without a classifier head.
    del num_classes
    module_kw = {k: kwargs.pop(k) for k in ("fusion", "softmax_dim", "cls_separate") if k in kwargs}
    pool = kwargs.pop("pool", "cls")
    mae = MaskedAutoencoderViT(**{**defaults, **kwargs})
    return MAETeacher(mae, FeatureLearningModule(mae.embed_dim, **module_kw), pool=pool)


@register_model
def mae_vit_base_patch16(
    num_classes: Optional[int] = None, mean: StatsArg = None, std: StatsArg = None, **kwargs
) -> MAETeacher:
    """MACD's teacher at the paper's size: MAE at 224 px, patch 16, encoder 12 x 768 (12 heads),
    decoder 8 x 512 (16 heads), plus the feature-learning module.

    Keywords: any :class:`MaskedAutoencoderViT` argument, ``fusion``/``softmax_dim``/
    ``cls_separate`` (:class:`FeatureLearningModule`) and ``pool`` (:class:`MAETeacher`).
    ``num_classes`` is ignored. Both MAE training stages train (and save) this whole module;
    stage 1 leaves the feature module untouched (its loss does not use it).
    """
    defaults = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                    decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mean=mean, std=std)
    return _teacher(num_classes, defaults, kwargs)


@register_model
def mae_vit_tiny(
    num_classes: Optional[int] = None, mean: StatsArg = None, std: StatsArg = None, **kwargs
) -> MAETeacher:
    """CPU-sized MACD teacher (tests, digits): 32 px, patch 4 (64 patches), encoder 2 x 64
    (4 heads), decoder 1 x 32 (4 heads). Keywords as :func:`mae_vit_base_patch16`."""
    defaults = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, mean=mean, std=std)
    return _teacher(num_classes, defaults, kwargs)


__all__ = [
    "Attention",
    "Block",
    "FeatureLearningModule",
    "MAETeacher",
    "MaskedAutoencoderViT",
    "get_2d_sincos_pos_embed",
    "mae_vit_base_patch16",
    "mae_vit_tiny",
]
