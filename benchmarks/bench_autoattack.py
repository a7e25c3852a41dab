"""rkd's reference worst case (suite ``autoattack``) vs torchattacks' AutoAttack, configured alike.

Both run the reference AutoAttack "standard" set as a cascade -- each attack only on the points
every earlier one left robust -- on the same model and the first ``--n`` test images:
APGD-CE and APGD-T (9 target classes), FAB-T (9 targets), 100 iterations each, then Square
with 5000 queries. rkd: :func:`rkd.evaluation.robust_accuracy.worst_case` with
``eval.worst_case.suite: autoattack`` and no grid (its own APGD, :mod:`rkd.attacks.apgd`; FAB
and Square are torchattacks' behind rkd's wrappers). torchattacks 3.3.0: ``MultiAttack`` of
``APGD``, ``APGDT``, ``FAB`` and ``Square`` with those settings (``torchattacks.AutoAttack``
itself cannot be: its APGD, APGD-T and FAB run 10 iterations and APGD-T all n-1 targets).

rkd runs, as ``rkd eval`` does, on :func:`rkd.models.inference.inference_copy` of the model (batch
norms folded into the convolutions, no parameter gradients). torchattacks runs twice: on the
model as given (eval mode; what a user of torchattacks runs) and on that same folded copy, so
the share of the fold and of the attacks' own code can be told apart. Prints the robust accuracy
each finds, the wall and process-CPU seconds and the speed ratios torchattacks / rkd.

    python benchmarks/bench_autoattack.py [--n 100] [--threat linf:8/255] [--epochs 4]
                                          [--run-dir runs/<run>] [--threads N]

Model: as in bench_apgd.py (the digits_standard architecture trained ``--epochs`` epochs, or a
finished run's model.pt with ``--run-dir``). Results: README, "Benchmarks".
"""

from __future__ import annotations

import argparse

import torch
from bench_apgd import load_average, model_under_test, parse_eps, timed  # the sibling script

from rkd.config.schema import EvalConfig
from rkd.data.loader import make_loader
from rkd.evaluation.per_sample import correct_mask
from rkd.evaluation.robust_accuracy import worst_case
from rkd.evaluation.subsets import subset_of
from rkd.models.inference import inference_copy


def rkd_worst_case(model, data, norm: str, eps: float, batch_size: int):
    cfg = EvalConfig(attacks=[], worst_case={"suite": "autoattack", "threats": [{"norm": norm, "eps": eps}]},
                     checks={"enabled": False})
    clean_ok = correct_mask(model, make_loader(data, batch_size), "cpu")
    entries, _ = worst_case(model, data, cfg, clean_ok, {}, device="cpu", batch_size=batch_size)
    return entries[0]


def torchattacks_autoattack(model, x, y, norm: str, eps: float):
    import torchattacks

    ta_norm = "Linf" if norm == "linf" else "L2"
    apgdt = torchattacks.APGDT(model, norm=ta_norm, eps=eps, steps=100, n_classes=10, n_restarts=1, seed=0)
    apgdt.n_target_classes = 9
    fab = torchattacks.FAB(model, norm=ta_norm, eps=eps, steps=100, multi_targeted=True, n_classes=10,
                           n_restarts=1, seed=0)
    fab.n_target_classes = 9
    attack = torchattacks.MultiAttack([
        torchattacks.APGD(model, norm=ta_norm, eps=eps, steps=100, loss="ce", n_restarts=1, seed=0),
        apgdt, fab,
        torchattacks.Square(model, norm=ta_norm, eps=eps, n_queries=5000, n_restarts=1, seed=0),
    ])
    x_adv = attack(x, y)
    with torch.no_grad():
        return (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="number of test images")
    p.add_argument("--threat", default="linf:8/255", help="norm:eps")
    p.add_argument("--epochs", type=int, default=4, help="training epochs of the quick model")
    p.add_argument("--run-dir", default=None, help="a finished rkd run directory (model.pt) instead")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    model, test_set, source = model_under_test(args)
    norm, eps_text = args.threat.split(":")
    eps = parse_eps(eps_text)
    data = subset_of(test_set, list(range(args.n)))
    x, y = test_set.images[:args.n], test_set.labels[:args.n]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model: {source}")
    print(f"{args.n} test images, {norm} {eps_text}; load average {load_average()}")
    folded, t_fold, c_fold = timed(lambda: inference_copy(model, x[:64]))
    ours, t_ours, c_ours = timed(lambda: rkd_worst_case(folded, data, norm, eps, args.batch_size))
    t_ours, c_ours = t_ours + t_fold, c_ours + c_fold  # the fold is part of rkd's cost
    given, t_given, c_given = timed(lambda: torchattacks_autoattack(model, x, y, norm, eps))
    same, t_same, c_same = timed(lambda: torchattacks_autoattack(folded, x, y, norm, eps))
    print(f"{'':44s} {'robust %':>9s} {'wall s':>8s} {'CPU s':>8s}")
    rows = [("rkd worst case (suite autoattack), folded", 100 * ours["accuracy"], t_ours, c_ours),
            ("torchattacks MultiAttack, model as given", 100 * given.float().mean().item(), t_given, c_given),
            ("torchattacks MultiAttack, folded copy", 100 * same.float().mean().item(), t_same, c_same)]
    for name, acc, wall, cpu in rows:
        print(f"{name:44s} {acc:9.1f} {wall:8.1f} {cpu:8.1f}")
    print(f"speed ratio torchattacks (model as given) / rkd: wall {t_given / t_ours:.2f}x, CPU {c_given / c_ours:.2f}x")
    print(f"speed ratio torchattacks (folded copy) / rkd:    wall {t_same / t_ours:.2f}x, CPU {c_same / c_ours:.2f}x")
    print("rkd cascade: " + "; ".join(f"{c['name']} on {c['ran_on']} -> {100 * c['robust_after']:.1f}% "
                                      f"({c['wall_time_s']:.1f} s)" for c in ours["cascade"]))
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
