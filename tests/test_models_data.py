"""Data loaders (models/data.py): digits split, MNIST/Fashion-MNIST IDX, CIFAR-10 pickles."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from shiftacc.models.data import CLASSES, load_images_npy, load_split, read_idx
from shiftacc.sim.streamtb import make_rng


def np_rng(name):
    return np.random.default_rng(make_rng(name)[1])


def test_digits_split_is_fixed():
    xtr, ytr = load_split("digits", "train")
    xte, yte = load_split("digits", "test")
    assert xtr.shape == (1437, 8, 8, 1) and xte.shape == (360, 8, 8, 1)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int64
    from sklearn.datasets import load_digits
    d = load_digits()
    # image = uint8(min(16 v, 255)); the test split is the last 360 in load_digits() order
    assert np.array_equal(xte[..., 0], np.minimum(16 * d.images[-360:], 255).astype(np.uint8))
    assert np.array_equal(yte, d.target[-360:])
    assert xte.max() == 255 and set(np.unique(yte)) == set(range(10))


def write_idx(path, arr, gz):
    arr = np.asarray(arr, np.uint8)
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


@pytest.mark.parametrize("dataset,sub,gz", [("mnist", "MNIST", False),
                                            ("fashion-mnist", "FashionMNIST", True)])
def test_mnist_like_from_tiny_folder(tmp_path, dataset, sub, gz):
    rng = np_rng(f"idx-{dataset}")
    raw = tmp_path / sub / "raw"
    raw.mkdir(parents=True)
    want = {}
    for split, prefix, n in (("train", "train", 7), ("test", "t10k", 5)):
        x = rng.integers(0, 256, size=(n, 28, 28))
        y = rng.integers(0, 10, size=n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)
        want[split] = (x, y)
    for split in ("train", "test"):
        x, y = load_split(dataset, split, tmp_path)
        assert x.shape == (len(want[split][0]), 28, 28, 1) and x.dtype == np.uint8
        assert np.array_equal(x[..., 0], want[split][0]) and np.array_equal(y, want[split][1])
    assert len(CLASSES[dataset]) == 10


def test_cifar10_from_tiny_folder(tmp_path):
    rng = np_rng("cifar")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    imgs = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)  # NHWC
        y = rng.integers(0, 10, size=3).tolist()
        planar = x.transpose(0, 3, 1, 2).reshape(3, 3072)  # CIFAR stores R, G, B planes
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": planar, b"labels": y, b"batch_label": b"x"}, f)
        imgs[name] = (x, y)
    x, y = load_split("cifar10", "test", tmp_path)
    assert np.array_equal(x, imgs["test_batch"][0]) and y.tolist() == imgs["test_batch"][1]
    x, y = load_split("cifar10", "train", tmp_path)
    assert x.shape == (15, 32, 32, 3)
    assert np.array_equal(x[3:6], imgs["data_batch_2"][0])


def test_cifar_refuses_code_in_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="malformed|refusing"):
        load_split("cifar10", "test", tmp_path)


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        load_split("mnist", "test")
    with pytest.raises(ValueError, match="no such folder"):
        load_split("mnist", "test", tmp_path / "nope")
    with pytest.raises(ValueError, match="MNIST/raw/t10k-images-idx3-ubyte"):
        load_split("mnist", "test", tmp_path)
    with pytest.raises(ValueError, match="cifar-10-batches-py/test_batch"):
        load_split("cifar10", "test", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("imagenet")
    with pytest.raises(ValueError, match="unknown split"):
        load_split("digits", "val")
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)


class FakeModel:
    input_shape = (8, 8, 1)
    input_bits = 8


def test_load_images_npy(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((3, 8, 8), np.uint8))
    assert load_images_npy(p, FakeModel()).shape == (3, 8, 8, 1)
    np.save(p, np.zeros((3, 8, 8, 1), np.uint8))
    assert load_images_npy(p, FakeModel()).shape == (3, 8, 8, 1)
    np.save(p, np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_images_npy(p)
    np.save(p, np.zeros((3, 7, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"expects \[N, 8, 8, 1\]"):
        load_images_npy(p, FakeModel())
    np.save(p, np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        load_images_npy(p)
    with pytest.raises(ValueError, match="no such file"):
        load_images_npy(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a readable"):
        load_images_npy(tmp_path / "junk.npy")
