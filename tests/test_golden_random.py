"""Golden model == PyTorch integer evaluation on random networks, and the golden kernels'
float64 fast paths == plain int64 arithmetic at the edges of their exactness bound."""

import numpy as np
import pytest

from shiftacc.models import golden, netgen

torch = pytest.importorskip("torch")
from shiftacc.models.int_eval import run_int  # noqa: E402  (needs torch)


def test_golden_equals_int_eval_random_networks(np_rng):
    for _ in range(25):
        model = netgen.random_model(
            np_rng, size=tuple(int(v) for v in np_rng.integers(2, 12, 2)),
            in_channels=int(np_rng.integers(1, 4)), blocks=int(np_rng.integers(1, 4)),
            radius=int(np_rng.integers(1, 3)), max_width=int(np_rng.integers(3, 70)))
        n = int(np_rng.integers(1, 200))
        images = np_rng.integers(0, 256, (n,) + model.input_shape).astype(np.uint8)
        chunk = int(np_rng.integers(1, 64))
        logits, taps = golden.run(model, images, taps=True, chunk=chunk)
        assert logits.dtype == np.int64 and logits.shape == (n, len(model.classes))
        assert np.array_equal(logits, run_int(model, images))
        # Chunking and threads never change a value; taps have every image of every layer.
        assert np.array_equal(golden.run(model, images, chunk=n, threads=1), logits)
        assert np.array_equal(golden.run(model, images, chunk=chunk, threads=3), logits)
        assert [t.shape[1:] for t in taps] == model.shapes()[1:]
        assert all(t.dtype == np.int64 and t.shape[0] == n for t in taps)


def test_golden_empty_batch(np_rng):
    model = netgen.random_model(np_rng)
    logits, taps = golden.run(model, np.zeros((0,) + model.input_shape, np.uint8), taps=True)
    assert logits.shape == (0, len(model.classes)) and len(taps) == len(model.layers)


def _conv_ref(x, w, b, stride):
    """Plain int64 (no BLAS) reference of the conv accumulator."""
    xs = x[:, ::stride, ::stride, :].astype(np.int64)
    return np.einsum("nhwi,oi->nhwo", xs, w.astype(np.int64)) + b.astype(np.int64)


@pytest.mark.parametrize("xmax,wmag", [(255, 128), (1 << 20, 1 << 20), (1 << 30, 1 << 20)])
def test_conv1x1_exact_at_and_beyond_float_bound(np_rng, xmax, wmag):
    # (255, 128): the largest 8-bit operands, float64 path; (2**20, 2**20) * 64 channels
    # = 2**46: still float64; (2**30, 2**20) * 64 = 2**56: beyond 2**53, the int64 path.
    cin, cout = 64, 5
    x = np_rng.integers(0, xmax + 1, (3, 5, 5, cin))
    x[0, 0, 0, :] = xmax
    w = np_rng.integers(-wmag, wmag, (cout, cin))
    w[0, :] = -wmag
    b = np_rng.integers(-1000, 1000, cout)
    for stride in (1, 2):
        got = golden.conv1x1(x, w, b, stride)
        assert got.dtype == np.int64
        assert np.array_equal(got, _conv_ref(x, w, b, stride))


def test_conv1x1_requant_exact_with_large_m_and_sh(np_rng):
    # acc up to +-2**31, m up to 65535, sh up to 47: every requant path must agree with
    # golden.requant (pure int64) on the raw accumulator.
    cin, cout = 300, 6
    x = np_rng.integers(0, 256, (4, 3, 3, cin))
    w = np_rng.integers(-128, 128, (cout, cin))
    b = np_rng.integers(-(1 << 31), (1 << 31) - 300 * 255 * 128, cout)
    m = np.array([1, 2, 65535, 40000, 3, 65535])
    sh = np.array([1, 47, 47, 20, 2, 30])
    acc = _conv_ref(x, w, b, 1)
    for act_bits in (4, 8):
        want = golden.requant(acc, m, sh, act_bits)
        assert np.array_equal(golden.conv1x1(x, w, b, 1, m, sh, act_bits), want)
