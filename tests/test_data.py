"""Datasets: real on-disk formats written small in tmp_path and read through the real loaders."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.io
import torch

from rkd.data import (
    DatasetIntegrityError,
    DatasetNotFoundError,
    RandomCropPad,
    RandomHorizontalFlip,
    TensorImageDataset,
    build_dataset,
    class_subset,
    dataset_info,
    half_split,
    half_split_indices,
    limit,
    list_datasets,
    load_imagenet32,
    make_synthetic,
    train_transform,
    validation_count,
    validation_split,
    validation_split_indices,
)
from rkd.data.digits import digits_split_indices
from rkd.data.masking import random_patch_mask

# ---- writers for the official formats -----------------------------------------------------------


def _planar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3072) uint8 rows in the CIFAR / ImageNet32 channel-planar layout (R, G, B planes)."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _mark_pixel(rows: np.ndarray, i: int, ch: int, r: int, c: int, value: int) -> None:
    rows[i, ch * 1024 + r * 32 + c] = value


def write_cifar10(root, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for k, name in enumerate(names):
        rows = _planar_rows(rng, n_per_batch)
        rows[0] = 0
        _mark_pixel(rows, 0, 0, 1, 2, 255)  # red at (row 1, col 2)
        _mark_pixel(rows, 0, 1, 3, 4, 254)  # green at (row 3, col 4)
        _mark_pixel(rows, 0, 2, 31, 0, 253)  # blue at (row 31, col 0)
        labels = [(k + j) % 10 for j in range(n_per_batch)]
        with open(d / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": rows, "labels": labels, "filenames": []}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    return d


def write_cifar100(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for name in ["train", "test"]:
        rows = _planar_rows(rng, n)
        fine = [(97 + j) % 100 for j in range(n)]  # 97, 98, 99, 0, 1, 2
        with open(d / name, "wb") as f:
            pickle.dump({"data": rows, "fine_labels": fine, "coarse_labels": [x // 5 for x in fine]}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return d


def write_svhn(root, split="train", n=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N)
    X[5, 7, 2, 1] = 201  # sample 1, blue channel, row 5, col 7
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)[:n]  # 10 means digit 0
    path = root / f"{split}_32x32.mat"
    scipy.io.savemat(path, {"X": X, "y": y})
    return path, X, y


def write_imagenet32(directory, batches=(1, 2), n=6, seed=0, val=True):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for b in batches:
        rows = _planar_rows(rng, n)
        labels = [1 + ((b * 7 + j) % 1000) for j in range(n)]  # 1-based
        labels[0] = 1000
        _mark_pixel(rows, 0, 1, 10, 20, 250)
        np.savez(directory / f"train_data_batch_{b}.npz", data=rows, labels=labels,
                 mean=rows.mean(0).astype(np.float32))
        out[b] = (rows, labels)
    if val:
        rows = _planar_rows(rng, n)
        np.savez(directory / "val_data.npz", data=rows, labels=[1, 2, 3, 4, 5, 1000][:n])
        out["val"] = (rows, [1, 2, 3, 4, 5, 1000][:n])
    return out


def _check_images(ds: TensorImageDataset, n: int):
    assert len(ds) == n
    x, y = ds[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert isinstance(y, int)
    xb, yb = ds.get_batch(range(len(ds)))
    assert xb.dtype == torch.float32 and 0.0 <= float(xb.min()) and float(xb.max()) <= 1.0
    assert yb.dtype == torch.int64


# ---- CIFAR ---------------------------------------------------------------------------------------


def test_cifar10_real_pickle_format(tmp_path):
    write_cifar10(tmp_path)
    train = build_dataset("cifar10", root=tmp_path, train=True, verify=False)
    test = build_dataset("cifar10", root=tmp_path, train=False, verify=False)
    _check_images(train, 20)
    _check_images(test, 4)
    assert train.num_classes == 10 and train.classes[3] == "class3"
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 32, 32)
    # labels in file order: batch k, sample j -> (k + j) % 10
    assert train.labels[:4].tolist() == [0, 1, 2, 3] and train.labels[4:8].tolist() == [1, 2, 3, 4]
    # channel-planar decoding: the marked pixels of sample 0 land at (channel, row, col)
    img = train.images[0]
    assert img[0, 1, 2] == 255 and img[1, 3, 4] == 254 and img[2, 31, 0] == 253
    assert int(img.to(torch.int64).sum()) == 255 + 254 + 253
    x, _ = train[0]
    assert x[0, 1, 2] == 1.0 and x[1, 1, 2] == 0.0


def test_cifar_md5_verification(tmp_path):
    """torchvision's own class refuses fake files (md5); verify=True reports it clearly."""
    import torchvision

    write_cifar10(tmp_path)
    with pytest.raises(RuntimeError):
        torchvision.datasets.CIFAR10(str(tmp_path), train=True)
    with pytest.raises(DatasetIntegrityError) as e:
        build_dataset("cifar10", root=tmp_path, train=True)  # verify=True by default
    assert "verify" in str(e.value) and "cifar-10-batches-py" in str(e.value)


