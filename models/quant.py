"""Quantization-aware training with the hardware's exact semantics, and export to an artifact.

Scales (all floats, training side only; the artifact holds integers only):

- the input image ``x`` (raw ``uint8``) enters the float network as ``x * s_in`` with
  ``s_in = 1/255``. This is the normalisation, and it folds into the first conv exactly
  because it is a pure scale (a mean subtraction would not: the stem's shift pads with raw
  zeros, which a shifted mean would turn into ``-mean``);
- each activation after a requant is ``q * s_a`` with ``q`` unsigned ``act_bits``
  (:class:`ActQuant`, ``s_a`` calibrated from the running maximum before QAT);
- each conv weight (BatchNorm folded in) is ``w_int * s_w[o]``, symmetric, ``weight_bits``,
  one scale per output channel — except the classifier, whose raw int32 accumulators are the
  logits, so it uses one scale for all outputs (then ``argmax`` of the integer logits is the
  ``argmax`` of the float ones).

At export a conv's accumulator ``acc = b_int + Σ w_int q_in`` represents ``s_w s_in acc``;
the next activation is ``round(acc · s_w s_in / s_out)``, done in hardware as
``(acc · m + 2^(sh-1)) >> sh`` with ``m / 2^sh ≈ s_w s_in / s_out`` (:func:`requant_constants`).
The gap's single ``(m, sh)`` also carries the ``1/(H·W)`` of the mean.

Export refuses, with the layer named, anything DESIGN.md §1 cannot express: a residual add,
a non-ReLU hidden activation, a shift layer still soft, an unknown module. The attention
modules of :mod:`models.attention` export to the version-2 ops with the constants their QAT
forward pass used (:meth:`~models.attention.AttentionBase.export_layer`); the file's version
is the lowest that holds its ops.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .artifact import ArtifactError, Layer, Model, validate, to_manifest_and_arrays
from .ops import OPS

__all__ = ["ExportError", "ActQuant", "QConv", "fake_quant_weight", "requant_constants",
           "export", "set_qat", "set_observe"]

INT32_MAX = (1 << 31) - 1


class ExportError(ArtifactError):
    """A trained network cannot be expressed as an artifact (the message says why)."""


def _ste_round(x):
    return x + (torch.round(x) - x).detach()


def weight_scale(w, bits, per_channel=True):
    """Symmetric weight scale per output row (or one for the whole tensor).

    8..5 bits: ``max|w| / (2^(bits-1) - 1)``. At 4 bits and below the max wastes the few
    levels on outliers, so the clipping point is the fraction of ``max|w|`` (from a small grid)
    that minimises the squared quantization error of the row.

    Parameters
    ----------
    w : Tensor [cout, cin]
    bits : int
    per_channel : bool

    Returns
    -------
    Tensor [cout]
    """
    qmax = (1 << (bits - 1)) - 1
    w = w.detach()
    rows = w if per_channel else w.reshape(1, -1)
    amax = torch.clamp(rows.abs().amax(dim=1), min=1e-8)
    best = amax / qmax
    if bits <= 4:
        err_best = None
        for r in torch.linspace(0.3, 1.0, 15, dtype=w.dtype):
            s = amax * r / qmax
            q = torch.clamp(torch.round(rows / s[:, None]), -qmax, qmax) * s[:, None]
            err = ((q - rows) ** 2).sum(dim=1)
            if err_best is None:
                best, err_best = s, err
            else:
                better = err < err_best
                best = torch.where(better, s, best)
                err_best = torch.where(better, err, err_best)
    return best if per_channel else best.expand(w.shape[0])


def fake_quant_weight(w, bits, per_channel=True):
    """Fake-quantize a ``[cout, cin]`` weight (straight-through rounding)."""
    qmax = (1 << (bits - 1)) - 1
    s = weight_scale(w, bits, per_channel)[:, None]
    return torch.clamp(_ste_round(w / s), -qmax, qmax) * s


class ActQuant(nn.Module):
    """Unsigned activation fake-quantizer (a requant's output in hardware).

    Parameters
    ----------
    bits : int
        ``act_bits``.

    Attributes
    ----------
    scale : Tensor (buffer)
        Step size ``s_a``; 0 until calibrated.
    enabled : bool
        Fake-quantize in the forward pass (QAT).
    observe : bool
        Track the running maximum to calibrate ``scale``.
    """

    def __init__(self, bits=8):
        super().__init__()
        self.bits = int(bits)
        self.enabled = False
        self.observe = False
        self.register_buffer("scale", torch.zeros(()))
        self.register_buffer("running_max", torch.zeros(()))

    @property
    def qmax(self):
        return (1 << self.bits) - 1

    def forward(self, x):
        if self.observe:
            with torch.no_grad():
                # High quantile rather than max for 4-bit: clipping rare outliers buys
                # resolution for the bulk of the values.
                q = 0.9999 if self.bits >= 8 else 0.999
                flat = x.detach().flatten()
                if flat.numel() > 100000:
                    flat = flat[torch.randperm(flat.numel(), device=flat.device)[:100000]]
                m = torch.quantile(flat.float(), q)
                self.running_max.copy_(torch.maximum(self.running_max, m))
                self.scale.copy_(torch.clamp(self.running_max, min=1e-6) / self.qmax)
        if not self.enabled:
            return x
        s = self.scale
        xc = torch.clamp(x, 0, self.qmax * float(s))
        return xc + (torch.round(xc / s) * s - xc).detach()


class QConv(nn.Module):
    """1×1 convolution (+BatchNorm, +activation) with optional stride, QAT-ready.

    Parameters
    ----------
    cin, cout : int
    stride : int
        1 or 2 (strided 1×1 subsamples first, ``H_out = ceil(H / 2)``).
    bn : bool
        BatchNorm after the conv (folded at export).
    act : str or None
        ``"relu"`` for hidden layers; ``None`` for the classifier. Anything else trains but
        is refused at export.
    last : bool
        The classifier: raw logits, per-tensor weight scale, no requant.
    weight_bits, act_bits : int

    Raises
    ------
    ValueError
        Bad stride or bit width.
    """

    def __init__(self, cin, cout, stride=1, bn=True, act="relu", last=False, weight_bits=8,
                 act_bits=8):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"conv1x1 stride {stride} not supported (1 or 2)")
        if not 2 <= weight_bits <= 8:
            raise ValueError(f"weight_bits {weight_bits} outside [2, 8]")
        self.cin, self.cout, self.stride, self.last = cin, cout, stride, last
        self.act = act
        self.weight_bits = weight_bits
        self.weight = nn.Parameter(torch.empty(cout, cin))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.aq = None if last else ActQuant(act_bits)
        self.qat = False

    def folded(self):
        """BatchNorm folded into (weight ``[cout, cin]``, bias ``[cout]``) with running stats."""
        w, b = self.weight, self.bias
        if self.bn is None:
            return w, b
        k = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        return w * k[:, None], (b - self.bn.running_mean) * k + self.bn.bias

    def _act(self, y):
        if self.act is None:
            return y
        if self.act == "relu":
            return torch.relu(y)
        if self.act == "relu6":
            return torch.clamp(y, 0, 6)
        if self.act == "gelu":
            return nn.functional.gelu(y)
        raise ValueError(f"unknown activation {self.act!r}")

    def forward(self, x, stem3x3=False):
        """Conv, BatchNorm (or folded), activation, activation quantizer.

        With ``stem3x3`` the input is the stem's *unreplicated* image and the layer runs as
        the 3x3 convolution that replicate(9) + the stem's fixed shift + this 1x1 conv are
        (weight column ``e * C + c`` is tap ``e`` of :func:`models.shift.candidates` (1) of
        input channel ``c``): the same function without nine copies of the image.
        """
        if self.qat:
            # BN frozen and folded, exactly as exported; weights fake-quantized.
            w, b = self.folded()
            w = fake_quant_weight(w, self.weight_bits, per_channel=not self.last)
        else:
            w, b = self.weight, self.bias
        if stem3x3:
            cout, cin9 = w.shape
            kernel = w.reshape(cout, 9, cin9 // 9).permute(0, 2, 1).reshape(cout, -1, 3, 3)
            y = nn.functional.conv2d(x, kernel, b, padding=1)
            # BatchNorm, ReLU and the first block run channels-last (a one-channel image is
            # ambiguous, and the convolution then answers NCHW).
            y = y.contiguous(memory_format=torch.channels_last)
        else:
            # A 1x1 convolution with stride s reads pixels (s*y, s*x): H_out = ceil(H / s).
            y = nn.functional.conv2d(x, w[:, :, None, None], b, stride=self.stride)
        if not self.qat and self.bn is not None:
            y = self.bn(y)
        y = self._act(y)
        return y if self.aq is None else self.aq(y)


def set_qat(net, on=True):
    """Switch fake quantization (and folded, frozen BatchNorm) on or off in every module."""
    for mod in net.modules():
        # QConv and the attention modules of models.attention (exact integer forward value).
        if isinstance(mod, QConv) or getattr(mod, "attention_module", False):
            mod.qat = on
        if isinstance(mod, ActQuant):
            mod.enabled = on


def set_observe(net, on=True):
    """Switch activation-range observation on or off (calibration before QAT)."""
    for mod in net.modules():
        if isinstance(mod, ActQuant):
            mod.observe = on
            if on:
                mod.running_max.zero_()


def requant_constants(multiplier, where, out_max=None):
    """Integer ``(m, sh)`` with ``m / 2^sh ≈ multiplier``, ``m`` in [1, 65535], ``sh`` in [1, 47].

    The largest ``sh`` that keeps ``m`` in 16 bits gives the most precision.

    A multiplier too large to express (≥ 32767.75) comes from a layer whose output scale
    collapsed: it was never positive on the calibration data (a dead ReLU layer), so its
    activation quantizer saturates at the first step. When the output is clamped to
    ``out_max`` (a requant into unsigned activations), any multiplier ≥ ``out_max + 0.5``
    gives the same integers, because accumulators are integers: ``acc ≥ 1`` rounds to at
    least ``out_max`` and clamps to it, ``acc ≤ 0`` gives 0. Such a multiplier is then
    replaced by the largest expressible one, ``65535 / 2^1``, which computes exactly what the
    fake-quantized network computes.

    Parameters
    ----------
    multiplier : ndarray of float (> 0)
    where : str
        Layer description for the error message.
    out_max : int, optional
        The clamp above the requant's output (``2^act_bits - 1``); without it a multiplier
        out of range is an error.

    Returns
    -------
    m : ndarray of int64
    sh : ndarray of int64

    Raises
    ------
    ExportError
        A multiplier is not positive/finite, or too large to express (≥ 32767.75) without an
        ``out_max`` that makes it saturate.
    """
    mult = np.asarray(multiplier, np.float64)
    if not np.all(np.isfinite(mult)) or np.any(mult <= 0):
        raise ExportError(f"{where}: requant multiplier not positive and finite")
    largest = 65535 / 2.0
    if out_max is not None and out_max + 0.5 <= largest:
        # Saturating either way (see above); clip before the search so it stays in range.
        mult = np.where(mult >= out_max + 0.5, np.minimum(mult, largest), mult)
    sh = np.floor(np.log2(65535.49 / mult)).astype(np.int64)
    sh = np.clip(sh, 1, 47)
    m = np.round(mult * np.exp2(sh)).astype(np.int64)
    over = m > 65535  # float round-off at the boundary
    sh[over] -= 1
    m[over] = np.round(mult[over] * np.exp2(sh[over])).astype(np.int64)
    if np.any(m > 65535) or np.any(sh < 1):
        raise ExportError(f"{where}: requant multiplier {mult.max():.4g} too large for "
                          f"m <= 65535 with sh >= 1 (activation scale collapsed?)")
    # A multiplier below 2^-47 maps everything to 0 anyway; m = 1 keeps that behaviour.
    return np.maximum(m, 1), sh


def export(net, name="shiftnet", classes=None, provenance=None):
    """Turn a trained (hardened, QAT-calibrated) :class:`~models.nets.ShiftNet` into a Model.

    Parameters
    ----------
    net : ShiftNet
    name : str
    classes : list of str, optional
        Defaults to ``"0"..``.
    provenance : dict, optional

    Returns
    -------
    Model
        Validated against DESIGN.md §1–2 (:func:`models.artifact.validate`).

    Raises
    ------
    ExportError
        Naming the layer and the reason: residual add, non-ReLU hidden activation, soft shift
        (attention still soft at inference), uncalibrated activations, an op the contract
        lacks, bias or accumulator outside int32, requant constants out of range.
    """
    from .nets import GAP, MaxPool2, Replicate, Residual  # nets imports this module
    from .shift import ShiftLayer
    from .attention import AttentionBase, DynamicConv1x1
    h, w, c = net.in_shape
    scale = 1.0 / 255.0
    layers = []
    # Dropout is the identity at inference: it has no op in the contract and needs none.
    mods = [m for m in net.body if not isinstance(m, nn.Dropout)]
    for i, mod in enumerate(mods):
        where = f"layer {i} ({getattr(mod, 'label', type(mod).__name__)})"
        last = i == len(mods) - 1
        if isinstance(mod, Residual):
            raise ExportError(f"{where}: residual add is not in the artifact contract "
                              f"(DESIGN.md §1 has no add op)")
        if isinstance(mod, Replicate):
            layers.append(Layer("replicate", factor=mod.factor))
            c *= mod.factor
        elif isinstance(mod, ShiftLayer):
            if not mod.hard:
                raise ExportError(f"{where}: shift attention ({mod.method}) is still soft at "
                                  f"inference; harden() it to one shift per channel first")
            if mod.channels != c:
                raise ExportError(f"{where}: {mod.channels} channels but receives {c}")
            layers.append(Layer("shift", shifts=mod.integer_shifts()))
        elif isinstance(mod, QConv):
            if mod.cin != c:
                raise ExportError(f"{where}: cin {mod.cin} but receives {c} channels")
            if last != mod.last:
                raise ExportError(f"{where}: only the network's final layer may be the "
                                  f"classifier (raw logits), and it must be a conv1x1")
            if not last and mod.act != "relu":
                raise ExportError(f"{where}: hidden activation {mod.act!r} is not ReLU; the "
                                  f"hardware's requant clamp only implements ReLU")
            if last and mod.act is not None:
                raise ExportError(f"{where}: the classifier must output raw logits, not "
                                  f"{mod.act!r}")
            with torch.no_grad():
                wf, bf = (t.double().cpu().numpy() for t in mod.folded())
            qmax = (1 << (net.weight_bits - 1)) - 1
            # The same scales as the fake quantizer used in training (computed in float64 here).
            sw = weight_scale(torch.as_tensor(wf), net.weight_bits,
                              per_channel=not last).numpy()
            wq = np.clip(np.round(wf / sw[:, None]), -qmax, qmax).astype(np.int8)
            bq = np.round(bf / (sw * scale))
            if np.abs(bq).max() > INT32_MAX:
                raise ExportError(f"{where}: bias does not fit int32 after scaling "
                                  f"(max |bias| = {np.abs(bq).max():.3g})")
            lay = Layer("conv1x1", stride=mod.stride, weight=wq, bias=bq.astype(np.int32))
            if mod.stride == 2:
                h, w = -(-h // 2), -(-w // 2)
            c = mod.cout
            if not last:
                s_out = float(mod.aq.scale)
                if s_out <= 0:
                    raise ExportError(f"{where}: activation scale never calibrated (run QAT "
                                      f"calibration before export)")
                m, sh = requant_constants(sw * scale / s_out, where, mod.aq.qmax)
                lay.m, lay.sh = m.astype(np.uint16), sh.astype(np.uint8)
                scale = s_out
            layers.append(lay)
        elif isinstance(mod, AttentionBase):
            # Version-2 ops: the same constants the QAT forward pass used (exact QAT).
            cin = mod.cin if isinstance(mod, DynamicConv1x1) else mod.channels
            if cin != c:
                raise ExportError(f"{where}: {cin} input channels but receives {c}")
            if last:
                raise ExportError(f"{where}: the network's final layer must be the conv1x1 "
                                  f"classifier")
            layers.append(mod.export_layer(scale, h, w, where))
            if isinstance(mod, DynamicConv1x1):
                if mod.stride == 2:
                    h, w = -(-h // 2), -(-w // 2)
                c, scale = mod.cout, float(mod.aq.scale)
        elif isinstance(mod, MaxPool2):
            layers.append(Layer("maxpool2"))
            h, w = h // 2, w // 2
        elif isinstance(mod, GAP):
            s_out = float(mod.aq.scale)
            if s_out <= 0:
                raise ExportError(f"{where}: activation scale never calibrated")
            m, sh = requant_constants(np.array([scale / (h * w * s_out)]), where,
                                      mod.aq.qmax)
            layers.append(Layer("gap", m=int(m[0]), sh=int(sh[0])))
            h, w, scale = 1, 1, s_out
        else:
            known = ", ".join(OPS)
            raise ExportError(f"{where}: module {type(mod).__name__} has no equivalent op in "
                              f"the artifact contract ({known})")
    classes = list(classes) if classes is not None else [str(i) for i in range(c)]
    model = Model(name=name, input_shape=tuple(net.in_shape), input_bits=8,
                  act_bits=net.act_bits, weight_bits=net.weight_bits, classes=classes,
                  layers=layers, provenance=dict(provenance or {}))
    manifest, arrays = to_manifest_and_arrays(model)
    try:
        return validate(manifest, arrays)
    except ArtifactError as e:
        raise ExportError(f"export produced an invalid artifact: {e}") from None
