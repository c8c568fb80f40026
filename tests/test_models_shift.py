"""The shift operator and the four shift-selection methods (models/shift.py)."""

import numpy as np
import pytest
import torch

from shiftacc.models import golden
from shiftacc.models.shift import (METHODS, ShiftLayer, all_shifts, candidates, grouped_shifts,
                          shift_nchw, soft_shift)
from shiftacc.sim.streamtb import make_rng


def np_rng(name):
    """NumPy generator seeded (and printed) by tests.streamtb.make_rng."""
    return np.random.default_rng(make_rng(name)[1])


def roll_and_mask(x, shifts):
    """Independent formulation: torch.roll, then zero what wrapped around."""
    out = torch.zeros_like(x)
    n, c, h, w = x.shape
    for ch in range(c):
        dy, dx = (int(v) for v in shifts[ch])
        r = torch.roll(x[:, ch], shifts=(-dy, -dx), dims=(1, 2))
        # Rows/columns that wrapped around (all of them when the shift exceeds the map).
        if dy > 0:
            r[:, max(h - dy, 0):, :] = 0
        elif dy < 0:
            r[:, :min(-dy, h), :] = 0
        if dx > 0:
            r[:, :, max(w - dx, 0):] = 0
        elif dx < 0:
            r[:, :, :min(-dx, w)] = 0
        out[:, ch] = r
    return out


def test_shift_direction_convention():
    # DESIGN.md §1: dy = +1 takes from the row below, dx = +1 from the column to the right.
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert shift_nchw(x, [[1, 0]])[0, 0].tolist() == [[3, 4, 5], [6, 7, 8], [0, 0, 0]]
    assert shift_nchw(x, [[0, 1]])[0, 0].tolist() == [[1, 2, 0], [4, 5, 0], [7, 8, 0]]
    assert shift_nchw(x, [[-1, -1]])[0, 0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 3, 4]]


@pytest.mark.parametrize("trial", range(6))
def test_shift_matches_roll_and_golden(trial):
    rng = np_rng(f"shift-{trial}")
    n, c = int(rng.integers(1, 4)), int(rng.integers(1, 20))
    h, w = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    r = int(rng.integers(0, 4))
    shifts = rng.integers(-r, r + 1, size=(c, 2))
    x = torch.as_tensor(rng.integers(-50, 50, size=(n, c, h, w))).float()
    got = shift_nchw(x, shifts)
    assert torch.equal(got, roll_and_mask(x, shifts))
    ref = golden.shift(x.permute(0, 2, 3, 1).numpy().astype(np.int64), shifts)
    assert np.array_equal(got.permute(0, 2, 3, 1).numpy().astype(np.int64), ref)


def test_soft_shift_with_one_hot_is_hard_shift():
    rng = np_rng("soft-onehot")
    c, r = 11, 2
    idx = rng.integers(0, (2 * r + 1) ** 2, size=c)
    w = torch.zeros(c, (2 * r + 1) ** 2)
    w[torch.arange(c), torch.as_tensor(idx)] = 1
    x = torch.randn(2, c, 5, 7)
    cand = np.array(candidates(r))
    assert torch.equal(soft_shift(x, w, r), shift_nchw(x, cand[idx]))
    assert torch.equal(all_shifts(x, r)[int(idx[0])][:, 0], shift_nchw(x, cand[idx])[:, 0])


def test_grouped_split_is_even():
    s = grouped_shifts(27, 1)
    counts = {tuple(v): 0 for v in candidates(1)}
    for v in s.tolist():
        counts[tuple(v)] += 1
    assert set(counts.values()) == {3}
    s = grouped_shifts(10, 1)  # not a multiple of 9: every direction used, sizes differ by <= 1
    vals = [sum(1 for v in s.tolist() if tuple(v) == d) for d in candidates(1)]
    assert min(vals) >= 1 and max(vals) - min(vals) <= 1


def test_sparse_bilinear_at_integer_offsets_is_exact():
    layer = ShiftLayer(6, 1, "sparse")
    offs = torch.tensor([[0, 0], [1, -1], [-1, 0], [0, 1], [1, 1], [-1, -1]], dtype=torch.float)
    with torch.no_grad():
        layer.offset.copy_(offs)
    x = torch.randn(3, 6, 4, 5)
    assert torch.allclose(layer(x), shift_nchw(x, offs.long()), atol=1e-6)
    # half-way: the mean of the two neighbouring integer shifts (bilinear)
    with torch.no_grad():
        layer.offset.copy_(torch.tensor([[0.5, 0]] * 6))
    want = 0.5 * (x + shift_nchw(x, [[1, 0]] * 6))
    assert torch.allclose(layer(x), want, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_methods_train_and_harden_to_integers(method):
    torch.manual_seed(0)
    layer = ShiftLayer(10, 1, method, route_every=2)
    x = torch.randn(4, 10, 6, 6, requires_grad=True)
    opt = torch.optim.SGD([p for p in layer.parameters()] or [torch.zeros(1,
                          requires_grad=True)], lr=0.1)
    for step in range(6):
        layer.set_progress(step / 5)
        loss = (layer(x) ** 2).mean()
        if (p := layer.penalty()) is not None:
            loss = loss + p
        opt.zero_grad()
        loss.backward()
        opt.step()
        layer.step_end()
    layer.harden()
    assert layer.hard
    s = layer.integer_shifts()
    assert s.dtype == np.int8 and s.shape == (10, 2) and np.abs(s).max() <= 1
    with torch.no_grad():
        assert torch.equal(layer(x), shift_nchw(x, s))
    assert 0.0 <= layer.zero_fraction() <= 1.0


def test_sal_attention_is_differentiable_and_anneals():
    layer = ShiftLayer(4, 1, "sal")
    x = torch.randn(2, 4, 5, 5)
    layer(x).sum().backward()
    assert layer.alpha.grad is not None and layer.alpha.grad.abs().sum() > 0
    with torch.no_grad():
        layer.alpha.copy_(torch.arange(9.0).repeat(4, 1) * 0.1)
    layer.set_progress(0.0)
    soft = layer.attention().max().item()
    layer.set_progress(1.0)
    assert layer.attention().max().item() > soft
    layer.harden()
    assert layer.integer_shifts().tolist() == [[1, 1]] * 4  # arg-max candidate k = 8


def test_rasl_routes_to_the_candidate_that_lowers_the_loss():
    # Target: channel c should equal x shifted by (1, 0). The loss is lowest on that route.
    torch.manual_seed(1)
    layer = ShiftLayer(3, 1, "rasl", route_every=5)
    layer.margin = 0.0
    for _ in range(40):
        x = torch.randn(8, 3, 6, 6)
        target = shift_nchw(x, [[1, 0]] * 3)
        layer.train()
        out = layer(x.requires_grad_(True))
        ((out - target) ** 2).sum().backward()
        layer.step_end()
    assert layer.integer_shifts().tolist() == [[1, 0]] * 3


def test_sparse_penalty_drives_shifts_to_zero():
    torch.manual_seed(0)
    layer = ShiftLayer(16, 1, "sparse")
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(200):
        loss = layer.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        layer.step_end()
    layer.harden()
    assert layer.zero_fraction() == 1.0


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="unknown shift method"):
        ShiftLayer(4, 1, "magic")
    with pytest.raises(ValueError, match="fixed shift table"):
        ShiftLayer(4, 1, "fixed", fixed=[[2, 0]] * 4)