def test_cifar100_real_pickle_format(tmp_path):
    write_cifar100(tmp_path)
    ds = build_dataset("cifar100", root=tmp_path, train=True, verify=False)
    _check_images(ds, 6)
    assert ds.num_classes == 100 and ds.labels.tolist() == [97, 98, 99, 0, 1, 2]  # fine labels
    assert ds.classes[99] == "f99"
    assert len(build_dataset("cifar100", root=tmp_path, train=False, verify=False)) == 6


@pytest.mark.parametrize("name,expected", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_raises_not_found(tmp_path, name, expected):
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset(name, root=tmp_path, train=True)
    msg = str(e.value)
    assert str(tmp_path / expected) in msg and "download" in msg
    assert isinstance(e.value, FileNotFoundError) and e.value.dataset == name


def test_cifar_partially_missing_names_files(tmp_path):
    d = write_cifar10(tmp_path)
    (d / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("cifar10", root=tmp_path, train=False, verify=False)
    assert "data_batch_3" in str(e.value)


# ---- SVHN ----------------------------------------------------------------------------------------


def test_svhn_real_mat_format(tmp_path):
    _, X, y = write_svhn(tmp_path, "train")
    ds = build_dataset("svhn", root=tmp_path, train=True, verify=False)
    _check_images(ds, 5)
    assert ds.labels.tolist() == [0, 1, 2, 0, 9]  # 10 -> 0
    assert ds.num_classes == 10 and ds.images.shape == (5, 3, 32, 32)
    assert ds.images[1, 2, 5, 7] == 201
    # whole layout: images[n, c, h, w] == X[h, w, c, n]
    assert torch.equal(ds.images, torch.from_numpy(X.transpose(3, 2, 0, 1).copy()))
    with pytest.raises(DatasetIntegrityError):
        build_dataset("svhn", root=tmp_path, train=True)  # md5 of the official file


def test_svhn_missing_raises_not_found(tmp_path):
    write_svhn(tmp_path, "train")
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("svhn", root=tmp_path, train=False)
    msg = str(e.value)
    assert str(tmp_path / "test_32x32.mat") in msg and "download" in msg
    with pytest.raises(ValueError):
        build_dataset("svhn", root=tmp_path, split="nope")


# ---- ImageNet32 ----------------------------------------------------------------------------------


def test_imagenet32_npz_format(tmp_path):
    written = write_imagenet32(tmp_path, batches=(1, 2))
    ds = build_dataset("imagenet32", root=tmp_path, train=True)
    _check_images(ds, 12)
    assert ds.num_classes == 1000
    rows1, labels1 = written[1]
    rows2, labels2 = written[2]
    assert ds.labels.tolist() == [lab - 1 for lab in labels1 + labels2]  # 1-based -> 0-based
    assert ds.labels[0] == 999
    # channel-planar decoding: green (channel 1) at row 10, col 20 of sample 0
    assert ds.images[0, 1, 10, 20] == 250
    assert torch.equal(ds.images[7].reshape(-1), torch.from_numpy(rows2[1]))
    val = build_dataset("imagenet32", root=tmp_path, train=False)
    assert val.labels.tolist() == [0, 1, 2, 3, 4, 999]


def test_imagenet32_subdirs_batches_and_class_subset(tmp_path):
    write_imagenet32(tmp_path / "Imagenet32_train_npz", batches=(3,), val=False)
    ds = load_imagenet32(tmp_path, train=True)  # found in the official zip's folder
    assert len(ds) == 6
    labels0 = ds.labels.tolist()
    sub = load_imagenet32(tmp_path, train=True, classes=[labels0[2], labels0[1]])
    assert sub.num_classes == 2 and sorted(sub.labels.tolist()) == [0, 1]
    assert sub.labels.tolist() == [1, 0]  # file order kept; classes[0] -> 0
    few = load_imagenet32(tmp_path, train=True, max_classes=30)
    assert few.num_classes == 30 and all(0 <= lab < 30 for lab in few.labels.tolist())
    assert len(few) == sum(1 for lab in labels0 if lab < 30)
    with pytest.raises(DatasetNotFoundError) as e:
        load_imagenet32(tmp_path, train=True, train_batches=[3, 4])
    assert "train_data_batch_4.npz" in str(e.value)


def test_imagenet32_missing_raises_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("imagenet32", root=tmp_path, train=True)
    msg = str(e.value)
    assert str(tmp_path / "train_data_batch_1.npz") in msg and "download" in msg
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("imagenet32", root=tmp_path, train=False)
    assert str(tmp_path / "val_data.npz") in str(e.value)


# ---- digits and synthetic -----------------------------------------------------------------------


def test_digits_split():
    train = build_dataset("digits", train=True)
    test = build_dataset("digits", train=False)
    assert len(train) + len(test) == 1797 and (len(train), len(test)) == (1437, 360)
    for ds in (train, test):
        assert ds.image_shape == (3, 32, 32) and ds.num_classes == 10
        assert ds.images.dtype == torch.float32
        assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
        assert torch.equal(ds.images[:, 0], ds.images[:, 2])  # grey repeated to 3 channels
    assert set(test.labels.tolist()) == set(range(10))
    assert test.class_counts().min() >= 34 and test.class_counts().max() <= 37  # stratified
    tr_idx, te_idx = digits_split_indices()
    assert len(set(tr_idx) & set(te_idx)) == 0 and len(set(tr_idx) | set(te_idx)) == 1797
    assert build_dataset("digits", train=True).fingerprint() == train.fingerprint()  # deterministic
    assert build_dataset("digits", train=False, seed=1).fingerprint() != test.fingerprint()


def test_digits_match_normalisation_stats():
    from rkd.models import get_normalization

    imgs = torch.cat([build_dataset("digits", train=True).images, build_dataset("digits", train=False).images])
    mean, std = get_normalization(dataset_info("digits").norm)
    assert abs(float(imgs.mean()) - mean[0]) < 1e-3 and abs(float(imgs.std()) - std[0]) < 1e-3


def test_synthetic_deterministic_and_learnable():
    a = make_synthetic(True, n_train=200, num_classes=4, seed=3)
    b = build_dataset("synthetic", train=True, n_train=200, num_classes=4, seed=3)
    assert a.fingerprint() == b.fingerprint()
    assert make_synthetic(True, n_train=200, num_classes=4, seed=4).fingerprint() != a.fingerprint()
    test = make_synthetic(False, n_test=100, num_classes=4, seed=3)
    _check_images(test, 100)
    assert a.class_counts().tolist() == [50, 50, 50, 50]

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(128, 4),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = a.get_batch(range(len(a)))
    for _ in range(15):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    xt, yt = test.get_batch(range(len(test)))
    with torch.no_grad():
        acc = (net(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.9


# ---- tensor dataset, transforms ------------------------------------------------------------------


def test_fingerprint_changes_with_one_pixel_or_label():
    ds = make_synthetic(True, n_train=40, seed=0)
    fp = ds.fingerprint()
    assert len(fp) == 64 and fp == ds.with_transform(train_transform()).fingerprint()
    other = TensorImageDataset(ds.images.clone(), ds.labels.clone(), num_classes=ds.num_classes)
    other.images[7, 1, 3, 3] ^= 1
    assert other.fingerprint() != fp
    other2 = TensorImageDataset(ds.images.clone(), ds.labels.clone(), num_classes=ds.num_classes)
    other2.labels[0] = (other2.labels[0] + 1) % ds.num_classes
    assert other2.fingerprint() != fp
    digits = build_dataset("digits", train=False)
    f2 = TensorImageDataset(digits.images.clone(), digits.labels)
    f2.images[0, 0, 0, 0] += 1e-3
    assert f2.fingerprint() != digits.fingerprint()


def test_dataset_validation_and_dataloader():
    with pytest.raises(ValueError):
        TensorImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), [0])
    with pytest.raises(ValueError):
        TensorImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), [0, 5], num_classes=3)
    ds = make_synthetic(True, n_train=16, seed=0, transform=train_transform())
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    item, _ = ds.with_transform(None)[0]
    item.mul_(0)  # items are copies: the stored images are not changed
    assert ds.images[0].sum() > 0


