"""Robust-accuracy grid, step sweep, results.json schema and tables."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rkd.config import load_config
from rkd.data import make_synthetic
from rkd.evaluation import (
    comparison_table,
    distillation_table,
    evaluate,
    make_results,
    read_results,
    results_markdown,
    write_results,
)

#: the grid alone: the worst case and the masking checks have their own tests
GRID_ONLY = ["eval.worst_case.enabled=false", "eval.checks.enabled=false"]


def _trained_linear(train):
    torch.manual_seed(0)
    x, y = train.tensors()
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), train.num_classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    train = make_synthetic(True, n_train=200, seed=1)
    test = make_synthetic(False, n_test=100, seed=1)
    return _trained_linear(train), test


def test_grid_entries_and_monotone_in_eps(setup):
    model, test = setup
    cfg = load_config(None, ["eval.step_sweep={norm: linf, eps: 8/255, steps: [0, 1, 5]}", *GRID_ONLY]).eval
    res = evaluate(model, test, cfg, device="cpu", batch_size=64)
    assert res["num_samples"] == 100
    names = [a["name"] for a in res["attacks"]]
    assert names == [a.label for a in cfg.attacks]
    acc = {a["name"]: a["accuracy"] for a in res["attacks"]}
    assert res["clean_accuracy"] > 0.8
    assert acc["FGSM 8/255"] <= acc["FGSM 4/255"] <= res["clean_accuracy"]
    assert acc["PGD-7 Linf 8/255"] <= acc["PGD-7 Linf 4/255"]
    assert acc["PGD-7 L2 0.5"] <= acc["PGD-7 L2 0.25"]
    for a in res["attacks"]:
        assert a["protocol"] == "white-box" and a["wall_time_s"] >= 0
    pts = res["step_sweep"]["points"]
    assert [p["steps"] for p in pts] == [0, 1, 5]
    assert pts[0]["accuracy"] == pytest.approx(res["clean_accuracy"])  # 0 steps = clean
    assert pts[2]["accuracy"] <= pts[0]["accuracy"]


def test_evaluation_reports_each_part_as_it_ends(setup):
    model, test = setup
    cfg = load_config(None, ["eval.max_samples=20", "eval.attacks=[{kind: fgsm, eps: 8/255}]",
                             "eval.worst_case.suite=fast", "eval.worst_case.threats=[{norm: linf, eps: 8/255}]",
                             "eval.checks.max_samples=10", "eval.checks.black_box_queries=5"]).eval
    lines: list[str] = []
    res = evaluate(model, test, cfg, device="cpu", log=lines.append)
    laps = [line for line in lines if not line.startswith("eval: evaluating ")]  # (those: the next test)
    assert [line.split(":")[1].split()[0] for line in laps] == ["clean", "worst", "masking"]
    assert all(line.startswith("eval: ") and line.endswith(" s)") for line in laps)
    assert f"{res['clean_accuracy']:.1%}" in laps[0] and f"{res['worst_case'][0]['accuracy']:.1%}" in laps[1]
    assert lines[-2] == "eval: evaluating masking checks (probes on up to 10 images) ..."


def test_eps_zero_gives_clean_accuracy(setup):
    model, test = setup
    cfg = load_config(None, ["eval.attacks=[{kind: pgd, eps: 0}, {kind: fgsm, eps: 0}]"]).eval
    res = evaluate(model, test, cfg, device="cpu")
    for a in res["attacks"]:
        assert a["accuracy"] == res["clean_accuracy"]


def test_max_samples_is_a_deterministic_prefix(setup):
    model, test = setup
    cfg = load_config(None, ["eval.max_samples=10", "eval.attacks=[]"]).eval
    res = evaluate(model, test, cfg, device="cpu")
    x, y = test.tensors()
    expected = (model(x[:10]).argmax(1) == y[:10]).float().mean().item()
    assert res["num_samples"] == 10 and res["clean_accuracy"] == pytest.approx(expected)


def test_results_file_roundtrip_and_tables(tmp_path, setup):
    model, test = setup
    cfg = load_config(None, ["eval.max_samples=20"]).eval
    res = make_results(evaluate(model, test, cfg, device="cpu"), run={"name": "r", "method": "standard"},
                       train_wall_time_s=12.5)
    js, md = write_results(res, tmp_path)
    back = read_results(js)
    assert back == json.loads(json.dumps(res))
    assert back["schema"] == "rkd.results/1"
    for key in ("clean_accuracy", "attacks", "train_wall_time_s", "eval_wall_time_s", "num_samples"):
        assert key in back
    for a in back["attacks"]:
        assert {"name", "norm", "eps", "steps", "protocol", "accuracy"} <= a.keys()
    table = comparison_table([("A", res), ("B", res)])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | clean | worst case Linf 4/255 | worst case Linf 8/255 | worst case L2 0.25 "
                               "| worst case L2 0.5 | FGSM 4/255")  # the headline worst cases first
    assert "| masking flags |" in lines[0]
    assert lines[0].endswith("| train time |") and len(lines) == 4
    assert f"{100 * res['clean_accuracy']:.2f}" in lines[2]
    assert "FGSM 8/255" in md.read_text()
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not an rkd results file"):
        read_results(tmp_path / "other.json")


def test_every_attack_kind_runs_from_config(setup):
    model, test = setup
    grid = ("eval.attacks=[{kind: mifgsm, eps: 8/255, steps: 3}, {kind: cw, steps: 5}, "
            "{kind: autoattack, norm: l2, eps: 0.5, version: standard}, {kind: jitter, eps: 8/255, steps: 3}, "
            "{kind: square, norm: linf, eps: 8/255, n_queries: 20}, {kind: pgd, eps: 8/255, steps: 3, restarts: 2}]")
    cfg = load_config(None, [grid, "eval.max_samples=8"]).eval
    res = evaluate(model, test, cfg, device="cpu")
    assert [a["kind"] for a in res["attacks"]] == ["mifgsm", "cw", "autoattack", "jitter", "square", "pgd"]
    for a in res["attacks"]:
        assert 0.0 <= a["accuracy"] <= res["clean_accuracy"]


class _FlipWrongToRight(nn.Module):
    """Predicts class 0 for clean images and the true class once an attack perturbed them;
    labels are all 1, so clean accuracy is 0 and a 'repairing' attack must not count."""

    def forward(self, x):
        perturbed = (x.flatten(1) % (1 / 64)).abs().sum(1) > 0  # clean test pixels are multiples of 1/64
        logits = torch.zeros(x.shape[0], 2)
        logits[perturbed, 1] = 1.0
        logits[~perturbed, 0] = 1.0
        return logits


def test_a_sample_wrong_on_clean_input_never_counts_as_robust():
    from rkd.evaluation import accuracy

    x = torch.full((4, 3, 4, 4), 0.5)
    y = torch.ones(4, dtype=torch.long)
    loader = [(x, y)]
    model = _FlipWrongToRight()
    assert accuracy(model, loader, "cpu") == 0.0
    nudge = lambda m, x, y: (x + 0.001).clamp(0, 1)  # noqa: E731 - "repairs" every prediction
    assert (model(nudge(model, x, y)).argmax(1) == y).all()
    assert accuracy(model, loader, "cpu", nudge) == 0.0


def test_evaluation_runs_in_eval_mode_and_restores_mode():
    test = make_synthetic(False, n_test=64, seed=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Dropout(0.5), nn.LazyLinear(10))
    model(torch.rand(2, 3, 32, 32))
    model.train()
    cfg = load_config(None, ["eval.attacks=[{kind: pgd, eps: 2/255, steps: 2}]"]).eval
    first = evaluate(model, test, cfg, device="cpu")
    second = evaluate(model, test, cfg, device="cpu")
    assert model.training  # restored
    assert first["clean_accuracy"] == second["clean_accuracy"]  # dropout off, BN statistics frozen
    assert first["attacks"][0]["accuracy"] == second["attacks"][0]["accuracy"]
    assert first["attacks"][0]["step_size"] == pytest.approx(2.5 * (2 / 255) / 2)
    assert first["attacks"][0]["params"]["random_start"] is True


class _ScaledLogits(nn.Module):
    """``model``'s logits times ``scale``: a huge scale saturates the softmax at T = 1 like a
    defensively distilled network (same predictions, gradients underflow)."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.model(x) * self.scale


