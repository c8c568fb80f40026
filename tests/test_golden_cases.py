"""Hand-computed cases of DESIGN.md §1 (version 1): the expected numbers are written out
literally, with the arithmetic beside them, and checked against both the NumPy golden model
(models/golden.py) and the independent PyTorch integer evaluation (models/int_eval.py).

Each case is a tiny network run through ``golden.run`` and ``int_eval.run_int``. Neither runs
the validator, so a case may end in any op: the "logits" are then the last layer's output,
flattened (NHWC by golden, NCHW by run_int; both are reshaped to [H][W][C] here).
"""

import numpy as np
import pytest

from shiftacc.models import golden
from shiftacc.models.artifact import Layer, Model

torch = pytest.importorskip("torch")
from shiftacc.models.int_eval import round_shift_t, run_int  # noqa: E402  (needs torch)


def run_both(layers, image_hwc, act_bits=8):
    """Output [H][W][C] of the last layer, from golden and from int_eval (must agree)."""
    image = np.asarray(image_hwc, np.uint8)
    model = Model(name="case", input_shape=image.shape, input_bits=8, act_bits=act_bits,
                  weight_bits=8, classes=["x"], layers=layers)
    h, w, c = model.shapes()[-1]
    g = golden.run(model, image[None]).reshape(h, w, c)
    t = run_int(model, image[None]).reshape(c, h, w).transpose(1, 2, 0)
    assert g.dtype == np.int64
    assert np.array_equal(g, t), f"golden {g.tolist()} != int_eval {t.tolist()}"
    return g.tolist()


def accumulators(accs, m, sh):
    """One conv1x1 on a 1x1x1 zero pixel whose accumulators are exactly ``accs`` (= bias)."""
    k = len(accs)
    return [Layer("conv1x1", stride=1, weight=np.zeros((k, 1), np.int8),
                  bias=np.array(accs, np.int32), m=np.array(m, np.uint16),
                  sh=np.array(sh, np.uint8))]


# -- requant: q = (acc * m + (1 << (sh - 1))) >> sh (floor), then clamp [0, 2**act_bits - 1]
ROUND_SHIFT = [
    # (acc, m, sh, expected before the clamp)
    (-3, 1, 1, -1),   # (-3 + 1) >> 1 = -2 >> 1 = -1        (floor(-1.0))
    (-5, 1, 2, -1),   # (-5 + 2) >> 2 = -3 >> 2 = -1        (floor(-0.75); truncation gives 0)
    (-7, 1, 2, -2),   # (-7 + 2) >> 2 = -5 >> 2 = -2        (floor(-1.25); truncation gives -1)
    (-6, 3, 2, -4),   # (-18 + 2) >> 2 = -16 >> 2 = -4
    (-1, 1, 1, 0),    # (-1 + 1) >> 1 = 0 >> 1 = 0
    (5, 3, 2, 4),     # (15 + 2) >> 2 = 17 >> 2 = 4          (4.25)
    (6, 1, 2, 2),     # (6 + 2) >> 2 = 8 >> 2 = 2            (1.5: ties round up)
    (2, 1, 2, 1),     # (2 + 2) >> 2 = 1                     (0.5 -> 1)
    (1, 1, 2, 0),     # (1 + 2) >> 2 = 3 >> 2 = 0            (0.25 -> 0)
    (1000, 65535, 47, 0),   # 65535000 + 2**46 < 2**47: 0
    (-(1 << 31), 65535, 47, -1),  # -2**31 * 65535 + 2**46 = -2**47 + 2**31 + 2**46
    #                               = -70366596694016 = -0.49998 * 2**47 -> floor: -1
]


def test_round_shift_floor_before_clamp():
    acc, m, sh, want = (np.array(col) for col in zip(*ROUND_SHIFT))
    assert golden.round_shift(acc, m, sh).tolist() == want.tolist()
    got = round_shift_t(torch.tensor(acc).view(1, -1, 1, 1), m, sh)
    assert got.flatten().tolist() == want.tolist()


def test_requant_negative_accumulators_clamp_to_zero():
    # acc -3, -5, -7, -1 all floor to <= 0 and clamp to 0; acc 5 (m 3, sh 2) -> 4.
    assert run_both(accumulators([-3, -5, -7, -1, 5], [1, 1, 1, 1, 3], [1, 2, 2, 1, 2]),
                    [[[0]]]) == [[[0, 0, 0, 0, 4]]]


def test_requant_clamp_act_bits_8():
    # (300 + 1) >> 1 = 150;  (509 + 1) >> 1 = 255;  (511 + 1) >> 1 = 256 -> 255;
    # (600 + 1) >> 1 = 300 -> 255;  (17 * 3 + 2) >> 2 = 53 >> 2 = 13
    layers = accumulators([300, 509, 511, 600, 17], [1, 1, 1, 1, 3], [1, 1, 1, 1, 2])
    assert run_both(layers, [[[0]]], act_bits=8) == [[[150, 255, 255, 255, 13]]]


def test_requant_clamp_act_bits_4():
    # (28 + 1) >> 1 = 14;  (29 + 1) >> 1 = 15;  (31 + 1) >> 1 = 16 -> 15;
    # (40 + 1) >> 1 = 20 -> 15;  (-3 + 1) >> 1 = -1 -> 0
    layers = accumulators([28, 29, 31, 40, -3], [1] * 5, [1] * 5)
    assert run_both(layers, [[[0]]], act_bits=4) == [[[14, 15, 15, 15, 0]]]


