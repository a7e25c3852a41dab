"""MAE (MACD stage 1): patches, masking, encoder/decoder shapes, loss, feature module, teacher."""

from __future__ import annotations

import pytest
import torch

from rkd.models import create_model, list_models
from rkd.models.mae import FeatureLearningModule, MAETeacher, MaskedAutoencoderViT, get_2d_sincos_pos_embed


def _tiny(img_size: int = 32, patch_size: int = 4, **kw) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(img_size=img_size, patch_size=patch_size, embed_dim=32, depth=1, num_heads=4,
                                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=4, **kw)


@pytest.fixture
def mae():
    return _tiny()


@pytest.fixture
def imgs():
    torch.manual_seed(1)
    return torch.rand(3, 3, 32, 32)


def test_patchify_shape_and_exact_roundtrip(mae, imgs):
    x = mae.patchify(imgs)
    assert x.shape == (3, (32 // 4) * (32 // 4), 4 * 4 * 3)
    assert torch.equal(mae.unpatchify(x), imgs)
    # patch 0 is the top-left p x p block, pixels laid out (p, p, C)
    assert torch.equal(x[0, 0], imgs[0, :, :4, :4].permute(1, 2, 0).reshape(-1))
    # patch 1 is its right neighbour (raster order)
    assert torch.equal(x[0, 1], imgs[0, :, :4, 4:8].permute(1, 2, 0).reshape(-1))


@pytest.mark.parametrize("num_patches,ratio", [(64, 0.75), (64, 0.85), (49, 0.7), (49, 0.85), (64, 0.0)])
def test_random_masking_counts_and_gather(mae, num_patches, ratio):
    torch.manual_seed(2)
    x = torch.randn(6, num_patches, 5)
    x_vis, mask, ids_restore = mae.random_masking(x, ratio)
    n_masked = round(ratio * num_patches)
    assert mask.shape == (6, num_patches)
    assert torch.equal(mask.sum(dim=1), torch.full((6,), float(n_masked)))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert x_vis.shape == (6, num_patches - n_masked, 5)
    for i in range(6):
        visible = x[i][mask[i] == 0]  # in patch order
        # same set of rows; order in x_vis is the shuffled one, so sort by first feature
        key = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731
        assert torch.equal(key(x_vis[i]), key(visible))
        assert torch.equal(torch.sort(ids_restore[i]).values, torch.arange(num_patches))
    if 0 < ratio:
        assert len({tuple(m.tolist()) for m in mask}) > 1  # different samples, different masks


def test_random_masking_generator_reproducible(mae):
    x = torch.randn(4, 64, 8)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = mae.random_masking(x, 0.75, generator=g1)
    b = mae.random_masking(x, 0.75, generator=g2)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    c = mae.random_masking(x, 0.75, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a[1], c[1])


def test_random_masking_rejects_bad_ratio(mae):
    with pytest.raises(ValueError):
        mae.random_masking(torch.randn(1, 4, 2), 1.0)


@pytest.mark.parametrize("ratio", [0.0, 0.75, 0.85])
def test_forward_encoder_token_count(mae, imgs, ratio):
    latent, mask, ids_restore = mae.forward_encoder(imgs, ratio)
    num = mae.num_patches
    assert latent.shape == (3, 1 + num - round(ratio * num), 32)
    assert mask.shape == ids_restore.shape == (3, num)
    if ratio == 0:
        assert torch.equal(ids_restore, torch.arange(num).expand(3, num))
        assert mask.sum() == 0


def test_forward_encoder_odd_patch_count(imgs):
    mae = _tiny(img_size=28, patch_size=4)  # 49 patches
    latent, mask, _ = mae.forward_encoder(imgs[:, :, :28, :28], 0.7)
    assert latent.shape == (3, 1 + 49 - 34, 32)
    assert mask.sum(dim=1).tolist() == [34.0] * 3


def test_sincos_pos_embed():
    emb = get_2d_sincos_pos_embed(16, 4, cls_token=True)
    assert emb.shape == (17, 16)
    assert torch.all(emb[0] == 0)
    assert len({tuple(r.tolist()) for r in emb[1:]}) == 16  # all positions distinct


def test_decoder_shape_loss_and_grads(mae, imgs):
    latent, mask, ids_restore = mae.forward_encoder(imgs, 0.75)
    pred = mae.forward_decoder(latent, ids_restore)
    assert pred.shape == (3, mae.num_patches, 4 * 4 * 3)
    loss, pred2, mask2 = mae(imgs, mask_ratio=0.75)
    assert torch.isfinite(loss) and loss > 0
    assert pred2.shape == pred.shape and mask2.shape == mask.shape
    loss.backward()
    for p in (mae.patch_embed.weight, mae.cls_token, mae.blocks[0].attn.qkv.weight, mae.decoder_embed.weight,
              mae.decoder_blocks[0].mlp[0].weight, mae.decoder_pred.weight, mae.mask_token):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_counts_only_masked_patches(imgs, norm_pix):
    mae = _tiny(norm_pix_loss=norm_pix)
    with torch.no_grad():
        _, pred, mask = mae(imgs, 0.75, generator=torch.Generator().manual_seed(0))
        base = mae.forward_loss(imgs, pred, mask)
        changed = pred + 5.0 * (1 - mask).unsqueeze(-1)  # perturb visible patches only
        assert torch.allclose(mae.forward_loss(imgs, changed, mask), base)
        changed = pred + 5.0 * mask.unsqueeze(-1)  # perturb masked patches
        assert not torch.allclose(mae.forward_loss(imgs, changed, mask), base)
        # perfect prediction of the (normalised) target on masked patches -> zero loss
        if not norm_pix:
            target = mae.patchify(mae.normalize(imgs))
            perfect = torch.where(mask.bool().unsqueeze(-1), target, pred)
            assert mae.forward_loss(imgs, perfect, mask).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("fusion", ["add", "concat_linear"])
@pytest.mark.parametrize("cls_separate", [False, True])
def test_feature_module_shapes(fusion, cls_separate):
    torch.manual_seed(3)
    fm = FeatureLearningModule(8, fusion=fusion, cls_separate=cls_separate)
    f_v, f_e = torch.randn(2, 1 + 5, 8), torch.randn(2, 1 + 20, 8)
    f_o = fm(f_v, f_e)
    assert f_o.shape == f_v.shape
    a = fm.attention(f_v, f_e)
    assert a.shape == f_v.shape
    assert torch.allclose(a.sum(dim=-1), torch.ones(2, 6))  # softmax over the channel axis
    if fusion == "add":
        assert torch.allclose(f_o, f_v + a * f_v)
    if cls_separate:  # [CLS] of F_e is matched with [CLS] of F_v
        assert torch.allclose(a[:, 0], f_e[:, 0].softmax(-1))


def test_feature_module_options():
    torch.manual_seed(4)
    f_v, f_e = torch.randn(2, 4, 6), torch.randn(2, 12, 6)
    fm = FeatureLearningModule(6, softmax_dim="token")
    assert torch.allclose(fm.attention(f_v, f_e).sum(dim=1), torch.ones(2, 6))
    # adaptive pooling of 12 tokens to 4 = means of consecutive triples
    pooled = FeatureLearningModule(6).pool(f_e, 4)
    assert torch.allclose(pooled, f_e.reshape(2, 4, 3, 6).mean(dim=2))
    # concat_linear starts as the identity on F_v
    assert torch.allclose(FeatureLearningModule(6, fusion="concat_linear")(f_v, f_e), f_v, atol=1e-6)
    with pytest.raises(ValueError):
        FeatureLearningModule(6, fusion="mul")
    with pytest.raises(ValueError):
        FeatureLearningModule(6, softmax_dim="batch")


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_teacher_forward_and_mae_loss(mae, imgs, pool):
    teacher = MAETeacher(mae, FeatureLearningModule(32, fusion="concat_linear"), pool=pool)
    feats = teacher(imgs, mask_ratio=0.75)
    assert feats.shape == (3, 32)
    total, terms = teacher.mae_loss(imgs, mask_ratio=0.85, generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"feature_mse", "recon"}
    assert torch.isfinite(total)
    assert torch.allclose(total, terms["feature_mse"] + terms["recon"])
    total.backward()
    assert teacher.feature_module.proj.weight.grad is not None
    assert mae.mask_token.grad is not None and mae.patch_embed.weight.grad is not None


def test_teacher_feature_target_matches_visible_positions(imgs):
    # With F_o == F_v (identity fusion) the feature term compares each visible token with the
    # whole-image encoding of the same patch; a 0-block encoder makes those equal up to the
    # final LayerNorm of the token itself, so feature_mse must be ~0.
    mae = MaskedAutoencoderViT(img_size=32, patch_size=4, embed_dim=16, depth=0, num_heads=4,
                               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=4)
    teacher = MAETeacher(mae, FeatureLearningModule(16, fusion="concat_linear"))
    with torch.no_grad():
        _, terms = teacher.mae_loss(imgs, 0.75)
    assert terms["feature_mse"].item() < 1e-10


def test_registered_constructors():
    assert {"mae_vit_base_patch16", "mae_vit_tiny"} <= set(list_models())
    t = create_model("mae_vit_tiny", num_classes=10, mean="cifar100")  # num_classes is ignored
    assert isinstance(t, MAETeacher) and t.feature_module.fusion == "add" and t.pool == "cls"
    m = t.mae
    assert (m.img_size, m.patch_size, m.embed_dim, len(m.blocks)) == (32, 4, 64, 2)
    assert (m.decoder_embed_dim, len(m.decoder_blocks)) == (32, 1)
    loss, pred, mask = m(torch.rand(2, 3, 32, 32))
    assert torch.isfinite(loss) and pred.shape == (2, 64, 48)
    with torch.device("meta"):  # the paper's size, without allocating weights
        big = create_model("mae_vit_base_patch16", fusion="concat_linear", pool="mean").mae
    assert (big.num_patches, big.embed_dim, len(big.blocks), len(big.decoder_blocks)) == (196, 768, 12, 8)
    assert create_model("mae_vit_tiny", depth=3).mae.blocks.__len__() == 3


def test_model_config_accepts_mae():
    from rkd.config.checks import architecture_problem
    from rkd.config.schema import ModelConfig

    assert ModelConfig(arch="mae_vit_tiny").arch == "mae_vit_tiny"
    assert len(ModelConfig(arch="mae_vit_tiny", depth=1).kwargs()) == 1
    assert architecture_problem(ModelConfig(arch="mae_vit_tiny")) is None
    assert architecture_problem(ModelConfig(arch="mae_vit_tiny", width=8))[0] == "model.width"