@pytest.fixture(scope="module")
def small_setup():
    """1x8x8 images (64 features: JSMA takes milliseconds) noisy enough that some are misclassified."""
    kw = dict(image_size=8, channels=1, noise=0.5, seed=3)
    train = make_synthetic(True, n_train=200, **kw)
    test = make_synthetic(False, n_test=40, **kw)
    return _trained_linear(train), test


def test_jsma_attacks_the_correctly_classified_prefix(small_setup):
    model, test = small_setup
    cfg = load_config(None, ["eval.attacks=[]", "eval.jsma={max_samples: 20}"]).eval
    res = evaluate(model, test, cfg, device="cpu")
    x, y = test.tensors()
    correct = int((model(x[:20]).argmax(1) == y[:20]).sum())
    assert 0 < correct < 20  # the filter matters
    assert [e["saliency"] for e in res["jsma"]] == ["probabilities", "logits"]
    for e in res["jsma"]:
        assert 0.0 <= e["success_rate"] <= 1.0
        assert e["num_samples"] == correct and e["num_pairs"] == correct  # one random target each
        assert e["targets"] == "random" and e["theta"] == 1.0 and e["gamma"] == pytest.approx(0.145)
        assert e["mean_changed_fraction"] is None or 0 < e["mean_changed_fraction"] <= 0.145
        assert e["wall_time_s"] >= 0
    assert res["input_gradient"] is None

    cfg = load_config(None, ["eval.attacks=[]", "eval.jsma={max_samples: 20, targets: all, saliency: [logits]}"]).eval
    (e,) = evaluate(model, test, cfg, device="cpu")["jsma"]
    assert e["saliency"] == "logits" and e["num_pairs"] == correct * (test.num_classes - 1)