def test_transforms_rng_reproducible_and_correct():
    x = torch.rand(6, 3, 32, 32)
    t = train_transform(flip=True, padding=4)
    state = torch.get_rng_state()
    a = t(x)
    torch.set_rng_state(state)
    b = t(x)
    assert torch.equal(a, b) and a.shape == x.shape
    torch.set_rng_state(state)
    single = t(x[0])
    assert single.shape == (3, 32, 32)

    # each output is a zero-padded 32x32 window of its input (per-sample offsets)
    crop = RandomCropPad(4, "zeros")
    out = crop(x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        assert any(
            torch.equal(out[i], padded[i, :, oy:oy + 32, ox:ox + 32]) for oy in range(9) for ox in range(9)
        )
    refl = RandomCropPad(4, "reflect")(x)
    assert float(refl.min()) >= 0 and float(refl.max()) <= 1

    assert torch.equal(RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)
    no_flip = train_transform(flip=False, padding=0)
    assert torch.equal(no_flip(x), x)
    assert not any(isinstance(s, RandomHorizontalFlip) for s in train_transform(flip=False).transforms)
    ds = make_synthetic(True, n_train=8, seed=0, transform=t)
    xb, _ = ds.get_batch([0, 1, 2], apply_transform=True)
    assert xb.shape == (3, 3, 32, 32)


# ---- splits --------------------------------------------------------------------------------------


def test_half_split_disjoint_covering_stratified_deterministic():
    ds = build_dataset("digits", train=True)
    first = half_split_indices(ds.labels, ds.num_classes, "+", seed=0)
    second = half_split_indices(ds.labels, ds.num_classes, "second", seed=0)
    s1, s2 = set(first.tolist()), set(second.tolist())
    assert not (s1 & s2) and s1 | s2 == set(range(len(ds)))
    plus, minus = half_split(ds, "first"), half_split(ds, "-")
    assert len(plus) + len(minus) == len(ds)
    assert torch.equal(plus.images, ds.images[first]) and torch.equal(minus.labels, ds.labels[second])
    diff = plus.class_counts() - minus.class_counts()
    assert (minus.class_counts() > 0).all() and diff.min() >= 0 and diff.max() <= 1
    assert half_split(ds, "+").fingerprint() == plus.fingerprint()  # deterministic
    assert half_split(ds, "+", seed=1).fingerprint() != plus.fingerprint()
    assert type(plus) is TensorImageDataset and plus.num_classes == 10
    with pytest.raises(ValueError):
        half_split(ds, "third")


def test_class_subset_remaps_labels():
    ds = make_synthetic(True, n_train=100, num_classes=10, seed=0)
    sub = class_subset(ds, [7, 2, 5])
    assert sub.num_classes == 3 and set(sub.labels.tolist()) == {0, 1, 2}
    assert len(sub) == int(sum((ds.labels == c).sum() for c in (7, 2, 5)))
    orig = ds.labels[torch.isin(ds.labels, torch.tensor([7, 2, 5]))]
    assert sub.labels.tolist() == [{7: 0, 2: 1, 5: 2}[c] for c in orig.tolist()]
    keep = class_subset(ds, [7, 2], remap=False)
    assert keep.num_classes == 10 and set(keep.labels.tolist()) == {2, 7}
    with pytest.raises(ValueError):
        class_subset(ds, [10])


def test_limit_stratified_deterministic():
    ds = build_dataset("digits", train=True)
    small = limit(ds, 100, seed=0)
    assert len(small) == 100 and small.class_counts().tolist() == [10] * 10
    assert limit(ds, 100, seed=0).fingerprint() == small.fingerprint()
    assert limit(ds, 100, seed=1).fingerprint() != small.fingerprint()
    odd = limit(ds, 37, seed=0)
    assert len(odd) == 37 and odd.class_counts().max() - odd.class_counts().min() <= 1
    assert limit(ds, 10**6) is ds


def _rows(ds) -> set:
    return {bytes(x.numpy().tobytes()) for x in ds.images}


def test_validation_split_stratified_disjoint_deterministic():
    ds = build_dataset("digits", train=True)
    train_idx, val_idx = validation_split_indices(ds.labels, ds.num_classes, 0.1, seed=0)
    t, v = set(train_idx.tolist()), set(val_idx.tolist())
    assert not (t & v) and t | v == set(range(len(ds)))  # disjoint, covering
    assert len(v) == round(0.1 * len(ds)) == 144
    train, val = validation_split(ds, 0.1, seed=0)
    assert len(train) == len(ds) - len(val) and len(val) == 144  # the training set shrinks by exactly the split
    assert torch.equal(val.images, ds.images[val_idx]) and torch.equal(train.labels, ds.labels[train_idx])
    # stratified: each class's share of the split is its share of the set, within one image
    expected = ds.class_counts().double() * len(val) / len(ds)
    assert ((val.class_counts().double() - expected).abs() < 1).all() and (train.class_counts() > 0).all()
    # deterministic from the seed alone: the same split whatever the global RNG did before
    torch.manual_seed(123)
    again_train, again = validation_split(ds, 0.1, seed=0)
    torch.manual_seed(7)
    torch.rand(1000)
    assert again.fingerprint() == val.fingerprint() and again_train.fingerprint() == train.fingerprint()
    state = torch.random.get_rng_state()
    validation_split(ds, 0.1, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # and it does not advance it
    assert validation_split(ds, 0.1, seed=1)[1].fingerprint() != val.fingerprint()
    # a count is a count; the validation set is never augmented, the training set keeps its transform
    aug = ds.with_transform(train_transform(flip=False))
    tr50, v50 = validation_split(aug, 50, seed=0)
    assert len(v50) == 50 and len(tr50) == len(ds) - 50 and v50.transform is None and tr50.transform is aug.transform
    assert validation_split(ds, 0) == (ds, None)


def test_validation_count_and_refusals():
    assert validation_count(1000, 0.1) == 100 and validation_count(1000, 256) == 256 and validation_count(9, 0.01) == 1
    assert validation_count(1000, 0) == 0
    with pytest.raises(ValueError, match="neither a fraction"):
        validation_count(1000, 2.5)
    ds = make_synthetic(True, n_train=40, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="nothing is left to train on"):
        validation_split(ds, 40)
    with pytest.raises(ValueError, match="all .* training images of class"):
        validation_split(ds, 35)  # 40 images, 10 classes: some class loses all of its 4


def _data_cfg(**kw):
    from rkd.config.schema import DataConfig

    return DataConfig(dataset="synthetic", limit_train=96, limit_test=32, **kw)


def test_build_data_carves_the_validation_split_from_the_training_set():
    from rkd.experiment.builders import build_data, build_datasets

    whole = build_data(_data_cfg(split_seed=3))  # limit_train draws with the same seed
    assert whole.validation is None and len(whole.train) == 96
    for size, n in ((0.25, 24), (20, 20)):
        d = build_data(_data_cfg(val_size=size, split_seed=3))
        assert len(d.validation) == n and len(d.train) == 96 - n  # shrinks by exactly the split
        assert _rows(d.validation).isdisjoint(_rows(d.train))
        assert _rows(d.validation) | _rows(d.train) == _rows(whole.train)  # carved from the training images
        assert d.validation.transform is None and d.train.transform is not None  # only training data is augmented
        assert torch.equal(d.test.images, whole.test.images)  # the test set is untouched
        torch.manual_seed(99)  # another rank / worker / resume: the same split
        again = build_data(_data_cfg(val_size=size, split_seed=3))
        assert again.validation.fingerprint() == d.validation.fingerprint()
        assert again.train.with_transform(None).fingerprint() == d.train.with_transform(None).fingerprint()
        train, test, k = build_datasets(_data_cfg(val_size=size, split_seed=3))
        assert len(train) == 96 - n and k == 10  # every reader of the training set gets it without the split
    other = build_data(_data_cfg(val_size=20, split_seed=4)).validation
    assert other.fingerprint() != build_data(_data_cfg(val_size=20, split_seed=3)).validation.fingerprint()
    with pytest.raises(ValueError, match="data.val_size"):
        build_data(_data_cfg(val_size=95))


@pytest.mark.parametrize("overrides, message", [
    (["data.val_size=2.5"], "neither a fraction"),
    (["data.limit_train=64", "data.val_size=60"], "fewer than one per class"),
    (["data.limit_train=64", "data.val_size=0.95"], "holds out 61 of the 64"),
])
def test_config_checks_refuse_a_validation_split_that_leaves_no_training_data(overrides, message):
    from rkd.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config("preset:digits_standard", overrides)
    assert any(k == "data.val_size" and message in m for k, m in err.value.problems), err.value.problems
    assert load_config("preset:digits_standard", ["data.limit_train=64", "data.val_size=16"]).data.val_size == 16


def test_per_epoch_metric_is_val_acc_on_the_split_and_test_acc_without(tmp_path, tiny_overrides, tracking_uri):
    import json

    from mlflow import MlflowClient

    from rkd.config import load_config
    from rkd.experiment import run_experiment

    over = tiny_overrides + ["train.epochs=1", "eval.attacks=[{kind: fgsm, eps: 8/255}]", "eval.max_samples=16",
                             "eval.worst_case.enabled=false", "eval.checks.enabled=false"]
    held = run_experiment(load_config(None, over + ["data.val_size=16", "data.split_seed=2"]), run_dir=tmp_path / "v")
    assert "val_acc" in held.history[-1] and "test_acc" not in held.history[-1]
    splits = {"train": 48, "validation": 16, "test": 16, "validation_source": "train", "split_seed": 2}
    assert held.results["splits"] == splits
    assert json.loads((tmp_path / "v" / "results.json").read_text())["splits"] == splits
    assert json.loads((tmp_path / "v" / "run.json").read_text())["splits"] == splits
    tags = MlflowClient(tracking_uri).get_run(held.mlflow_run_id).data.tags
    assert tags["rkd.split.validation"] == "16" and tags["rkd.split.validation_source"] == "train"
    assert tags["rkd.split.train"] == "48" and tags["rkd.split.test"] == "16"

    plain = run_experiment(load_config(None, over), run_dir=tmp_path / "t")
    assert "test_acc" in plain.history[-1] and "val_acc" not in plain.history[-1]
    assert plain.results["splits"] == {"train": 64, "validation": 0, "test": 16, "validation_source": None,
                                       "split_seed": 0}


def test_method_epoch_eval_hooks_see_the_split_and_are_renamed_without_one():
    from rkd.config import load_config
    from rkd.experiment.builders import build_data, build_model
    from rkd.experiment.pipeline import epoch_eval_data, epoch_eval_fn

    cfg = load_config("preset:digits_mae", ["data.dataset=synthetic", "data.limit_train=40", "data.limit_test=24",
                                            "data.val_size=8", "model.embed_dim=16", "model.depth=1",
                                            "model.num_heads=2", "model.decoder_embed_dim=8",
                                            "model.decoder_num_heads=2"])
    d = build_data(cfg.data)
    data, split = epoch_eval_data(d.test, d.validation)
    assert split == "val" and data.fingerprint() == d.validation.fingerprint()
    model = build_model(cfg)
    assert set(epoch_eval_fn(cfg, d.test, "cpu", d.validation)(model)) == {"val_mae_loss"}
    assert set(epoch_eval_fn(cfg, d.test, "cpu")(model)) == {"test_mae_loss"}
    data, split = epoch_eval_data(d.test)
    assert split == "test" and data.fingerprint() == d.test.fingerprint()


# ---- registry ------------------------------------------------------------------------------------


def test_registry_and_info(tmp_path):
    assert set(list_datasets()) >= {"digits", "synthetic", "cifar10", "cifar100", "svhn", "imagenet32"}
    with pytest.raises(ValueError) as e:
        build_dataset("mnist", root=tmp_path)
    assert "cifar10" in str(e.value) and "digits" in str(e.value)
    with pytest.raises(ValueError):
        dataset_info("mnist")
    with pytest.raises(ValueError):
        build_dataset("cifar10", train=True)  # root needed
    info = dataset_info("cifar100")
    assert info.num_classes == 100 and info.image_shape == (3, 32, 32) and info.norm == "cifar100"
    assert dataset_info("digits").hflip is False and dataset_info("svhn").hflip is False
    from rkd.models import get_normalization

    for name in list_datasets():
        get_normalization(dataset_info(name).norm)  # every dataset has normalisation stats


# --------------------------------------------------- masking (MACD's student input, rkd/data/masking.py)
@pytest.mark.parametrize("patch,ratio", [(8, 0.7), (4, 0.65), (2, 0.8), (16, 0.75)])
def test_exactly_round_ratio_l_patches_zeroed_per_sample(patch, ratio):
    x = torch.rand(6, 3, 32, 32) + 0.1  # strictly positive: zeros come from the mask only
    out, mask = random_patch_mask(x, patch, ratio, torch.Generator().manual_seed(0))
    num = (32 // patch) ** 2
    assert mask.shape == (6, 32 // patch, 32 // patch)
    assert (mask.flatten(1).sum(1) == round(ratio * num)).all()
    # a zeroed square is all zeros in every channel, a kept one is untouched
    full = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1).expand_as(x).bool()
    assert (out[full] == 0).all() and torch.equal(out[~full], x[~full])
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 1  # masks drawn per sample


def test_seeded_generator_repeats_and_ratio_zero_keeps_the_image():
    x = torch.rand(2, 3, 16, 16)
    a = random_patch_mask(x, 4, 0.5, torch.Generator().manual_seed(3))[1]
    b = random_patch_mask(x, 4, 0.5, torch.Generator().manual_seed(3))[1]
    assert torch.equal(a, b)
    assert torch.equal(random_patch_mask(x, 4, 0.0)[0], x)
    with pytest.raises(ValueError):
        random_patch_mask(x, 5, 0.5)
    with pytest.raises(ValueError):
        random_patch_mask(x, 4, 1.0)


def test_paired_dataset_keeps_clean_and_copy_aligned_through_augmentation():
    from rkd.data import paired_dataset

    base = make_synthetic(True, n_train=12, num_classes=3, image_size=16, seed=1)
    other = 1.0 - base.tensors()[0]  # a recognisable partner for every image
    pd = paired_dataset(base.with_transform(train_transform(flip=True)), other)
    assert pd.image_shape == (6, 16, 16) and torch.equal(pd.labels, base.labels)
    torch.manual_seed(0)
    x, _ = pd.get_batch(range(12), apply_transform=True)
    clean, copy = x.chunk(2, dim=1)
    assert not torch.equal(clean, base.tensors()[0])  # augmentation moved the images ...
    inside = clean > 0  # (zero padding is the same for both halves)
    assert torch.allclose(copy[inside], 1.0 - clean[inside], atol=1e-6)  # ... and each partner with its image
    with pytest.raises(ValueError, match="match"):
        paired_dataset(base, other[:5])


# ---- input shifts (rkd/data/shifts.py) ----------------------------------------------------------
def test_rot90_turns_a_known_image_counter_clockwise_and_composes_to_the_identity():
    from rkd.data.shifts import shift_images

    x = torch.tensor([[0.0, 0.1], [0.2, 0.3]]).expand(2, 3, 2, 2)  # (N, C, H, W), row 0 on top
    assert torch.equal(shift_images(x, "rot90")[0, 0], torch.tensor([[0.1, 0.3], [0.0, 0.2]]))
    assert torch.equal(shift_images(x, "rot180")[1, 2], torch.tensor([[0.3, 0.2], [0.1, 0.0]]))
    assert torch.equal(shift_images(x, "rot270")[0, 1], torch.tensor([[0.2, 0.0], [0.3, 0.1]]))
    y = torch.rand(4, 3, 8, 8)
    assert torch.equal(shift_images(shift_images(y, "rot90"), "rot270"), y)
    assert torch.equal(shift_images(shift_images(y, "rot180"), "rot180"), y)
    with pytest.raises(ValueError, match="square"):
        shift_images(torch.rand(1, 3, 4, 6), "rot90")


def test_invert_maps_0_and_1_onto_each_other_in_both_storages_and_none_is_the_identity():
    from rkd.data.shifts import shift_images

    x = torch.tensor([0.0, 0.25, 1.0]).reshape(1, 1, 1, 3)
    assert torch.equal(shift_images(x, "invert"), torch.tensor([1.0, 0.75, 0.0]).reshape(1, 1, 1, 3))
    u = torch.tensor([0, 55, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    inv = shift_images(u, "invert")
    assert inv.dtype == torch.uint8 and inv.flatten().tolist() == [255, 200, 0]
    assert shift_images(x, "none") is x
    with pytest.raises(ValueError, match="unknown shift 'rot45'"):
        shift_images(x, "rot45")


def test_shift_dataset_keeps_labels_and_transform_and_the_schema_lists_the_same_shifts():
    from rkd.config.schema import SHIFTS as SCHEMA_SHIFTS
    from rkd.data.shifts import SHIFTS, shift_dataset

    assert SHIFTS == SCHEMA_SHIFTS
    ds = make_synthetic(True, n_train=6, num_classes=3, image_size=8, seed=0).with_transform(train_transform())
    assert shift_dataset(ds, "none") is ds
    rot = shift_dataset(ds, "rot90")
    assert torch.equal(rot.images, torch.rot90(ds.images, 1, dims=(2, 3))) and rot.images.dtype == ds.images.dtype
    assert torch.equal(rot.labels, ds.labels) and rot.transform is ds.transform and rot.num_classes == 3


def test_build_data_shifts_train_validation_and_test_alike():
    from rkd.experiment.builders import build_data

    plain, rot = build_data(_data_cfg(val_size=16)), build_data(_data_cfg(val_size=16, shift="rot90"))
    for a, b in ((plain.train, rot.train), (plain.validation, rot.validation), (plain.test, rot.test)):
        assert torch.equal(b.images, torch.rot90(a.images, 1, dims=(2, 3)))  # the same images, in the same order
        assert torch.equal(a.labels, b.labels)
    inv = build_data(_data_cfg(shift="invert")).test
    assert torch.equal(inv.images, 255 - plain.test.images)  # synthetic images are stored as uint8


def test_digits_are_made_at_the_configured_image_size_and_the_mae_patchifies_that_side():
    import torch

    from rkd.config import load_config
    from rkd.experiment import build_datasets, build_model

    cfg = load_config("preset:digits_mae", ["data.image_size=16"])
    train, test, _ = build_datasets(cfg.data)
    assert train.image_shape == test.image_shape == (3, 16, 16)
    model = build_model(cfg)
    mae = getattr(model, "mae", model)  # the MAE itself, or inside the MACD teacher
    assert (mae.img_size, mae.num_patches) == (16, 16)  # patch 4
    with torch.no_grad():
        tokens, _, _ = mae.forward_encoder(torch.stack([test[i][0] for i in range(2)]), 0.0)
    assert tokens.shape[:2] == (2, 1 + 16)  # [CLS] + one token per patch of the 16 px image
    # the 32 px default is the images the presets always made
    assert build_datasets(load_config("preset:digits").data)[1].image_shape == (3, 32, 32)
