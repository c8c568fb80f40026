"""Image data sets as raw ``uint8`` NHWC arrays, exactly what the accelerator receives.

Every loader returns ``(images uint8 [N, H, W, C], labels int64 [N])``: no normalisation
happens here, because the hardware sees raw pixels and any normalisation is folded into the
first convolution at export (DESIGN.md §1).

Data sets
---------
``digits``
    scikit-learn's bundled ``load_digits()`` (1,797 real 8×8 handwritten digits, 17 grey
    levels). Pixel = ``uint8(min(16 * v, 255))``. The split is fixed project-wide: the
    **last 360 samples** (in ``load_digits()`` order) are the test split, the first 1,437 are
    for training and validation.
``mnist``, ``fashion-mnist``
    torchvision's on-disk layout under ``--data-dir``: ``MNIST/raw/`` or
    ``FashionMNIST/raw/`` holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (optionally
    ``.gz``). The IDX format is parsed here; torchvision is not needed.
``cifar10``
    ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch`` (Python pickles). They are
    read with a restricted unpickler that only allows the NumPy array reconstruction the
    files need, so a hostile pickle cannot run code.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "CLASSES", "DIGITS_TEST", "load_split", "load_images_npy",
           "read_idx"]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
DIGITS_TEST = 360  # the last 360 samples of load_digits() are the test split

CLASSES = {
    "digits": [str(i) for i in range(10)],
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                      "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"],
}


def _digits(split):
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.minimum(16 * d.images, 255).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    n = len(labels) - DIGITS_TEST
    if split == "train":
        return images[:n], labels[:n]
    return images[n:], labels[n:]


def read_idx(path):
    """Read an IDX file (the MNIST format), optionally gzip-compressed.

    Parameters
    ----------
    path : Path

    Returns
    -------
    ndarray of uint8

    Raises
    ------
    ValueError
        Bad magic number, unsupported element type, or a truncated file.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: damaged gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{raw[2]:02x} unsupported (need ubyte)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: IDX header says {list(dims)} but holds {data.size} bytes")
    return data.reshape(dims)


def _find(folder, stem):
    for name in (stem, stem + ".gz"):
        p = folder / name
        if p.exists():
            return p
    raise FileNotFoundError(f"{folder / stem}[.gz] not found")


def _mnist_like(root, sub, split):
    folder = root / sub / "raw"
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: images {list(images.shape)} and labels "
                         f"{list(labels.shape)} do not match")
    return images[..., None].copy(), labels.astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR-10 batch (NumPy arrays) needs."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _cifar_batch(path):
    with open(path, "rb") as f:
        d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    data = np.asarray(d[b"data"], np.uint8)
    labels = np.asarray(d[b"labels"], np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: expected data [N, 3072] with N labels, got "
                         f"{list(data.shape)} and {len(labels)} labels")
    # Stored channel-planar (R plane, G plane, B plane); the accelerator wants NHWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _cifar10(root, split):
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = []
    for n in names:
        p = folder / n
        if not p.exists():
            raise FileNotFoundError(f"{p} not found")
        parts.append(_cifar_batch(p))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_split(dataset, split="test", data_dir=None):
    """Load one split of a data set as raw pixels.

    Parameters
    ----------
    dataset : str
        One of :data:`DATASETS`.
    split : {"train", "test"}
        For ``digits``, "train" is the first 1,437 samples and "test" the last 360.
    data_dir : str or Path, optional
        Folder in torchvision's on-disk layout; required for every data set but ``digits``.

    Returns
    -------
    images : ndarray of uint8 [N, H, W, C]
    labels : ndarray of int64 [N]

    Raises
    ------
    ValueError
        Unknown data set or split, missing ``data_dir``, or files missing/malformed (the
        message names the file expected).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r} (use 'train' or 'test')")
    if dataset == "digits":
        return _digits(split)
    if data_dir is None:
        raise ValueError(f"dataset {dataset!r} is read from a local folder: pass --data-dir "
                         f"(torchvision's layout, e.g. DIR/MNIST/raw/...)")
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"--data-dir {root}: no such folder")
    try:
        if dataset == "mnist":
            return _mnist_like(root, "MNIST", split)
        if dataset == "fashion-mnist":
            return _mnist_like(root, "FashionMNIST", split)
        return _cifar10(root, split)
    except FileNotFoundError as e:
        raise ValueError(f"dataset {dataset!r}: {e} (expected torchvision's on-disk layout "
                         f"under {root})") from None
    except (pickle.UnpicklingError, KeyError, EOFError, struct.error) as e:
        raise ValueError(f"dataset {dataset!r} under {root}: malformed file ({e})") from None


def load_images_npy(path, model=None):
    """Load an image batch from a ``.npy`` file.

    Parameters
    ----------
    path : str or Path
        A ``uint8`` array ``[N, H, W, C]``, or ``[N, H, W]`` when C == 1.
    model : Model, optional
        When given, the shape must match ``model.input_shape`` and pixel values its
        ``input_bits``.

    Returns
    -------
    ndarray of uint8 [N, H, W, C]

    Raises
    ------
    ValueError
        Missing/unreadable file, wrong dtype, rank or shape.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(images, np.ndarray):
        raise ValueError(f"{path}: expected a .npy array, not an .npz archive")
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: images must be uint8, got dtype {images.dtype}")
    if images.ndim == 3:
        if model is not None and model.input_shape[2] != 1:
            raise ValueError(f"{path}: images have shape {list(images.shape)}; the model "
                             f"has {model.input_shape[2]} channels so [N, H, W, C] is needed")
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{path}: images have shape {list(images.shape)}, expected "
                         f"[N, H, W, C] (or [N, H, W] for one channel)")
    if model is not None:
        h, w, c = model.input_shape
        if tuple(images.shape[1:]) != (h, w, c):
            raise ValueError(f"{path}: images have shape {list(images.shape)}, the model "
                             f"expects [N, {h}, {w}, {c}]")
        if images.size and int(images.max()) >= (1 << model.input_bits):
            raise ValueError(f"{path}: pixel values reach {int(images.max())}, above the "
                             f"model's {model.input_bits}-bit input")
    return images
