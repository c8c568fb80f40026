"""The spatial shift operator and the four ways of choosing each channel's shift.

The operator is DESIGN.md §1's ``shift``: ``out[c, y, x] = in[c, y + dy[c], x + dx[c]]``
inside the image, else 0 (``dy = +1`` takes from the row below). It costs no multiply; the
whole difficulty of a shift network is choosing one integer ``(dy, dx)`` with
``|dy|, |dx| <= R`` per channel. Tensors here are PyTorch NCHW (the float training side).

Candidate shifts are indexed ``k = (dy + R) * (2R + 1) + (dx + R)`` (:func:`candidates`).
Every method is trainable end to end and ends, after :meth:`ShiftLayer.harden`, in one
integer shift per channel; export refuses a layer that is still soft.

Selection methods
-----------------
``grouped`` — grouped shift (Wu et al., "Shift: A Zero FLOP, Zero Parameter Alternative to
    Spatial Convolutions", CVPR 2018). Channels are split evenly, in order, over the
    ``(2R+1)^2`` directions; nothing is learned. Channel ``c`` of ``C`` takes direction
    ``floor(c * K / C)``.
``sal`` — Shift Attention Layer (Hacene et al., "Attention Based Pruning for Shift
    Networks", ICPR 2020 / arXiv 2019). Each channel holds attention logits over the K
    candidate shifts; the layer outputs the softmax-weighted mix of the K shifted copies, so
    the attention is learned with the network by back-propagation. The softmax temperature
    is annealed towards zero during the search phase (:meth:`ShiftLayer.set_progress`), which
    concentrates each channel's attention on one candidate; :meth:`~ShiftLayer.harden` then
    prunes every channel to its arg-max shift and the network is fine-tuned with hard shifts.
``rasl`` — routing attention shift (after Yang et al., 2020). The forward pass always uses one
    hard shift per channel; the choice is never back-propagated through. Instead, a backward
    hook measures each channel's contribution to the loss for *every* candidate: with ``g``
    the gradient at the layer output, the first-order loss change of routing channel ``c``
    through candidate ``k`` is ``<g_c, shift_k(x_c)>`` (minus the same for the current
    route). An exponential moving average of this score is kept and every few steps each
    channel is re-routed to the candidate with the lowest score when it beats the current
    one by a margin (:meth:`~ShiftLayer.step_end`). Initial routes are the grouped ones.
``sparse`` — sparse shift (Chen et al., "All You Need is a Few Shifts: Designing Efficient
    Convolutional Neural Networks for Image Classification", CVPR 2019). Each channel has a
    real-valued displacement ``(dy, dx)`` in ``[-R, R]``, applied by bilinear interpolation
    (which is the triangle-kernel mix of the integer shifts around it, so it is
    differentiable in the displacement), plus an L1 penalty (:meth:`~ShiftLayer.penalty`)
    that drives most displacements to exactly zero. Hardening rounds them to integers;
    :meth:`~ShiftLayer.zero_fraction` reports how many channels ended unshifted (which cost
    no line buffer in hardware).
``fixed`` — a given shift table (the stem's nine 3×3 directions).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["METHODS", "candidates", "shift_nchw", "all_shifts", "soft_shift", "ShiftLayer",
           "grouped_shifts", "candidate_scores"]

METHODS = ("grouped", "sal", "rasl", "sparse")


def candidates(radius):
    """The ``(2R+1)^2`` candidate shifts, ordered ``k = (dy + R) * (2R + 1) + (dx + R)``.

    Returns
    -------
    list of tuple of int
    """
    r = int(radius)
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def grouped_shifts(channels, radius):
    """Grouped-shift table (Wu et al. 2018): channels split evenly, in order, over directions.

    Returns
    -------
    ndarray of int64 [channels, 2]
    """
    cand = candidates(radius)
    k = len(cand)
    return np.array([cand[c * k // channels] for c in range(channels)], np.int64).reshape(-1, 2)


def _pad(x, r):
    return nn.functional.pad(x, (r, r, r, r)) if r else x


def shift_nchw(x, shifts):
    """Apply one integer shift per channel (DESIGN.md §1) to an NCHW tensor.

    Parameters
    ----------
    x : Tensor [N, C, H, W]
        Either memory layout: contiguous NCHW, or channels-last (NHWC in memory, what the
        training network uses); the result has the same layout.
    shifts : array-like of int [C, 2]
        (dy, dx) per channel.

    Returns
    -------
    Tensor [N, C, H, W]
        Differentiable with respect to ``x``.

    Notes
    -----
    Contiguous NCHW: one ``index_select`` on the zero-padded map (index table cached per
    shift table, size and device); the gradient is the opposite shift, done the same way.
    Channels-last: a depthwise convolution whose kernel is one-hot per channel (faster on
    that layout; 1 times the value plus exact zeros). A shift only moves values, so forward
    and backward are exact copies either way: the results are those of slicing, and do not
    depend on the number of threads.
    """
    s = np.asarray(shifts.detach().cpu() if torch.is_tensor(shifts) else shifts)
    s = s.astype(np.int64).reshape(-1, 2)
    n, c, h, w = x.shape
    if s.shape[0] != c:
        raise ValueError(f"{s.shape[0]} shifts for {c} channels")
    if _is_nhwc(x):
        # Channels-last (training): a depthwise conv with a one-hot kernel per channel. Every
        # output is 1 * x + a sum of exact zeros, so it is the same copy as the gather (and
        # its gradient the same opposite shift), only faster on this layout.
        r, kernel = _one_hot_kernel(s, x.dtype, x.device)
        return nn.functional.conv2d(x, kernel, padding=r, groups=c)
    r, fwd, bwd = _shift_plan(s, h, w, x.device)
    return _Shift.apply(x.contiguous(), r, fwd, bwd)


_KERNELS = {}


def _one_hot_kernel(s, dtype, device):
    """``(r, kernel [C, 1, 2r+1, 2r+1])`` with a single 1 at tap ``(dy + r, dx + r)``."""
    key = (s.tobytes(), str(dtype), str(device))
    got = _KERNELS.get(key)
    if got is None:
        if len(_KERNELS) >= 256:
            _KERNELS.clear()
        r = int(np.abs(s).max()) if s.size else 0
        kernel = torch.zeros(len(s), 1, 2 * r + 1, 2 * r + 1, dtype=dtype)
        kernel[torch.arange(len(s)), 0, torch.as_tensor(s[:, 0] + r),
               torch.as_tensor(s[:, 1] + r)] = 1
        got = _KERNELS[key] = (r, kernel.to(device))
    return got


def _is_nhwc(x):
    """True when ``x`` (NCHW view) is stored channels-last and not also plain contiguous."""
    return (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)


_PLANS = {}


def _shift_plan(s, h, w, device=None):
    """``(r, forward index, backward index)`` into the flattened ``[C, H+2r, W+2r]`` map."""
    key = (s.tobytes(), h, w, str(device))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 256:
            _PLANS.clear()
        r = int(np.abs(s).max()) if s.size else 0
        hp, wp = h + 2 * r, w + 2 * r
        ch = np.arange(len(s)).reshape(-1, 1, 1)
        ys, xs = np.arange(h).reshape(1, -1, 1), np.arange(w).reshape(1, 1, -1)
        dy, dx = s[:, 0].reshape(-1, 1, 1), s[:, 1].reshape(-1, 1, 1)
        fwd = (ch * hp + ys + r + dy) * wp + xs + r + dx
        bwd = (ch * hp + ys + r - dy) * wp + xs + r - dx
        plan = (r, torch.from_numpy(fwd.reshape(-1)).to(device),
                torch.from_numpy(bwd.reshape(-1)).to(device))
        _PLANS[key] = plan
    return plan


def _gather(x, r, index):
    n, c, h, w = x.shape
    return _pad(x, r).reshape(n, -1).index_select(1, index).view(n, c, h, w)


class _Shift(torch.autograd.Function):
    """Shift by a table; the gradient is the opposite shift (zero where nothing was read)."""

    @staticmethod
    def forward(ctx, x, r, fwd, bwd):
        ctx.r, ctx.bwd = r, bwd
        return _gather(x, r, fwd)

    @staticmethod
    def backward(ctx, g):
        # ``+ 0.0`` turns -0.0 into +0.0 (nothing else), as the accumulation into zeros of the
        # former slice-and-assign formulation did: gradients stay bit for bit the same.
        return _gather(g.contiguous(), ctx.r, ctx.bwd).add_(0.0), None, None, None


def all_shifts(x, radius):
    """Every candidate shift of every channel: ``[K, N, C, H, W]`` in :func:`candidates` order.

    A reference formulation (it materialises K copies); training never calls it.
    """
    n, c, h, w = x.shape
    r = int(radius)
    xp = _pad(x, r)
    return torch.stack([xp[:, :, r + dy:r + dy + h, r + dx:r + dx + w]
                        for dy, dx in candidates(r)])


def soft_shift(x, weights, radius):
    """Mix of the candidate shifts: ``out[:, c] = sum_k weights[c, k] * shift_k(x)[:, c]``.

    Parameters
    ----------
    x : Tensor [N, C, H, W]
    weights : Tensor [C, K]
    radius : int

    Notes
    -----
    This is a depthwise ``(2R+1) x (2R+1)`` convolution whose kernel is the channel's
    weights (candidate ``k = (dy + R)(2R + 1) + (dx + R)`` is kernel tap ``(dy + R, dx + R)``,
    zero padding = the shift's zero fill), so it runs as one ``conv2d(groups=C)``: no
    shifted copy of the map is materialised, and the gradient with respect to the weights
    (the attention) comes from the same kernel's backward.
    """
    n, c, h, w = x.shape
    r = int(radius)
    k = 2 * r + 1
    kernel = weights.to(x.dtype).reshape(c, 1, k, k)
    return nn.functional.conv2d(x, kernel, padding=r, groups=c)


def candidate_scores(x, g, radius):
    """``score[c, k] = sum_{n,y,x} g[n, c, y, x] * shift_k(x)[n, c, y, x]`` (``[C, K]``).

    The weight gradient of :func:`soft_shift`'s depthwise convolution: one op, no copies.
    """
    c = x.shape[1]
    r = int(radius)
    k = 2 * r + 1
    gw = torch.nn.grad.conv2d_weight(x, (c, 1, k, k), g.to(x.dtype), padding=r, groups=c)
    return gw.reshape(c, k * k)


class ShiftLayer(nn.Module):
    """A shift layer whose per-channel shifts are chosen by one of :data:`METHODS`.

    Parameters
    ----------
    channels : int
    radius : int
        Neighbourhood radius R (``|dy|, |dx| <= R``).
    method : str
        ``grouped``, ``sal``, ``rasl``, ``sparse`` or ``fixed``.
    fixed : array-like [C, 2], optional
        The shift table for ``method="fixed"``.
    route_every : int
        ``rasl``: steps between re-routings.
    route_margin : float
        ``rasl``: a channel moves only when its gain exceeds this times the mean |score|.
    route_fraction : float
        ``rasl``: at most this fraction of the channels moves per re-routing.
    sal_bias : float
        ``sal``: initial logit head start of each channel's grouped-shift candidate (0: none).
    sparse_init : float
        ``sparse``: initial displacements are uniform in ``[-sparse_init, sparse_init] * R``.

    Attributes
    ----------
    hard : bool
        True once every channel uses one integer shift (always for grouped/fixed/rasl).
    shifts : Tensor of int64 [C, 2]
        The integer shifts in use when ``hard`` (buffer, saved with the state dict).
    temperature : float
        ``sal`` softmax temperature.

    Raises
    ------
    ValueError
        Unknown method, bad radius, or a fixed table of the wrong shape/range.
    """

    def __init__(self, channels, radius=1, method="grouped", fixed=None, route_every=20,
                 sparse_init=0.9, sal_bias=0.0, route_margin=0.5, route_fraction=0.125):
        super().__init__()
        if method not in METHODS + ("fixed",):
            raise ValueError(f"unknown shift method {method!r} (known: {', '.join(METHODS)})")
        if radius < 0 or radius > 7:
            raise ValueError(f"shift radius {radius} outside [0, 7]")
        self.channels, self.radius, self.method = int(channels), int(radius), method
        self.k = (2 * self.radius + 1) ** 2
        self.route_every = int(route_every)
        self.temperature = 1.0
        self.margin = float(route_margin)
        self.max_moves = max(1, int(channels * route_fraction))
        self._steps = 0
        if method == "fixed":
            table = np.asarray(fixed, np.int64).reshape(-1, 2)
            if table.shape[0] != channels or np.abs(table).max(initial=0) > radius:
                raise ValueError(f"fixed shift table must be [{channels}, 2] within radius "
                                 f"{radius}")
        else:
            table = grouped_shifts(channels, radius)
        self.register_buffer("shifts", torch.as_tensor(table, dtype=torch.int64))
        self.hard = method in ("grouped", "fixed", "rasl")
        if method == "sal":
            # Optionally start near the grouped assignment (a head start of ``sal_bias``).
            init = 0.01 * torch.randn(channels, self.k)
            init[torch.arange(channels), self._index(self.shifts)] += sal_bias
            self.alpha = nn.Parameter(init)
        elif method == "sparse":
            init = (torch.rand(channels, 2) * 2 - 1) * sparse_init * max(self.radius, 1)
            self.offset = nn.Parameter(init)
        elif method == "rasl":
            self.register_buffer("score", torch.zeros(channels, self.k))
            self._x = None

    def _index(self, shifts):
        """Candidate index ``k`` of each row of an integer shift table."""
        r = self.radius
        return (shifts[:, 0] + r) * (2 * r + 1) + shifts[:, 1] + r

    # --- soft forms -------------------------------------------------------------------
    def attention(self):
        """The current soft weights ``[C, K]`` over candidates (sal and sparse)."""
        if self.method == "sal":
            return torch.softmax(self.alpha / self.temperature, dim=1)
        if self.method == "sparse":
            r = self.radius
            ks = torch.arange(-r, r + 1, dtype=self.offset.dtype, device=self.offset.device)
            off = self.offset.clamp(-r, r)
            wy = torch.relu(1 - (off[:, :1] - ks).abs())  # bilinear = triangle kernel
            wx = torch.relu(1 - (off[:, 1:] - ks).abs())
            return (wy[:, :, None] * wx[:, None, :]).reshape(self.channels, -1)
        raise ValueError(f"method {self.method!r} has no soft attention")

    def forward(self, x):
        if not self.hard:
            return soft_shift(x, self.attention(), self.radius)
        out = shift_nchw(x, self.shifts)
        if self.method == "rasl" and self.training and torch.is_grad_enabled() and \
                self.route_every > 0 and out.requires_grad:
            xd = x.detach()
            out.register_hook(lambda g: self._measure(xd, g))
        return out

    def _measure(self, x, g):
        # Contribution of each candidate route: first-order loss change <g_c, shift_k(x_c)>,
        # averaged over the batch. No gradient flows into the choice itself.
        with torch.no_grad():
            s = candidate_scores(x, g, self.radius) / x.shape[0]
            self.score.mul_(0.9).add_(0.1 * s)
        return None

    # --- training-loop hooks -----------------------------------------------------------
    def set_progress(self, p):
        """Search-phase progress ``p`` in [0, 1]: anneals the ``sal`` temperature 1 → 0.02."""
        self.temperature = float(1.0 * (0.02 ** min(max(p, 0.0), 1.0)))

    def penalty(self):
        """Regulariser added to the loss.

        ``sparse``: the L1 norm of the displacements. ``sal``: a balance term on how evenly the
        channels' attention covers the candidate directions. None for the other methods.
        """
        if self.method == "sparse" and not self.hard:
            return self.offset.abs().sum()
        if self.method == "sal" and not self.hard:
            # Balance: K * sum_k usage_k^2 - 1 is 0 when the directions are used evenly. It keeps
            # the spread of grouped shift while the attention decides which channel goes where.
            usage = self.attention().mean(dim=0)
            return self.k * (usage ** 2).sum() - 1
        return None

    def step_end(self):
        """Call after each optimiser step: ``rasl`` re-routes, ``sparse`` clamps to R."""
        if self.method == "sparse" and not self.hard:
            with torch.no_grad():
                self.offset.clamp_(-self.radius, self.radius)
        if self.method == "rasl" and self.route_every > 0:
            self._steps += 1
            if self._steps % self.route_every == 0:
                self.route()

    @torch.no_grad()
    def route(self):
        """``rasl``: re-route every channel whose best candidate beats its current route."""
        cur = self._index(self.shifts)
        best = self.score.argmin(dim=1)
        gain = self.score.gather(1, cur[:, None])[:, 0] - self.score.gather(1, best[:, None])[:, 0]
        scale = self.score.abs().mean() + 1e-12
        move = gain > self.margin * scale
        # Re-route only the channels with the largest gains at a time: the next conv's weights
        # were learned for the current routes, and moving many channels at once undoes that.
        if int(move.sum()) > self.max_moves:
            keep = torch.topk(torch.where(move, gain, torch.full_like(gain, -float("inf"))),
                              self.max_moves).indices
            move = torch.zeros_like(move)
            move[keep] = True
        cand = torch.as_tensor(candidates(self.radius), dtype=torch.int64,
                               device=self.shifts.device)
        self.shifts[move] = cand[best[move]]
        self.score[move] = 0  # fresh measurement for the channels that moved

    @torch.no_grad()
    def harden(self):
        """End the search: one integer shift per channel (arg-max / rounding); no-op if hard."""
        if self.hard:
            self.route_every = 0
            return
        if self.method == "sal":
            cand = torch.as_tensor(candidates(self.radius), dtype=torch.int64,
                                   device=self.shifts.device)
            self.shifts.copy_(cand[self.alpha.argmax(dim=1)])
        elif self.method == "sparse":
            self.shifts.copy_(torch.round(self.offset.clamp(-self.radius, self.radius))
                              .to(torch.int64))
        self.hard = True

    def integer_shifts(self):
        """The integer shift table as ``int8 [C, 2]`` (only meaningful when ``hard``)."""
        return self.shifts.cpu().numpy().astype(np.int8)

    def zero_fraction(self):
        """Fraction of channels whose shift is (0, 0) (hard table, or arg-max/rounded soft one)."""
        if self.hard:
            s = self.shifts
        elif self.method == "sparse":
            s = torch.round(self.offset.detach().clamp(-self.radius, self.radius))
        else:
            cand = torch.as_tensor(candidates(self.radius), device=self.shifts.device)
            s = cand[self.alpha.argmax(dim=1)]
        return float((s == 0).all(dim=1).float().mean())

    def extra_repr(self):
        return f"{self.channels}, radius={self.radius}, method={self.method}, hard={self.hard}"
