"""Gradient-masking checks (rkd.evaluation.masking_checks): each check on a model built to mask
gradients in the way it detects, the same checks quiet on a plainly trained model, and each
decision on synthetic numbers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rkd.attacks import build_attack
from rkd.config.schema import AttackConfig, MaskingChecksConfig
from rkd.data import build_dataset
from rkd.evaluation.masking_checks import (
    CHECK_NAMES,
    VANISHING_GRADIENT_LINF,
    check_accuracy_falls_with_eps,
    check_accuracy_falls_with_steps,
    check_black_box_beats_white_box,
    check_iterative_beats_single_step,
    check_large_eps_reaches_chance,
    check_restarts_change_result,
    check_transfer_beats_white_box,
    check_vanishing_input_gradients,
    flagged,
    masking_checks,
)
from rkd.evaluation.robust_accuracy import attack_entry, attack_params

N_EVAL = 150  # evaluated images; the probes use the first 100 (MaskingChecksConfig.max_samples)
GRID = [AttackConfig(kind="fgsm", eps=4 / 255), AttackConfig(kind="fgsm", eps=8 / 255),
        AttackConfig(kind="pgd", norm="l2", eps=0.5), AttackConfig(kind="pgd", eps=4 / 255),
        AttackConfig(kind="pgd", eps=8 / 255)]


# ------------------------------------------------------------------------------ the models
def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 128), nn.ReLU(), nn.Linear(128, 10))


def _train(model: nn.Module, x, y, epochs: int = 15, augment=None) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 128):
            j = perm[i:i + 128]
            xb = x[j] if augment is None else augment(x[j])
            opt.zero_grad()
            F.cross_entropy(model(xb), y[j]).backward()
            opt.step()
    return model.eval()


class Saturated(nn.Module):
    """Logits times 1e4: a saturated softmax at T = 1 (defensive distillation's failure mode);
    the cross-entropy's input gradient underflows to exactly zero on confident samples."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) * 1e4


class Binarised(nn.Module):
    """Input binarisation with a zero gradient (x -> [x > 0.5], detach trick) in front of a net
    trained on Bernoulli-binarised images: gradient attacks cannot move, even at huge eps."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x > 0.5).float().detach() + 0 * x)


class RandomResponse(nn.Module):
    """Zero gradient, and a pseudo-random answer (a hash of the input picks the true or a wrong
    class): the outcome of PGD hinges on its random start, so restarts change it."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        z = self.net(x.detach())
        h = torch.frac(torch.sin(x.detach().flatten(1).double().sum(1) * 12.9898) * 43758.5453).abs() < 0.5
        return torch.where(h[:, None], z.roll(1, dims=1), z) + 0 * x.flatten(1).sum(1, keepdim=True)


class GradientOnDataGrid(nn.Module):
    """The plain net's gradient only on images whose pixels lie on the data's 1/1024 grid (the
    clean digits), zero elsewhere: FGSM (from the clean image) works, PGD (from a random start)
    is stuck."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        q = x.detach() * 1024
        on_grid = (((q - q.round()).abs() < 1e-3).float().flatten(1).mean(1) > 0.99).float()[:, None]
        z = self.net(x)
        return z.detach() + on_grid * (z - z.detach())


class _RandomGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.randn_like(g)


class RandomGradient(nn.Module):
    """Shattered gradients: the plain net's forward, a random backward. PGD is a random walk,
    whose fewer, longer steps end farther out than many short ones."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(_RandomGradient.apply(x))


@pytest.fixture(scope="module")
def setup():
    train = build_dataset("digits", train=True)
    test = build_dataset("digits", train=False).subset(range(N_EVAL))
    x, y = train.tensors()
    plain = _train(_mlp(), x, y)
    binarised = Binarised(_train(_mlp(), x, y, augment=torch.bernoulli)).eval()
    return test, plain, binarised


def _evaluate(model, data, grid=GRID):
    """(body, worst_masks, clean_ok) of a white-box grid on ``data``, per example."""
    x, y = data.tensors()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    entries, masks = [], {}
    for a in grid:
        torch.manual_seed(0)
        fn = build_attack(a.kind, **attack_params(a, data))
        with torch.no_grad():
            ok = clean & (model(fn(model, x, y)).argmax(1) == y)
        entries.append(attack_entry(a, ok.float().mean().item(), 0.0))
        masks[(a.norm, a.eps)] = masks.get((a.norm, a.eps), clean) & ok
    return {"attacks": entries, "step_sweep": None, "input_gradient": None}, masks, clean


def _run(model, data, cfg=None, grid=GRID, body=None):
    b, masks, clean = _evaluate(model, data, grid)
    if body is not None:
        b = {**b, **body}
    checks = masking_checks(model, data, b, cfg or MaskingChecksConfig(), worst_masks=masks, clean_ok=clean,
                            device="cpu", batch_size=256, num_classes=10)
    return {c["name"]: c for c in checks}, checks


# --------------------------------------------------------------------- on (masking) models
def test_plain_model_passes_every_check(setup):
    data, plain, _ = setup
    by_name, checks = _run(plain, data)
    assert [c["name"] for c in checks] == list(CHECK_NAMES)
    json.dumps(checks)  # results.json material
    for c in checks:
        assert set(c) == {"name", "status", "evidence", "description", "reference"}
        assert c["description"] and c["reference"]
    assert flagged(checks) == []
    assert {n: c["status"] for n, c in by_name.items()} == {
        **{n: "ok" for n in CHECK_NAMES}, "transfer_beats_white_box": "skipped"}
    assert "reason" in by_name["transfer_beats_white_box"]["evidence"]
    ev = by_name["large_eps_reaches_chance"]["evidence"]
    assert ev["num_samples"] == 100 and ev["accuracy"] <= 0.2
    ev = by_name["black_box_beats_white_box"]["evidence"]["threats"][0]
    assert ev["eps"] == pytest.approx(8 / 255) and ev["attacked"] > 50  # the probe threat: largest Linf ball
    steps = by_name["accuracy_falls_with_steps"]["evidence"]["series"]
    assert [p["steps"] for p in steps[-1]["points"]] == [7, 10, 50] and steps[-1]["source"] == "subset probe"
    assert by_name["vanishing_input_gradients"]["evidence"]["zero_fraction"] == 0


def test_saturated_softmax_flags_vanishing_gradients_and_black_box(setup):
    data, plain, _ = setup
    by_name, checks = _run(Saturated(plain).eval(), data)
    assert {"vanishing_input_gradients", "black_box_beats_white_box"} <= set(flagged(checks))
    ev = by_name["vanishing_input_gradients"]["evidence"]
    assert ev["zero_fraction"] > 0.9 and ev["vanishing_fraction"] >= ev["zero_fraction"]
    bb = by_name["black_box_beats_white_box"]["evidence"]["threats"][0]
    assert bb["broken_only_by_black_box"] > 0.03 * bb["num_samples"]
    assert bb["combined_accuracy"] < bb["white_box_accuracy"] - 0.03


def test_zero_gradient_quantisation_flags_large_eps(setup):
    data, _, binarised = setup
    by_name, checks = _run(binarised, data)
    ev = by_name["large_eps_reaches_chance"]["evidence"]
    assert by_name["large_eps_reaches_chance"]["status"] == "flagged"
    assert ev["accuracy"] > ev["threshold"] == pytest.approx(0.2) and ev["eps"] == 0.5 and ev["steps"] >= 20


def test_random_response_flags_restarts_and_eps(setup):
    data, plain, _ = setup
    by_name, checks = _run(RandomResponse(plain).eval(), data)
    ev = by_name["restarts_change_result"]["evidence"]
    assert by_name["restarts_change_result"]["status"] == "flagged"
    assert ev["restarts"] == 3 and ev["steps"] == 7 and ev["drop"] > 0.03
    # PGD-20 at eps 0.5 leaves more points than the worst case at 8/255: accuracy rose with eps
    eps = by_name["accuracy_falls_with_eps"]
    assert eps["status"] == "flagged"
    assert any(v["eps_high"] == 0.5 for v in eps["evidence"]["violations"])


def test_gradient_off_the_data_flags_fgsm_beating_pgd(setup):
    data, plain, _ = setup
    by_name, checks = _run(GradientOnDataGrid(plain).eval(), data)
    c = by_name["iterative_beats_single_step"]
    assert c["status"] == "flagged"
    worst = max(c["evidence"]["comparisons"], key=lambda x: x["gap"])
    assert worst["source"] == "grid" and worst["gap"] > 0.03 and worst["fgsm_accuracy"] < worst["iterative_accuracy"]


def test_shattered_gradient_flags_steps(setup):
    data, plain, _ = setup
    grid = [AttackConfig(kind="pgd", eps=0.4)]
    cfg = MaskingChecksConfig(black_box_queries=100)
    by_name, _ = _run(RandomGradient(plain).eval(), data, cfg=cfg, grid=grid)
    c = by_name["accuracy_falls_with_steps"]
    assert c["status"] == "flagged"
    probe = [v for v in c["evidence"]["violations"] if v["source"] == "subset probe"]
    assert probe and probe[0]["eps"] == 0.4 and probe[0]["steps_high"] > probe[0]["steps_low"]


def test_constructed_bodies_through_the_entry_point(setup):
    """Grid, sweep and transfer entries come from the body: fake ones reach the decisions."""
    data, plain, _ = setup
    b, masks, clean = _evaluate(plain, data)
    worst = masks[("linf", 8 / 255)].float().mean().item()
    fake = [{"name": "PGD-7 Linf 16/255", "kind": "pgd", "norm": "linf", "eps": 16 / 255, "steps": 7,
             "restarts": 1, "accuracy": 0.99, "protocol": "white-box"},
            {"name": "PGD-20 Linf 8/255 (transfer)", "kind": "pgd", "norm": "linf", "eps": 8 / 255, "steps": 20,
             "accuracy": worst - 0.2, "protocol": "transfer", "source_model": "standard"}]
    body = {**b, "attacks": b["attacks"] + fake,
            "step_sweep": {"norm": "l2", "eps": 0.5, "points": [{"steps": 0, "accuracy": 0.97},
                                                                {"steps": 7, "accuracy": 0.5},
                                                                {"steps": 25, "accuracy": 0.6}]}}
    checks = masking_checks(plain, data, body, MaskingChecksConfig(black_box_queries=50), worst_masks=masks,
                            clean_ok=clean, device="cpu", batch_size=64, num_classes=10)
    by_name = {c["name"]: c for c in checks}
    assert {"accuracy_falls_with_eps", "accuracy_falls_with_steps", "transfer_beats_white_box"} <= set(flagged(checks))
    v = by_name["accuracy_falls_with_eps"]["evidence"]["violations"]
    assert any(x["eps_high"] == pytest.approx(16 / 255) and x["attack"] == "pgd linf steps=7" for x in v)
    v = by_name["accuracy_falls_with_steps"]["evidence"]["violations"]
    assert [(x["source"], x["steps_low"], x["steps_high"]) for x in v] == [("step_sweep", 7, 25)]
    t = by_name["transfer_beats_white_box"]["evidence"]["comparisons"][0]
    assert t["white_box_accuracy"] == pytest.approx(worst) and t["gap"] == pytest.approx(0.2)


def test_fgsm_without_iterative_partner_is_probed(setup):
    data, plain, _ = setup
    grid = [AttackConfig(kind="fgsm", eps=8 / 255)]
    by_name, _ = _run(plain, data, cfg=MaskingChecksConfig(black_box_queries=50), grid=grid)
    c = by_name["iterative_beats_single_step"]
    assert c["status"] == "ok"
    (comp,) = c["evidence"]["comparisons"]
    assert comp["source"] == "subset probe" and comp["iterative_attack"] == "PGD-10 Linf"
    assert comp["iterative_accuracy"] <= comp["fgsm_accuracy"] + 0.03


def test_disabled_mode_and_inputs(setup):
    data, plain, _ = setup
    b, masks, clean = _evaluate(plain, data, grid=[AttackConfig(kind="pgd", eps=8 / 255)])
    off = masking_checks(plain, data, b, MaskingChecksConfig(enabled=False), worst_masks=masks, clean_ok=clean,
                         device="cpu", batch_size=64, num_classes=10)
    assert [c["status"] for c in off] == ["skipped"] * len(CHECK_NAMES)
    with pytest.raises(ValueError, match="fewer examples"):
        masking_checks(plain, data, b, MaskingChecksConfig(), worst_masks=masks, clean_ok=clean[:10],
                       device="cpu", batch_size=64, num_classes=10)
    plain.train()
    try:
        cfg = MaskingChecksConfig(max_samples=20, black_box_queries=20, step_counts=[3])
        runs = [masking_checks(plain, data, b, cfg, worst_masks=masks, clean_ok=clean, device="cpu", batch_size=8,
                               num_classes=10) for _ in range(2)]
        assert plain.training  # mode restored
    finally:
        plain.eval()
    for run in runs:
        for t in run[3]["evidence"]["threats"]:
            t.pop("wall_time_s")
    assert runs[0] == runs[1]  # seeded probes
    assert runs[0][4]["evidence"]["num_samples"] == 20


# ------------------------------------------------------------------------ synthetic numbers
def _e(kind, norm, eps, acc, steps=7, protocol="white-box", name=None):
    return {"name": name or f"{kind} {eps}", "kind": kind, "norm": norm, "eps": eps, "steps": steps,
            "restarts": 1 if kind == "pgd" else None, "accuracy": acc, "protocol": protocol}


def test_eps_check_on_synthetic_entries():
    falling = [_e("pgd", "linf", 2 / 255, 0.8), _e("pgd", "linf", 4 / 255, 0.6), _e("pgd", "linf", 8 / 255, 0.4)]
    assert check_accuracy_falls_with_eps(falling, {}, 0.03)["status"] == "ok"
    noisy = falling + [_e("pgd", "linf", 16 / 255, 0.42)]  # +0.02: within tolerance
    assert check_accuracy_falls_with_eps(noisy, {}, 0.03)["status"] == "ok"
    rising = falling + [_e("pgd", "linf", 16 / 255, 0.5)]
    c = check_accuracy_falls_with_eps(rising, {}, 0.03)
    assert c["status"] == "flagged"
    (v,) = c["evidence"]["violations"]
    assert v["eps_low"] == 8 / 255 and v["eps_high"] == 16 / 255 and v["rise"] == pytest.approx(0.1)
    # different kinds or steps are different series; one eps per series: nothing to compare
    mixed = [_e("pgd", "linf", 8 / 255, 0.2), _e("pgd", "linf", 16 / 255, 0.5, steps=20), _e("fgsm", "linf", 4 / 255,
                                                                                              0.1, steps=1)]
    assert check_accuracy_falls_with_eps(mixed, {}, 0.03)["status"] == "skipped"
    # the worst case series and the large-eps probe
    c = check_accuracy_falls_with_eps([], {("l2", 0.25): 0.5, ("l2", 0.5): 0.7}, 0.03)
    assert c["status"] == "flagged" and c["evidence"]["violations"][0]["attack"] == "white-box worst case"
    probe = {"eps": 0.5, "steps": 20, "accuracy": 0.5, "num_samples": 100, "subset_worst_case": {8 / 255: 0.3}}
    assert check_accuracy_falls_with_eps([], {}, 0.03, large_eps=probe)["status"] == "flagged"
    assert check_accuracy_falls_with_eps([], {}, 0.03, large_eps={**probe, "accuracy": 0.0})["status"] == "ok"


def test_steps_check_on_synthetic_series():
    s = {"source": "grid", "norm": "linf", "eps": 8 / 255}
    pts = [{"steps": 7, "accuracy": 0.5}, {"steps": 20, "accuracy": 0.45}, {"steps": 100, "accuracy": 0.44}]
    assert check_accuracy_falls_with_steps([{**s, "points": pts}], 0.03)["status"] == "ok"
    up = pts + [{"steps": 200, "accuracy": 0.6}]
    c = check_accuracy_falls_with_steps([{**s, "points": up}], 0.03)
    assert c["status"] == "flagged" and c["evidence"]["violations"][0]["steps_low"] == 100
    assert check_accuracy_falls_with_steps([{**s, "points": pts[:1]}], 0.03)["status"] == "skipped"


def test_iterative_check_on_synthetic_entries():
    ok = [_e("fgsm", "linf", 8 / 255, 0.6, steps=1), _e("pgd", "linf", 8 / 255, 0.5)]
    c = check_iterative_beats_single_step(ok, 0.03)
    assert c["status"] == "ok" and c["evidence"]["comparisons"][0]["gap"] == pytest.approx(-0.1)
    masked = [_e("fgsm", "linf", 8 / 255, 0.3, steps=1), _e("pgd", "linf", 8 / 255, 0.6),
              _e("autoattack", "linf", 8 / 255, 0.5, steps=None), _e("pgd", "linf", 4 / 255, 0.1)]
    c = check_iterative_beats_single_step(masked, 0.03)
    (comp,) = c["evidence"]["comparisons"]
    assert c["status"] == "flagged" and comp["iterative_accuracy"] == 0.5 and comp["gap"] == pytest.approx(0.2)
    assert check_iterative_beats_single_step(masked[1:], 0.03)["status"] == "skipped"  # no FGSM
    probe = {"eps": 8 / 255, "fgsm_accuracy": 0.1, "iterative_accuracy": 0.5, "iterative_attack": "PGD-10 Linf",
             "num_samples": 100}
    assert check_iterative_beats_single_step([], 0.03, [probe])["status"] == "flagged"


def test_black_box_check_counts_points_against_tolerance():
    r = {"norm": "linf", "eps": 8 / 255, "num_samples": 100, "white_box_accuracy": 0.6}
    assert check_black_box_beats_white_box([{**r, "broken_only_by_black_box": 3}], 0.03)["status"] == "ok"
    c = check_black_box_beats_white_box([{**r, "broken_only_by_black_box": 4}], 0.03)
    assert c["status"] == "flagged" and c["evidence"]["threats"][0]["combined_accuracy"] == pytest.approx(0.56)
    assert check_black_box_beats_white_box([], 0.03)["status"] == "skipped"


def test_large_eps_check_threshold():
    kw = dict(eps=0.5, steps=20, num_samples=100, num_classes=10, chance_margin=0.1)
    assert check_large_eps_reaches_chance(0.2, **kw)["status"] == "ok"
    c = check_large_eps_reaches_chance(0.25, **kw)
    assert c["status"] == "flagged" and c["evidence"]["chance"] == pytest.approx(0.1)


def test_vanishing_gradient_check_threshold():
    assert 1e-35 < VANISHING_GRADIENT_LINF < 1e-25
    g = torch.tensor([0.0, 1e-35, 1e-3, 1e-2, 1e-1, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    c = check_vanishing_input_gradients(g, 0.1)
    assert c["status"] == "flagged"
    assert c["evidence"]["zero_fraction"] == pytest.approx(0.1) and c["evidence"]["vanishing_fraction"] == 0.2
    assert check_vanishing_input_gradients(g[1:], 0.2)["status"] == "ok"  # 1/9 vanishing <= 0.2
    assert check_vanishing_input_gradients(g[:0], 0.1)["status"] == "skipped"


def test_transfer_check_on_synthetic_entries():
    wb = [_e("pgd", "linf", 8 / 255, 0.5)]
    tr = [_e("pgd", "linf", 8 / 255, 0.3, steps=20, protocol="transfer"),
          _e("pgd", "linf", 16 / 255, 0.0, steps=20, protocol="transfer", name="far")]
    c = check_transfer_beats_white_box(wb + tr, {("linf", 8 / 255): 0.45}, 0.03)
    assert c["status"] == "flagged" and c["evidence"]["uncompared"] == ["far"]
    assert c["evidence"]["comparisons"][0]["white_box_accuracy"] == 0.45
    c = check_transfer_beats_white_box(wb + tr[:1], {}, 0.03)  # no worst case: the lowest white-box entry
    assert c["status"] == "flagged" and c["evidence"]["comparisons"][0]["white_box_accuracy"] == 0.5
    assert check_transfer_beats_white_box(wb + tr[:1], {("linf", 8 / 255): 0.31}, 0.03)["status"] == "ok"
    assert check_transfer_beats_white_box(wb, {}, 0.03)["status"] == "skipped"
    assert check_transfer_beats_white_box(wb + tr[1:], {}, 0.03)["status"] == "skipped"


def test_restarts_check_threshold():
    kw = dict(restarts=3, steps=7, norm="linf", eps=8 / 255, num_samples=100, tolerance=0.03)
    assert check_restarts_change_result(0.5, 0.48, **kw)["status"] == "ok"
    c = check_restarts_change_result(0.5, 0.4, **kw)
    assert c["status"] == "flagged" and c["evidence"]["drop"] == pytest.approx(0.1)


def test_flagged_names():
    checks = [{"name": "a", "status": "ok"}, {"name": "b", "status": "flagged"}, {"name": "c", "status": "skipped"}]
    assert flagged(checks) == ["b"]