def test_saturated_softmax_zeroes_input_gradient_and_probability_jsma(small_setup):
    model, test = small_setup
    cfg = load_config(None, ["eval.attacks=[]", "eval.input_gradient=true",
                             "eval.jsma={max_samples: 20}"]).eval
    model.zero_grad(set_to_none=True)
    plain = evaluate(model, test, cfg, device="cpu")
    saturated = _ScaledLogits(model, 1e4).train()
    sat = evaluate(saturated, test, cfg, device="cpu")
    assert saturated.training  # restored
    assert all(p.grad is None for p in model.parameters())
    g, gs = plain["input_gradient"], sat["input_gradient"]
    assert g["num_samples"] == gs["num_samples"] == 40
    assert g["zero_fraction"] == 0 and g["l2_mean"] > 0
    assert g["linf_mean"] <= g["l2_mean"] <= g["l1_mean"]
    assert g["l2_median"] > 0
    # correctly classified samples (all but the closest calls) get an exactly zero gradient
    assert sat["clean_accuracy"] - 0.1 <= gs["zero_fraction"] <= sat["clean_accuracy"]
    assert gs["zero_fraction"] > 0
    # the median sees the vanishing gradients that the mean (dominated by the misclassified) hides
    assert gs["l2_median"] == 0 if gs["zero_fraction"] > 0.5 else gs["l2_median"] > 0
    rate = {e["saliency"]: e["success_rate"] for e in sat["jsma"]}
    assert rate["probabilities"] == 0.0  # no saliency pair: the defence "works"...
    assert rate["logits"] == {e["saliency"]: e["success_rate"] for e in plain["jsma"]}["logits"]  # ...not really


def test_distillation_table_and_markdown(tmp_path, small_setup):
    model, test = small_setup
    cfg = load_config(None, ["eval.attacks=[{kind: fgsm, eps: 8/255}, {kind: cw, steps: 3}]",
                             "eval.input_gradient=true", "eval.jsma={max_samples: 10}"]).eval
    res = make_results(evaluate(model, test, cfg, device="cpu"), run={"name": "d", "method": "distill"},
                       train_wall_time_s=None)
    js, _ = write_results(res, tmp_path)
    assert read_results(js) == json.loads(json.dumps(res))  # plain JSON: no NaN, no tensors
    old = {k: v for k, v in res.items() if k not in ("jsma", "input_gradient")}  # a results.json from before
    table = distillation_table([("distilled", res), ("old", old)])
    head, _, row, old_row = table.strip().splitlines()
    assert head == ("| method | clean | FGSM 8/255 | CW | JSMA success (probabilities) | JSMA success (logits) "
                    "| input grad L2 (mean) | input grad L2 (median) | zero input grad |")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "distilled" and cells[2] == f"{100 * res['attacks'][0]['accuracy']:.2f}"
    assert cells[3] == f"{100 * res['attacks'][1]['accuracy']:.2f}"
    assert cells[4] == f"{100 * res['jsma'][0]['success_rate']:.2f}"
    assert cells[6] == f"{res['input_gradient']['l2_mean']:.2e}" and "e" in cells[6]
    assert cells[7] == f"{res['input_gradient']['l2_median']:.2e}"
    assert [c.strip() for c in old_row.strip("|").split("|")][4:] == ["", "", "", "", ""]
    md = results_markdown(res)
    assert "JSMA" in md and "| probabilities |" in md and "| logits |" in md and "Input gradient" in md
    md_old = results_markdown(old)
    assert "JSMA" not in md_old and "Input gradient" not in md_old and "FGSM 8/255" in md_old