def grid(h, w, f):
    """An [H][W][1] image with pixel f(y, x)."""
    return [[[f(y, x)] for x in range(w)] for y in range(h)]


def test_conv1x1_stride2_odd_size_samples_even_rows_and_columns():
    # 5x4 image, pixel 10*y + x; stride 2: H_out = ceil(5/2) = 3 (rows 0, 2, 4),
    # W_out = ceil(4/2) = 2 (columns 0, 2). acc = 2 * pixel - 1 (weight 2, bias -1), raw.
    conv = Layer("conv1x1", stride=2, weight=np.array([[2]], np.int8),
                 bias=np.array([-1], np.int32))
    assert run_both([conv], grid(5, 4, lambda y, x: 10 * y + x)) == [
        [[-1], [3]],       # 2*0-1, 2*2-1
        [[39], [43]],      # 2*20-1, 2*22-1
        [[79], [83]],      # 2*40-1, 2*42-1
    ]


def test_conv1x1_channels_and_bias():
    # One 1x1 pixel with channels (3, 5): acc[o] = bias[o] + w[o,0]*3 + w[o,1]*5
    # o=0: 10 + 2*3 + (-1)*5 = 11;  o=1: -20 + (-128)*3 + 127*5 = 231
    conv = Layer("conv1x1", stride=1, weight=np.array([[2, -1], [-128, 127]], np.int8),
                 bias=np.array([10, -20], np.int32))
    assert run_both([conv], [[[3, 5]]]) == [[[11, 231]]]


def test_maxpool2_floors_odd_sizes():
    # 5x5 image, pixel 10*y + x except pixel (0, 0) = 99. Output floor(5/2) = 2 x 2:
    # block (0,0) = max(99, 1, 10, 11) = 99; block (0,1) = max(2, 3, 12, 13) = 13;
    # block (1,0) = max(20, 21, 30, 31) = 31; block (1,1) = max(22, 23, 32, 33) = 33.
    # Row 4 and column 4 (up to 44, the largest pixel but one) are dropped.
    image = grid(5, 5, lambda y, x: 99 if (y, x) == (0, 0) else 10 * y + x)
    assert run_both([Layer("maxpool2")], image) == [[[99], [13]], [[31], [33]]]


GAP_IMAGE = [  # 2x3 image, 2 channels: channel 0 sums to 21, channel 1 to 17
    [[1, 10], [2, 0], [3, 0]],
    [[4, 0], [5, 0], [6, 7]],
]


def test_gap_sum_then_requant():
    # s = (1+2+3+4+5+6, 10+7) = (21, 17); m 3, sh 3:
    # (21*3 + 4) >> 3 = 67 >> 3 = 8;  (17*3 + 4) >> 3 = 55 >> 3 = 6
    assert run_both([Layer("gap", m=3, sh=3)], GAP_IMAGE) == [[[8, 6]]]


def test_gap_clamp_act_bits_4_and_8():
    # m 3, sh 1: (21*3 + 1) >> 1 = 64 >> 1 = 32;  (17*3 + 1) >> 1 = 52 >> 1 = 26
    assert run_both([Layer("gap", m=3, sh=1)], GAP_IMAGE, act_bits=8) == [[[32, 26]]]
    assert run_both([Layer("gap", m=3, sh=1)], GAP_IMAGE, act_bits=4) == [[[15, 15]]]


def test_shift_zero_padding_dy_plus_one_takes_from_row_below():
    # 3x3 image, every one of the 5 channels = [[1, 2, 3], [4, 5, 6], [7, 8, 9]].
    # out[y, x, c] = in[y + dy, x + dx, c] inside the image, else 0.
    shifts = np.array([[1, 0], [-1, 0], [0, 1], [-1, -1], [2, 0]], np.int8)
    image = [[[1 + 3 * y + x] * 5 for x in range(3)] for y in range(3)]
    out = run_both([Layer("shift", shifts=shifts)], image)
    channel = [[[out[y][x][c] for x in range(3)] for y in range(3)] for c in range(5)]
    assert channel[0] == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]   # dy=+1: the row below
    assert channel[1] == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]   # dy=-1: the row above
    assert channel[2] == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]   # dx=+1: the pixel to the right
    assert channel[3] == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]   # (dy, dx) = (-1, -1)
    assert channel[4] == [[7, 8, 9], [0, 0, 0], [0, 0, 0]]   # dy=+2: two rows below


def test_replicate_channel_order():
    # out[e*C + c] = in[c]: channels (5, 6, 7) replicated 3 times are 5,6,7,5,6,7,5,6,7
    # (not 5,5,5,6,6,6,7,7,7).
    assert run_both([Layer("replicate", factor=3)], [[[5, 6, 7]]]) == [
        [[5, 6, 7, 5, 6, 7, 5, 6, 7]]]


def test_replicate_then_shift_gives_each_copy_its_shift():
    # 1x3 image (1, 2, 3), one channel; replicate(2): channel e is copy e.
    # shift copy 0 by dx=+1 -> (2, 3, 0); copy 1 by dx=-1 -> (0, 1, 2).
    layers = [Layer("replicate", factor=2),
              Layer("shift", shifts=np.array([[0, 1], [0, -1]], np.int8))]
    assert run_both(layers, [[[1], [2], [3]]]) == [[[2, 0], [3, 1], [0, 2]]]
