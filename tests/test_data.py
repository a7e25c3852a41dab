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