def test_transfer_protocol_attacks_the_source_and_classifies_with_the_model(tmp_path, setup):
    """The published MACD protocol: examples made against the source; a model equal to the
    source is as weak as white-box, an unrelated model is barely touched; entries are labelled."""
    source, test = setup
    other = _trained_linear(make_synthetic(True, n_train=200, seed=7))  # a different model, same task
    cfg = load_config(None, ["eval.attacks=[{kind: pgd, eps: 8/255, steps: 5}]", *GRID_ONLY,
                             "eval.transfer={source: {run_dir: unused}, attacks: [{kind: pgd, eps: 8/255, steps: 5}, "
                             "{kind: fgsm, eps: 8/255}], cache_dir: " + str(tmp_path / "adv") + "}"]).eval
    with pytest.raises(ValueError, match="source"):
        evaluate(source, test, cfg, device="cpu")
    same = evaluate(source, test, cfg, device="cpu", source=source, source_label="std")
    entries = {(a["name"], a["protocol"]): a for a in same["attacks"]}
    assert set(entries) == {("PGD-5 Linf 8/255", "white-box"), ("PGD-5 Linf 8/255", "transfer"),
                            ("FGSM 8/255", "transfer")}
    t = entries[("PGD-5 Linf 8/255", "transfer")]
    assert t["source_model"] == "std" and t["params"]["attack"] == "pgd"
    # against itself, the transfer examples are the white-box ones (same seed, same attack)
    assert t["accuracy"] == pytest.approx(entries[("PGD-5 Linf 8/255", "white-box")]["accuracy"])
    cached = sorted(p.name for p in (tmp_path / "adv").iterdir() if not p.name.startswith("."))
    assert len(cached) == 2  # one entry per transfer attack
    res = evaluate(other, test, cfg, device="cpu", source=source, source_label="std")
    acc = {(a["name"], a["protocol"]): a["accuracy"] for a in res["attacks"]}
    assert sorted(p.name for p in (tmp_path / "adv").iterdir() if not p.name.startswith(".")) == cached  # reused
    assert acc[("PGD-5 Linf 8/255", "transfer")] > acc[("PGD-5 Linf 8/255", "white-box")]
    assert acc[("PGD-5 Linf 8/255", "transfer")] <= res["clean_accuracy"]
    table = comparison_table([("std", same), ("other", res)])
    assert "PGD-5 Linf 8/255 (transfer)" in table and "PGD-5 Linf 8/255 (white-box)" in table


def test_evaluate_says_which_attack_runs_before_each_one(setup):
    """``eval: evaluating <attack> ...`` before each grid attack, each worst-case cascade attack
    and each optional part, in order, one line each; the lap lines stay."""
    model, test = setup
    grid = ["{kind: fgsm, eps: 0.1}", "{kind: pgd, eps: 0.1, steps: 2, random_start: false}"]
    cfg = load_config(None, [f"eval.attacks=[{', '.join(grid)}]", "eval.max_samples=16",
                             "eval.worst_case.suite=[{kind: pgd, steps: 3, random_start: false}]",
                             "eval.step_sweep={norm: linf, eps: 0.1, steps: [0, 2]}", "eval.input_gradient=true",
                             "eval.checks.enabled=false"]).eval
    lines: list[str] = []
    res = evaluate(model, test, cfg, device="cpu", batch_size=8, log=lines.append)
    said = [line.removeprefix("eval: evaluating ").removesuffix(" ...") for line in lines
            if line.startswith("eval: evaluating ")]
    cascade = [c["name"] for w in res["worst_case"] for c in w["cascade"] if c["ran_on"]]
    assert cascade and len(said) == len(cfg.attacks) + len(cascade) + 2
    assert said[:len(cfg.attacks)] == [a.label for a in cfg.attacks]
    assert [s.split(" (worst-case cascade")[0] for s in said[len(cfg.attacks):-2]] == cascade
    assert said[-2:] == ["PGD step sweep linf 0.1 (steps 0, 2)", "input gradients"]
    laps = [i for i, line in enumerate(lines) if not line.startswith("eval: evaluating ")]
    assert [lines[i].split(" ")[1] for i in laps] == ["clean", "worst", "step"]
    assert laps[0] == len(cfg.attacks)  # the grid's lap line comes after its attacks' lines


def test_evaluate_without_log_says_nothing(setup, capsys):
    model, test = setup
    cfg = load_config(None, ["eval.attacks=[{kind: fgsm, eps: 0.1}]", "eval.max_samples=8", *GRID_ONLY]).eval
    evaluate(model, test, cfg, device="cpu", batch_size=8)
    assert capsys.readouterr() == ("", "")
