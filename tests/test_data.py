"""Tests of graphfilters.data: digits, the long-range task, the CIFAR loader and the loaders."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from graphfilters.data import (
    ImageData,
    augment_batch,
    get_dataset,
    load_cifar,
    load_digits,
    long_range_task,
)

# ------------------------------------------------------------------------------------ digits


def test_digits_shapes_split_and_normalization():
    data = load_digits(size=16, seed=0)
    assert data.x_train.shape == (1347, 1, 16, 16) and data.x_test.shape == (450, 1, 16, 16)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert set(data.y_train.tolist()) == set(range(10)) and data.num_classes == 10
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    assert data.flip_ok is False
    x, y = data.tensors("train")
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3
    assert y.equal(data.y_train)


def test_digits_seeded_split():
    a, b, c = load_digits(size=8, seed=3), load_digits(size=8, seed=3), load_digits(size=8, seed=4)
    assert a.x_train.equal(b.x_train) and a.y_test.equal(b.y_test)
    assert not a.y_test.equal(c.y_test)
    assert load_digits(size=32).x_train.shape[-2:] == (32, 32)
    with pytest.raises(ValueError, match="size"):
        load_digits(size=2)


def test_loaders_batches_shuffle_and_augmentation():
    data = load_digits(size=16, seed=0)
    train, test = data.loaders(batch_size=100, seed=1)
    batches = list(train)
    assert len(batches) == 14 and batches[0][0].shape == (100, 1, 16, 16)
    assert sum(len(y) for _, y in batches) == 1347
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == sorted(data.y_train.tolist())
    assert not labels.equal(data.y_train)  # shuffled
    again = torch.cat([y for _, y in data.loaders(batch_size=100, seed=1)[0]])
    assert again.equal(labels)  # seeded
    x_test = torch.cat([x for x, _ in test])
    torch.testing.assert_close(x_test, data.tensors("test")[0])  # test loader: no augmentation

    torch.manual_seed(0)
    aug, _ = data.loaders(batch_size=2000, augment=True, seed=1)
    plain, _ = data.loaders(batch_size=2000, augment=False, seed=1)
    (xa, ya), (xp, yp) = next(iter(aug)), next(iter(plain))
    assert ya.equal(yp) and xa.shape == xp.shape and not torch.allclose(xa, xp)


def test_augment_batch_is_a_padded_crop_or_flip():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 5, 5)
    assert augment_batch(x, padding=0, flip=False).equal(x)
    out = augment_batch(x, padding=2, flip=True)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(6):
        candidates = [padded[b, :, i:i + 5, j:j + 5] for i in range(5) for j in range(5)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(out[b].equal(c) for c in candidates)
    flipped = augment_batch(x, padding=0, flip=True)
    assert all(flipped[b].equal(x[b]) or flipped[b].equal(x[b].flip(-1)) for b in range(6))
    with pytest.raises(ValueError, match="B, C, H, W"):
        augment_batch(torch.zeros(3, 4, 4))


# ------------------------------------------------------------------------- long-range task


def test_long_range_deterministic_and_balanced():
    a = long_range_task(n_train=200, n_test=50, size=16, seed=5)
    b = long_range_task(n_train=200, n_test=50, size=16, seed=5)
    c = long_range_task(n_train=200, n_test=50, size=16, seed=6)
    assert a.x_train.equal(b.x_train) and a.y_test.equal(b.y_test)
    assert not a.x_train.equal(c.x_train)
    assert a.num_classes == 2 and a.classes == ("different", "same")
    for y in (a.y_train, a.y_test):
        assert abs(float(y.float().mean()) - 0.5) <= 0.05


def test_long_range_labels_match_the_marks():
    """Without noise, count exact template matches: 'same' images contain one pattern twice."""
    data = long_range_task(n_train=300, n_test=10, size=16, mark_size=3, n_patterns=5,
                           noise=0.0, min_distance=8, seed=0)
    x = data.x_train[:, 0]
    windows = x.unfold(1, 3, 1).unfold(2, 3, 1).reshape(len(x), -1, 9)  # (N, positions, 9)
    patterns = torch.unique(windows[(windows.abs() == 1).all(-1)], dim=0)
    assert len(patterns) == 5
    counts = (windows[:, :, None, :] == patterns[None, None]).all(-1).sum(1)  # (N, patterns)
    assert (counts.sum(1) == 2).all()  # exactly two marks per image
    same = (counts.max(1).values == 2).long()
    assert same.equal(data.y_train)


def test_long_range_not_solvable_from_pixel_statistics():
    data = long_range_task(n_train=2000, n_test=1000, size=16, noise=0.5, seed=1)
    x = data.x_train.reshape(len(data.y_train), -1).double()
    y = data.y_train
    assert abs(float(y.double().mean()) - 0.5) <= 0.05
    m0, m1 = x[y == 0].mean(0), x[y == 1].mean(0)
    pooled = x.std(0)
    se = pooled * (1.0 / (y == 0).sum() + 1.0 / (y == 1).sum()) ** 0.5
    z = (m1 - m0) / se
    assert float(z.abs().max()) < 5.0  # identical per-pixel means within noise (256 pixels)
    v0, v1 = x[y == 0].var(0), x[y == 1].var(0)
    assert float(((v1 - v0).abs() / pooled**2).max()) < 0.25  # and similar variances

    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300).fit(x.numpy(), y.numpy())
    acc = clf.score(data.x_test.reshape(len(data.y_test), -1).numpy(), data.y_test.numpy())
    assert acc < 0.6  # a linear model on pixels is at chance


def test_long_range_argument_errors():
    with pytest.raises(ValueError, match="n_patterns"):
        long_range_task(n_patterns=1)
    with pytest.raises(ValueError, match="min_distance"):
        long_range_task(size=16, min_distance=15)


# ------------------------------------------------------------------------------------- CIFAR


def _write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_cifar10(folder, per_batch=4, n_test=3):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        _write(folder / f"data_batch_{i}", {
            b"batch_label": b"training batch",
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * per_batch,
        })
    _write(folder / "test_batch", {
        b"labels": list(range(n_test)),
        b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
    })
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    _write(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})


def test_cifar10_from_fake_pickles(tmp_path):
    _fake_cifar10(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the folder or its parent
        data = load_cifar(root, "cifar10")
        assert data.x_train.shape == (20, 3, 32, 32) and data.x_train.dtype == torch.uint8
        assert data.x_test.shape == (3, 3, 32, 32) and data.y_test.tolist() == [0, 1, 2]
        assert data.classes[0] == "airplane" and data.num_classes == 10
    # image layout: row-major (channel, row, column), as in the official description
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")[b"data"][0]
    assert data.x_train[0].flatten().numpy().tolist() == first.tolist()
    train, test = data.loaders(batch_size=8, augment=True)
    x, y = next(iter(train))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    xt, _ = data.tensors("train")
    assert abs(float(xt.mean())) < 1e-4
    small = get_dataset({"name": "cifar10", "root": str(tmp_path), "n_train": 7, "n_test": 2})
    assert len(small.y_train) == 7 and len(small.y_test) == 2
    assert get_dataset(small.describe()).x_train.equal(small.x_train)


def test_cifar100_from_fake_pickles(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 2)):
        _write(tmp_path / split, {
            b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        })
    _write(tmp_path / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)],
                               b"coarse_label_names": [b"s%d" % i for i in range(20)]})
    fine = load_cifar(tmp_path, "cifar100")
    coarse = load_cifar(tmp_path, "cifar100", label_mode="coarse")
    assert fine.num_classes == 100 and fine.classes[3] == "c3"
    assert coarse.num_classes == 20 and coarse.classes[3] == "s3"
    assert fine.x_train.shape == (6, 3, 32, 32)


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.*test_batch"):
        load_cifar(tmp_path / "nowhere", "cifar10")
    _fake_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing in .*data_batch_3"):
        load_cifar(tmp_path, "cifar10")
    with pytest.raises(FileNotFoundError, match="train, test"):
        load_cifar(tmp_path, "cifar100")
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar(tmp_path, "svhn")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_cifar_refuses_code_in_pickles(tmp_path):
    _fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    _write(tmp_path / "data_batch_2", {b"data": _Payload(marker), b"labels": []})
    with pytest.raises(ValueError, match="not a CIFAR"):
        load_cifar(tmp_path, "cifar10")
    assert not marker.exists()
    with open(tmp_path / "data_batch_2", "rb") as f:  # the payload is real: plain pickle runs it
        pickle.load(f, encoding="bytes")
    assert marker.exists()


def test_cifar_bad_contents(tmp_path):
    _fake_cifar10(tmp_path)
    _write(tmp_path / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="3072"):
        load_cifar(tmp_path, "cifar10")


def test_get_dataset_names():
    with pytest.raises(ValueError, match="known"):
        get_dataset("mnist")
    data = get_dataset("long_range", n_train=10, n_test=4, size=16)
    assert isinstance(data, ImageData) and get_dataset(data) is data
    again = get_dataset(data.describe())
    assert again.x_train.equal(data.x_train)
