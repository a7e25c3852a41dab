"""The job configs under jobs/ (paper-scale tables and their digits analogues) all validate, and
the ones that encode a paper's table say what the table says.

``teacher.config`` paths are relative to the working directory (the repo root), so every test
here runs from there. Loading a distillation config also validates its teacher's config.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from rkd.config import load_config

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
FILES = sorted(p.relative_to(REPO).as_posix() for p in JOBS.rglob("*.yaml"))


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


@functools.lru_cache(maxsize=None)
def _load(path: str, overrides: tuple[str, ...] = ()):
    return load_config(path, overrides)


def _teacher(path: str):
    t = _load(path).method.teacher
    return _load(t.config, tuple(t.overrides))


def test_jobs_exist():
    assert len(FILES) > 50
    assert "jobs/cifar10/robust_kd.yaml" in FILES


@pytest.mark.parametrize("path", FILES)
def test_job_config_loads(path):
    cfg = _load(path)
    assert cfg.name
    if cfg.method.name in ("robust_kd", "shafahi", "defensive_distillation"):
        t = cfg.method.teacher
        assert t.config is not None and t.run_dir is None, "jobs name teachers by config (trained once, cached)"
        if not t.config.startswith("preset:"):
            assert (REPO / t.config).is_file(), f"{path}: teacher config {t.config} is not a path from the repo root"


def test_run_names_are_unique():
    names = {}
    for path in FILES:
        names.setdefault(_load(path).name, []).append(path)
    assert {n: p for n, p in names.items() if len(p) > 1} == {}


def test_teachers_are_l2_adversarially_trained():
    expected = {"imagenet32": ("imagenet32", None), "cifar100": ("cifar100", None),
                "cifar10_plus": ("cifar10", "first"), "svhn_plus": ("svhn", "first")}
    for stem, (dataset, half) in expected.items():
        cfg = _load(f"jobs/teachers/{stem}.yaml")
        assert (cfg.data.dataset, cfg.data.half) == (dataset, half)
        assert cfg.model.arch == "resnet50"
        m = cfg.method
        assert m.name == "adversarial" and m.attack.norm == "l2" and m.attack.eps == 0.5
        assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.weight_decay) == ("sgd", 0.9, 5e-4)


def test_table1_robust_kd_rows():
    full = _load("jobs/cifar10/robust_kd.yaml").method
    assert ((full.beta, full.gamma, full.stages, full.feature_distance, full.n_proj)
            == (50, 5e3, [1, 2, 3, 4], "cosine", 1))
    assert full.teacher.config == "jobs/teachers/imagenet32.yaml" and full.init == "teacher"
    assert _load("jobs/cifar10/robust_kd_no_fm.yaml").method.beta == 0
    assert _load("jobs/cifar10/robust_kd_no_jacobian.yaml").method.gamma == 0
    assert _load("jobs/cifar10/shafahi.yaml").method.teacher.config == "jobs/teachers/imagenet32.yaml"


def test_table3_constrains_one_stage_each():
    for i in (1, 2, 3, 4):
        m = _load(f"jobs/cifar10/table3/stage{i}.yaml").method
        assert m.stages == [i] and m.constrained_jacobian_stages == [i]
    assert _load("jobs/cifar10/table3/all.yaml").method.stages == [1, 2, 3, 4]


def test_tables_4_to_6_weight_sweeps():
    t4 = [_load(f"jobs/cifar10/table4/beta_{v}.yaml").method for v in ("0.5", "5", "50", "500", "5000")]
    assert [m.beta for m in t4] == [0.5, 5, 50, 500, 5000] and all(m.gamma == 0 for m in t4)
    t5 = [_load(f"jobs/cifar10/table5/gamma_{v}.yaml").method for v in ("5", "50", "500", "5e3", "5e4", "5e5")]
    assert [m.gamma for m in t5] == [5, 50, 500, 5e3, 5e4, 5e5] and all(m.beta == 0 for m in t5)
    t6 = [_load(f"jobs/cifar10/table6/l2_beta_{v}.yaml").method for v in ("0.5", "5", "50", "500", "5000")]
    assert [m.beta for m in t6] == [0.5, 5, 50, 500, 5000]
    assert all(m.feature_distance == "l2" and m.gamma == 0 for m in t6)


@pytest.mark.parametrize("folder", ["cifar10", "digits"])
def test_table7_n_proj_last_stage_jacobian_only(folder):
    ms = [_load(f"jobs/{folder}/table7/n_proj_{k}.yaml").method for k in (1, 5, 10)]
    assert [m.n_proj for m in ms] == [1, 5, 10]
    for m in ms:
        assert m.stages == [4] and m.constrained_jacobian_stages == [4]
        assert m.beta == 0 and m.gamma > 0


@pytest.mark.parametrize("student, teacher_dataset", [
    ("jobs/cifar10_minus/robust_kd_cifar10_plus.yaml", "cifar10"),
    ("jobs/svhn_minus/robust_kd_svhn_plus.yaml", "svhn"),
])
def test_table9_same_source_halves(student, teacher_dataset):
    s, t = _load(student), _teacher(student)
    assert (s.data.dataset, s.data.half) == (teacher_dataset, "second")
    assert (t.data.dataset, t.data.half) == (teacher_dataset, "first")
    assert s.data.split_seed == t.data.split_seed  # the halves are complementary only with one seed


def test_table9_baselines_train_on_the_second_half():
    for folder, dataset in (("cifar10_minus", "cifar10"), ("svhn_minus", "svhn")):
        for stem in ("standard", "adversarial_l2", "robust_kd_imagenet32"):
            cfg = _load(f"jobs/{folder}/{stem}.yaml")
            assert (cfg.data.dataset, cfg.data.half) == (dataset, "second")


def test_table8_sources_and_targets():
    cases = {
        "jobs/cifar10/robust_kd_cifar100.yaml": ("cifar10", "cifar100"),
        "jobs/cifar10/robust_kd.yaml": ("cifar10", "imagenet32"),
        "jobs/svhn/robust_kd_cifar100.yaml": ("svhn", "cifar100"),
        "jobs/svhn/robust_kd_imagenet32.yaml": ("svhn", "imagenet32"),
        "jobs/cifar100/robust_kd_imagenet32.yaml": ("cifar100", "imagenet32"),
    }
    for path, (target, source) in cases.items():
        assert (_load(path).data.dataset, _teacher(path).data.dataset) == (target, source)
        assert _load(path).data.half is None


def test_defensive_distillation_shares_temperature():
    paths = ["jobs/cifar10/defensive_distillation/student_t20.yaml"] + [
        f"jobs/digits/defensive_distillation/t{t}.yaml" for t in (1, 2, 5, 10, 20, 50, 100)]
    for path in paths:
        s, t = _load(path), _teacher(path)
        assert s.method.name == "defensive_distillation" and t.method.name == "standard"
        assert s.method.temperature == t.method.temperature, path
        assert s.eval.jsma is not None and s.eval.input_gradient
        assert any(a.kind == "cw" for a in s.eval.attacks)
    assert _load(paths[0]).eval.jsma.max_samples == 1000
    digits_t = sorted(_load(p).method.temperature for p in paths[1:])
    assert digits_t == [1, 2, 5, 10, 20, 50, 100]


@pytest.mark.parametrize("ds, arch", [("cifar10", "resnet50"), ("cifar10", "wrn50"), ("cifar100", "resnet50"),
                                      ("cifar100", "wrn50")])
def test_macd_tables_1_to_4(ds, arch):
    cfg = _load(f"jobs/macd/{ds}_{arch}/macd.yaml")
    m = cfg.method
    assert cfg.data.dataset == ds and cfg.model.input_size == 224 and cfg.train.epochs == 10
    assert cfg.model.arch == {"resnet50": "tv_resnet50", "wrn50": "tv_wide_resnet50_2"}[arch]
    assert (m.attack.steps, m.attack.eps, m.attack.norm) == (40, 8 / 255, "linf")
    assert (m.teacher_mask_ratio, m.student_patch, m.student_mask_ratio) == (0.75, 8, 0.7)
    assert m.source.config == f"jobs/macd/{ds}_{arch}/standard.yaml"
    teacher = _load(m.teacher.config)
    assert teacher.method.stage == "feature" and teacher.train.epochs == 20
    assert teacher.model.arch == "mae_vit_base_patch16" and teacher.model.input_size == 224
    stage1 = _load(teacher.method.start_from.config)
    assert stage1.method.stage == "reconstruction" and stage1.train.epochs == 100
    std = _load(m.source.config)
    assert (std.train.lr, std.train.epochs, std.model.pretrained) == (0.003, 20, True)
    labels = {a.label for a in cfg.eval.transfer.attacks}
    assert labels == {a.label for a in std.eval.attacks}  # the source row: the same grid, white-box
    assert {"FGSM 16/255", "AutoAttack-L2 8/255", "Jitter 16/255"} <= labels


#: MACD's Table 1 rows of the baselines it names (PAPERS.md section 3): clean, PGD 8/255
MACD_TABLE1 = {"iad": ("76.61", "61.21"), "mtard": ("84.97", "58.78"), "adaad": ("83.24", "58.63"),
               "rocl": ("86.34", "51.41")}


@pytest.mark.parametrize("row", ["ard", "rslad", "iad", "mtard", "adaad", "rocl"])
def test_macd_table1_family_rows_share_the_table_setting(row):
    """jobs/macd/cifar10_resnet50/family: the robust-distillation family and RoCL at MACD's scale
    (ResNet-50 from ImageNet weights at 224 px, the table's recipe), distilled from the table's own
    TRADES row, evaluated under the transfer protocol against the table's standard row; the
    file quotes MACD's published row where the paper has one."""
    folder = "jobs/macd/cifar10_resnet50"
    cfg = _load(f"{folder}/family/{row}.yaml")
    std, trades = _load(f"{folder}/standard.yaml"), _load(f"{folder}/trades.yaml")
    assert (cfg.data.dataset, cfg.model.arch, cfg.model.input_size) == ("cifar10", "tv_resnet50", 224)
    assert cfg.train.epochs == std.train.epochs and (row == "rocl" or cfg.train.lr == std.train.lr)
    assert cfg.eval.transfer.source.config == f"{folder}/standard.yaml"
    if row == "rocl":
        encoder = _load(cfg.method.encoder.config)
        assert cfg.method.name == "linear_eval" and encoder.method.name == "rocl"
        assert (encoder.model.arch, encoder.model.input_size, encoder.model.pretrained) == ("tv_resnet50", 224, True)
    else:
        assert cfg.method.name == row and cfg.method.kl_reduction == "class_mean"
        assert cfg.method.teacher.config == f"{folder}/trades.yaml" and trades.method.name == "trades"
        assert cfg.model.pretrained
    if row == "mtard":
        assert cfg.method.clean_teacher.config == f"{folder}/standard.yaml"
    text = (REPO / f"{folder}/family/{row}.yaml").read_text()
    assert row not in MACD_TABLE1 or all(v in text for v in MACD_TABLE1[row])


def test_macd_table6_grid_and_ablations():
    cells = {(c.method.student_patch, c.method.student_mask_ratio)
             for c in (_load(f) for f in FILES if f.startswith("jobs/macd/table6/"))}
    assert cells == {(p, r) for p in (2, 4, 8, 16) for r in (0.65, 0.7, 0.75, 0.8)}
    assert _load("jobs/macd/cifar10_resnet50/ablation_no_adversarial.yaml").method.adversarial is False
    assert _load("jobs/macd/cifar10_resnet50/ablation_no_masking.yaml").method.masking is False
    self_only = _load("jobs/macd/cifar10_resnet50/ablation_contrastive_only.yaml").method
    assert self_only.distill == "self" and self_only.teacher is None


def test_ray_cluster_and_kuberay_files():
    """The cluster-launcher config and the KubeRay manifest parse and have what `ray up` and the
    operator need (a head and a GPU worker type, setup that installs the project, shared storage)."""
    import yaml

    c = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands", "file_mounts"} <= set(c)
    types = c["available_node_types"]
    assert c["head_node_type"] in types and any(
        t != c["head_node_type"] and v["max_workers"] > v["min_workers"] for t, v in types.items())
    setup = " ".join(c["setup_commands"])
    assert "pip install" in setup and "/mnt/shared" in setup
    head = " ".join(c["head_setup_commands"] + c["head_start_ray_commands"])
    assert "0.0.0.0" not in head and "--dashboard-host=127.0.0.1" in head and "mlflow server" in head
    k = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    assert k["kind"] == "RayJob" and k["spec"]["entrypoint"].startswith("python jobs/")
    workers = k["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" in workers["resources"]["limits"]


def test_job_entry_points_show_help():
    import subprocess
    import sys

    for name in ("train", "tune", "eval", "build_cache", "reproduce"):
        out = subprocess.run([sys.executable, f"jobs/{name}.py", "--help"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and "ray job submit" in out.stdout, (name, out.stderr[-500:])


def test_macd_fidelity_study_changes_one_choice_per_row():
    """jobs/digits/macd_fidelity: every MACD row is the fixed preset (11_macd_learned) with
    exactly one choice changed; every model of the chain holds out the same validation split;
    the transfer protocol attacks the study's own standard model, MACD's source."""
    folder = "jobs/digits/macd_fidelity"
    ref = _load(f"{folder}/11_macd_learned.yaml")
    keys = ("projection", "kl_direction", "mask_value", "teacher_mask_ratio", "adversarial", "masking", "distill",
            "student_patch", "student_mask_ratio")
    expected = {"10_macd_before": {"projection"}, "12_macd_fusion_add": {"fusion"},
                "13_macd_fusion_gated": {"fusion"}, "14_macd_kl_student_target": {"kl_direction"},
                "15_macd_mask_mean": {"mask_value"}, "ablations/t5_teacher_ratio_0.85": {"teacher_mask_ratio"},
                "ablations/t7_no_adversarial": {"adversarial"}, "ablations/t8_no_masking": {"masking"},
                "ablations/t9_contrastive_only": {"distill", "fusion"},
                "table6/patch2_ratio0.7": {"student_patch"}, "table6/patch4_ratio0.7": {"student_patch"},
                **{f"table6/patch8_ratio{r}": {"student_mask_ratio"} for r in ("0.65", "0.75", "0.8")}}
    fusion = lambda c: _load(c.method.teacher.config).model.fusion if c.method.teacher else None  # noqa: E731
    for name, changed in expected.items():
        cfg = _load(f"{folder}/{name}.yaml")
        diff = {k for k in keys if getattr(cfg.method, k) != getattr(ref.method, k)}
        diff |= {"fusion"} if fusion(cfg) != fusion(ref) else set()
        assert diff == changed, name
        assert cfg.method.source == ref.method.source == cfg.eval.transfer.source
        assert cfg.data.val_size == 0.15 and cfg.train == ref.train
    for path in [p for p in FILES if p.startswith(folder)]:
        cfg = _load(path)
        assert cfg.data.val_size == 0.15, path
        for spec in cfg.method.trained_models().values():
            assert _load(spec.config, tuple(spec.overrides)).data.val_size == 0.15, (path, spec.config)


@pytest.mark.e2e
def test_reproduce_runs_seeds_evaluates_validation_and_reuses_finished_rows(tmp_path, tiny_overrides, tracking_uri):
    """jobs/reproduce.py over a folder of two configs and two seeds with --validation, as one
    graph on a local Ray cluster: each run in its fixed directory, evaluated on its test set and
    on its held-out validation split, both tables printed; the same command again (--sequential,
    without Ray) trains and evaluates nothing."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    folder = tmp_path / "table"
    folder.mkdir()
    (folder / "base.yaml").write_text("name: base\neval: {attacks: [{kind: fgsm, eps: 8/255}]}\n")
    for name in ("a", "b"):
        (folder / f"{name}.yaml").write_text(f"base: base.yaml\nname: {name}\n")
    over = [*tiny_overrides, "data.val_size=8"]
    cmd = [sys.executable, str(JOBS / "reproduce.py"), str(folder), "--experiment", "rkd", "--seeds", "0", "1",
           "--set", *over, "--validation", "eval.checks.enabled=false"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "runs" / "reproduce"
    assert sorted(p.name for p in runs.iterdir()) == ["a-seed0", "a-seed1", "b-seed0", "b-seed1"]
    for d in runs.iterdir():
        assert (d / "results.json").is_file() and (d / "validation" / "results.json").is_file()
    assert "| a | 0, 1 |" in first.stdout and "8 validation images" in first.stdout
    client = MlflowClient(tracking_uri)
    count = len(client.search_runs([client.get_experiment_by_name("rkd").experiment_id]))
    assert first.stdout.count(": trained in") == 4
    again = subprocess.run([*cmd, "--sequential"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished before; reused") == 4
    assert len(client.search_runs([client.get_experiment_by_name("rkd").experiment_id])) == count


def test_reproduce_reuses_resumes_or_restarts_a_row(tmp_path, monkeypatch):
    """A finished row is reused, an interrupted one with a checkpoint resumed, one stopped before
    its first checkpoint set aside (nothing deleted) and trained again from its config."""
    import importlib

    monkeypatch.syspath_prepend(str(JOBS))
    reproduce = importlib.import_module("reproduce")
    calls = []
    cli = lambda argv: calls.append(argv) or 0  # noqa: E731
    done, resumable, early = (tmp_path / n for n in ("done", "resumable", "early"))
    for d in (done, resumable, early):
        d.mkdir()
        (d / "config.yaml").write_text("name: x\n")
    (done / "results.json").write_text("{}")
    (resumable / "checkpoints").mkdir()
    (resumable / "checkpoints" / "epoch_0.pt").write_bytes(b"x")
    for d in (done, resumable, early):
        assert reproduce.train(cli, "c.yaml", d, ["seed=1"]) == 0
    assert calls == [["train", "--resume", str(resumable)], ["train", "c.yaml", "seed=1", "--run-dir", str(early)]]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("early.stopped-")]
    assert not early.exists() and len(kept) == 1 and (kept[0] / "config.yaml").is_file()


def test_robust_kd_shift_study_has_the_rows_issue_18_requires():
    """jobs/digits/robust_kd_shift: every row on unshifted digits- with the same recipe and
    evaluation, its rot90 digits+ teacher PGD-AT L2 0.5; the rows are standard, fine-tuning,
    Shafahi, Robust-KD w/o L_J, w/o L_fm and full, and the distillation rows again from scratch."""
    folder = "jobs/digits/robust_kd_shift"
    rows = {p.rsplit("/", 1)[-1][:-5]: _load(p) for p in FILES if p.startswith(folder) and "base.yaml" not in p}

    def kind(m):  # (method, init, which weights are on)
        if m.name == "robust_kd":
            return ("robust_kd", m.init, m.beta > 0, m.gamma > 0)
        return (m.name, getattr(m, "init", None), getattr(m, "lam", 0) > 0)

    assert sorted(kind(c.method) for c in rows.values()) == sorted([
        ("standard", None, False), ("robust_kd", "teacher", False, False), ("shafahi", "teacher", True),
        ("robust_kd", "teacher", True, False), ("robust_kd", "teacher", False, True),
        ("robust_kd", "teacher", True, True), ("shafahi", "scratch", True), ("robust_kd", "scratch", True, False),
        ("robust_kd", "scratch", False, True), ("robust_kd", "scratch", True, True)])
    ref = rows["06_robust_kd"]
    for name, cfg in rows.items():
        assert (cfg.data.dataset, cfg.data.half, cfg.data.shift) == ("digits", "second", "none"), name
        assert cfg.train == ref.train and cfg.model == ref.model and cfg.eval == ref.eval, name
        assert cfg.tracking.experiment == "rkd-digits-robust-kd-shift"
        if cfg.method.name != "standard":
            assert cfg.method.teacher.config == "preset:digits_teacher_plus_rot90", name
    ev = ref.eval
    assert ev.worst_case.enabled and [(t.norm, t.eps) for t in ev.worst_case.threats] == [("linf", 8 / 255)]
    assert "PGD-7 Linf 8/255" in [a.label for a in ev.attacks] and ev.step_sweep.steps == [0, 7, 25, 100]
    assert ev.transfer is None and ev.jsma is None and ev.checks.enabled
    teacher = _teacher(f"{folder}/06_robust_kd.yaml")
    assert (teacher.data.dataset, teacher.data.half, teacher.data.shift) == ("digits", "first", "rot90")
    assert (teacher.method.name, teacher.method.attack.norm, teacher.method.attack.eps) == ("adversarial", "l2", 0.5)
    assert teacher.data.split_seed == ref.data.split_seed  # the complementary halves


def test_reproduce_paired_checks_names_and_seeds_and_pairs_finished_runs(tmp_path, monkeypatch):
    """--paired: unknown names and too few seeds stop the command before any run; the lines pair
    the seeds both rows finished and say which were left out."""
    import importlib
    import json

    monkeypatch.syspath_prepend(str(JOBS))
    reproduce = importlib.import_module("reproduce")
    with pytest.raises(SystemExit, match="not a config name"):
        reproduce.check_paired([["a", "c"]], {"a", "b"}, [0, 1])
    with pytest.raises(SystemExit, match="at least two seeds"):
        reproduce.check_paired([["a", "b"]], {"a", "b"}, [0])
    reproduce.check_paired([], {"a"}, None)  # no --paired: nothing to check
    runs = {}
    for name, accs in (("a", [0.5, 0.6, 0.7]), ("b", [0.4, 0.6, None])):
        for seed, acc in enumerate(accs):
            d = tmp_path / f"{name}-seed{seed}"
            runs.setdefault(name, {})[seed] = d
            if acc is not None:  # b's seed 2 did not finish
                d.mkdir()
                (d / "results.json").write_text(json.dumps({"clean_accuracy": 0.9, "attacks": [], "worst_case": [
                    {"norm": "linf", "eps_label": "8/255", "accuracy": acc}]}))
    lines = reproduce.paired_lines([["a", "b"]], runs, ["worst case Linf 8/255", "PGD-7 Linf 8/255"])
    assert lines[0].startswith("paired a - b, worst case Linf 8/255 (seeds 0, 1): per seed +10.00, +0.00; mean +5.00")
    assert lines[0].endswith("(seeds 2 left out: not finished)")
    assert lines[1].startswith("paired a - b, PGD-7 Linf 8/255: not a column of every run")


def test_reproduce_paired_writes_the_lines_under_the_table_markdown(tmp_path, monkeypatch, capsys):
    import argparse
    import importlib
    import json

    monkeypatch.syspath_prepend(str(JOBS))
    reproduce = importlib.import_module("reproduce")
    runs = {}
    for name, accs in (("a", [0.5, 0.7]), ("b", [0.4, 0.5])):
        for seed, acc in enumerate(accs):
            d = tmp_path / "reproduce" / f"{name}-seed{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({"clean_accuracy": acc, "attacks": []}))
            runs.setdefault(name, {})[seed] = d
    cfg = argparse.Namespace(output_dir=str(tmp_path), name="a")
    calls = []

    def cli(argv):  # `rkd report ... -o FILE` writes the table there
        calls.append(argv)
        Path(argv[argv.index("-o") + 1]).write_text("# exp: table\n\n| a |\n")
        return 0

    args = argparse.Namespace(experiment="exp", paired=[["a", "b"]], paired_metrics=["clean"])
    assert reproduce.report_paired(cli, args, {"a-seed0": (None, cfg, None, [])}, runs, ["--over-seeds"]) == 0
    assert calls == [["report", "--experiment", "exp", "--over-seeds", "-o", str(tmp_path / "reproduce" / "exp.md")]]
    text = (tmp_path / "reproduce" / "exp.md").read_text()
    assert text.startswith("# exp: table\n\n| a |\n\n- paired a - b, clean (seeds 0, 1): per seed +10.00, +20.00")
    assert capsys.readouterr().out == text
