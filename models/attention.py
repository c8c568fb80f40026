"""Attention modules that stay at inference (artifact version 2, issue #11), trainable with QAT.

Three modules, each the float/QAT side of one version-2 op of the format (DESIGN.md §1,
docs/format.md); tensors are NCHW floats, activations ``q * s`` with ``q`` unsigned
``act_bits`` integers and ``s`` the scale of the :class:`~models.quant.ActQuant` that produced
them (the module's *source*, bound by the network with :meth:`AttentionBase.bind_source`):

- :class:`ChannelAttention` — ECA (Wang et al., "ECA-Net", CVPR 2020):
  ``x * sigmoid(bias + conv1d_k(mean_pool(x)))`` with one k-tap kernel shared by all channels;
  op ``channel_attention``.
- :class:`DynamicConv1x1` — dynamic convolution (Chen et al., "Dynamic Convolution", CVPR 2020;
  CondConv): ``K`` 1x1 kernels (and biases) mixed per image by ``softmax(att(pool_t(x)))``,
  the attention's pool reading only the pixels on a grid of step ``t`` (EAM-DyNet's sampled
  pooling); then BatchNorm (folded at export), ReLU, activation quantizer; op
  ``dynamic_conv1x1``.
- :class:`SpatialAttention` — NL-SAM, non-local spatial attention (this project's definition,
  SPEC/format document): a context vector ``u = Linear(C, C)(mean_pool(x))`` is compared with
  every pixel, ``x * sigmoid(bias + sum_c u[c] x[y, x, c])``; op ``spatial_attention``.

QAT is exact. With fake quantization on (:func:`models.quant.set_qat`), each module's forward
value is *the exported integer op itself*: the input's integers ``q = round(x / s)`` go
through the format's integer rule in ``torch.int64`` (pool requant, table look-ups, the
integer softmax with its floor division, the mixed-kernel rounding, the output requant), with
the very constants :meth:`~AttentionBase.integer_layer` exports (same function, same
float64 scale arithmetic, same tables), and the result is ``q_out * s_out``. Gradients go
around the integer path by a straight-through estimator: the module also computes the float
op (with fake-quantized weights, BatchNorm folded) and returns
``float + (exact - float).detach()``, so the value is exact and the gradient is the float
op's. The test suite checks that value against the golden model op by op.

Tables (:func:`sigmoid_lut`, :func:`exp_lut`):

- sigmoid: ``lut[i + 128] = round(256 * sigmoid(i * SIGMOID_STEP))``, ``SIGMOID_STEP = 1/16``,
  so the index range [-128, 127] covers z in [-8, 7.94], where the sigmoid is within 1/3000
  of 0 or 1 (a 256-entry table cannot resolve more); the steepest entry step is 4 of 256.
  The requant ``z_m / 2**z_sh`` maps the accumulator ``z`` (scale ``s_z``) to that index:
  ``s_z / SIGMOID_STEP``.
- exp: ``exp_lut[j + 255] = round(65535 * exp(j * EXP_STEP))``, ``EXP_STEP = 1/32``: the
  index range [-255, 0] covers logit differences down to -7.97 (``exp_lut[0] = 23``: a kernel
  that far behind the best gets weight 23/65535 relative, which the floor of
  ``pi = (e * 256) // sum(e)`` already makes 0); ``exp_lut[255] = 65535`` (the best kernel), so
  the divisor is never 0. ``att_m / 2**att_sh`` maps the logits' scale to ``EXP_STEP``.

Scales chosen at export (all float, training side only): the pooled means keep the input's
scale ``s`` (the pool requant carries just ``1 / pixels``); the ECA kernel and the attention
matrices have one symmetric scale per tensor (``weight_bits``), as their requant is one scalar;
NL-SAM's context ``u`` is int8 with a scale calibrated like an activation (a signed quantile,
:class:`SignedQuant`); the dynamic kernels share one scale per output channel across the
``K`` kernels (the mixed kernel must have the scale its per-channel ``m``/``sh`` assume).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .layer import Layer
from .quant import ActQuant, ExportError, requant_constants, weight_scale

__all__ = ["SIGMOID_STEP", "EXP_STEP", "sigmoid_lut", "exp_lut", "eca_kernel_size",
           "SignedQuant", "AttentionBase", "ChannelAttention", "SpatialAttention",
           "DynamicConv1x1", "channel_attention_int", "spatial_attention_int",
           "dynamic_conv1x1_int"]

#: z per index step of the sigmoid table (index range [-128, 127] covers z in [-8, 7.94]).
SIGMOID_STEP = 1.0 / 16.0
#: Logit difference per index step of the exp table (index range [-255, 0]: down to -7.97).
EXP_STEP = 1.0 / 32.0


def sigmoid_lut(step=SIGMOID_STEP):
    """``lut[i + 128] = round(256 * sigmoid(i * step))`` for ``i`` in [-128, 127] (uint16)."""
    i = np.arange(-128, 128, dtype=np.float64)
    return np.round(256.0 / (1.0 + np.exp(-i * step))).astype(np.uint16)


def exp_lut(step=EXP_STEP):
    """``exp_lut[j + 255] = round(65535 * exp(j * step))`` for ``j`` in [-255, 0] (uint16)."""
    j = np.arange(-255, 1, dtype=np.float64)
    return np.round(65535.0 * np.exp(j * step)).astype(np.uint16)


def eca_kernel_size(channels, gamma=2, b=1):
    """ECA's adaptive kernel size ``|log2(C) / gamma + b / gamma|`` made odd, in [3, 9]."""
    t = int(abs(math.log2(max(channels, 2)) / gamma + b / gamma))
    k = t if t % 2 else t + 1
    return int(min(max(k, 3), 9))


def _rq(v, m, sh):
    """``(v * m + (1 << (sh - 1))) >> sh`` on int64 tensors (an arithmetic shift: floor)."""
    return (v * int(m) + (1 << (int(sh) - 1))) >> int(sh)


def _ste(value_float, exact_float):
    """Forward ``exact_float``, gradient of ``value_float`` (straight-through)."""
    return value_float + (exact_float - value_float).detach()


def _quant_tensor(w, bits, where):
    """Symmetric per-tensor quantization in float64, as export does it: (int array, scale)."""
    wf = np.asarray(w, np.float64)
    qmax = (1 << (bits - 1)) - 1
    s = float(weight_scale(torch.as_tensor(wf.reshape(1, -1)), bits, per_channel=False)[0])
    if not s > 0 or not math.isfinite(s):
        raise ExportError(f"{where}: weight scale {s} not positive and finite")
    return np.clip(np.round(wf / s), -qmax, qmax).astype(np.int64), s


def _int32(v, what, where):
    v = np.round(np.asarray(v, np.float64))
    if not np.all(np.isfinite(v)) or np.abs(v).max(initial=0) > (1 << 31) - 1:
        raise ExportError(f"{where}: {what} does not fit int32 after scaling")
    return v.astype(np.int64)


def _rq1(mult, where):
    m, sh = requant_constants(np.array([mult], np.float64), where)
    return int(m[0]), int(sh[0])


# -- the integer rules in torch (the QAT forward value; tests compare them with the golden) ------

def channel_attention_int(q, c, act_bits):
    """ECA's integer rule on an int64 NCHW batch ``q`` with the constants ``c`` (a Layer-like
    namespace: pool_m, pool_sh, bias, z_m, z_sh, kernel, lut)."""
    a_max = (1 << act_bits) - 1
    n, ch = q.shape[:2]
    p = _rq(q.sum(dim=(2, 3)), c.pool_m, c.pool_sh).clamp(0, a_max)           # [N, C]
    kernel = torch.as_tensor(np.asarray(c.kernel, np.int64))
    k = len(kernel)
    pp = F.pad(p, ((k - 1) // 2, (k - 1) // 2))                               # zeros outside
    z = torch.full_like(p, int(c.bias))
    for j in range(k):
        z = z + kernel[j] * pp[:, j:j + ch]
    i = _rq(z, c.z_m, c.z_sh).clamp(-128, 127)
    a = torch.as_tensor(np.asarray(c.lut, np.int64))[i + 128]                 # [N, C]
    return (q * a[:, :, None, None] + 128) >> 8


def spatial_attention_int(q, c, act_bits):
    """NL-SAM's integer rule (constants: pool_m, pool_sh, ctx_weight, ctx_bias, ctx_m, ctx_sh,
    bias, z_m, z_sh, lut)."""
    a_max = (1 << act_bits) - 1
    p = _rq(q.sum(dim=(2, 3)), c.pool_m, c.pool_sh).clamp(0, a_max)           # [N, C]
    wt = torch.as_tensor(np.asarray(c.ctx_weight, np.int64))
    v = p @ wt.T + torch.as_tensor(np.asarray(c.ctx_bias, np.int64))
    u = _rq(v, c.ctx_m, c.ctx_sh).clamp(-128, 127)                            # int8 per image
    z = torch.einsum("nc,nchw->nhw", u, q) + int(c.bias)
    i = _rq(z, c.z_m, c.z_sh).clamp(-128, 127)
    s = torch.as_tensor(np.asarray(c.lut, np.int64))[i + 128]                 # [N, H, W]
    return (q * s[:, None] + 128) >> 8


def dynamic_conv1x1_int(q, c, act_bits):
    """Dynamic 1x1 convolution's integer rule (constants: stride, weight [K, cout, cin],
    bias [K, cout], att_step, att_pool_m, att_pool_sh, att_m, att_sh, att_weight, att_bias,
    exp_lut, m, sh; raw int32 accumulators when m is None)."""
    a_max = (1 << act_bits) - 1
    t = int(c.att_step)
    st = q[:, :, ::t, ::t].sum(dim=(2, 3))
    p = _rq(st, c.att_pool_m, c.att_pool_sh).clamp(0, a_max)                  # [N, cin]
    aw = torch.as_tensor(np.asarray(c.att_weight, np.int64))
    r = p @ aw.T + torch.as_tensor(np.asarray(c.att_bias, np.int64))          # [N, K]
    d = r - r.max(dim=1, keepdim=True).values
    j = _rq(d, c.att_m, c.att_sh).clamp(-255, 0)
    e = torch.as_tensor(np.asarray(c.exp_lut, np.int64))[j + 255]
    pi = torch.div(e * 256, e.sum(dim=1, keepdim=True), rounding_mode="floor")
    w = torch.as_tensor(np.asarray(c.weight, np.int64))
    b = torch.as_tensor(np.asarray(c.bias, np.int64))
    wm = (torch.einsum("nk,koi->noi", pi, w) + 128) >> 8                      # [N, cout, cin]
    bm = (pi @ b + 128) >> 8                                                  # [N, cout]
    s = int(c.stride)
    xs = q[:, :, ::s, ::s]
    acc = torch.einsum("noi,nihw->nohw", wm, xs) + bm[:, :, None, None]
    if c.m is None:
        return acc
    m = torch.as_tensor(np.asarray(c.m, np.int64)).view(1, -1, 1, 1)
    sh = torch.as_tensor(np.asarray(c.sh, np.int64)).view(1, -1, 1, 1)
    return ((acc * m + (1 << (sh - 1))) >> sh).clamp(0, a_max)


class _Consts:
    """A plain namespace of integer constants (what a Layer of the op holds)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


# -- modules -------------------------------------------------------------------------------

class SignedQuant(ActQuant):
    """Signed int8 fake-quantizer (NL-SAM's context ``u``): ``scale = quantile(|u|) / 127``.

    An :class:`~models.quant.ActQuant` so that :func:`~models.quant.set_observe` calibrates it
    and :func:`~models.quant.set_qat` switches it with the activations.
    """

    def __init__(self):
        super().__init__(8)

    def forward(self, x):
        if self.observe:
            with torch.no_grad():
                m = torch.quantile(x.detach().abs().flatten().float(), 0.9999)
                self.running_max.copy_(torch.maximum(self.running_max, m))
                self.scale.copy_(torch.clamp(self.running_max, min=1e-6) / 127.0)
        if not self.enabled:
            return x
        s = self.scale
        xc = torch.clamp(x, -128 * float(s), 127 * float(s))
        return xc + (torch.round(xc / s) * s - xc).detach()


class AttentionBase(nn.Module):
    """What the three modules share: the QAT switch, the input scale, the integer layer.

    Attributes
    ----------
    qat : bool
        Exact integer forward value (set by :func:`models.quant.set_qat`).
    op : str
        The artifact op this module exports to.
    """

    op = ""
    attention_module = True  # recognised by models.quant.set_qat / export

    def __init__(self, act_bits=8, weight_bits=8):
        super().__init__()
        self.act_bits, self.weight_bits = int(act_bits), int(weight_bits)
        self.qat = False
        self.__dict__["_source"] = None

    def gate_parameters(self):
        """The parameters that compute the attention (not a dynamic conv's kernels)."""
        return list(self.parameters())

    def bind_source(self, aq):
        """The :class:`ActQuant` whose scale the input carries (not registered as a child)."""
        self.__dict__["_source"] = aq

    def in_scale(self):
        """Scale ``s`` of the input integers (``x = q * s``)."""
        aq = self.__dict__["_source"]
        if aq is None:
            raise ExportError(f"{self.op} module has no bound input quantizer (bind_source)")
        s = float(aq.scale)
        if not s > 0:
            raise ExportError(f"{self.op}: the input's activation scale was never calibrated "
                              f"(run QAT calibration first)")
        return s

    def integer_layer(self, s_in, h, w, where="attention"):
        """The exported integer constants for an input of scale ``s_in`` and size ``h x w``
        (a namespace with the op's :class:`~models.layer.Layer` attribute names)."""
        raise NotImplementedError

    def export_layer(self, s_in, h, w, where="attention"):
        """The :class:`~models.layer.Layer` of this module (what :func:`models.quant.export`
        writes) for an input of scale ``s_in`` and size ``h x w``.

        Raises
        ------
        ExportError
            Uncalibrated scales, a value outside int32, requant constants out of range.
        """
        lay = Layer(self.op)
        for key, value in vars(self.integer_layer(s_in, h, w, where)).items():
            setattr(lay, key, value)
        return lay

    def _exact(self, x, rule):
        """``rule`` on the input's integers with this module's exported constants."""
        s = self.in_scale()
        with torch.no_grad():
            q = torch.round(x.detach().double() / s).long()
            c = self.integer_layer(s, x.shape[2], x.shape[3])
            return rule(q, c, self.act_bits), c


class ChannelAttention(AttentionBase):
    """ECA channel attention: ``x * sigmoid(bias + conv1d_k(mean_pool(x)))``.

    Parameters
    ----------
    channels : int
    k : int, optional
        Odd kernel size in [1, 9]; default ECA's adaptive size (:func:`eca_kernel_size`).
    bias_init : float
        Initial scalar bias (2: the module starts near the identity, ``sigmoid(2) = 0.88``,
        so the output keeps most of the input's integer range).
    act_bits, weight_bits : int
    """

    op = "channel_attention"

    def __init__(self, channels, k=None, bias_init=2.0, act_bits=8, weight_bits=8):
        super().__init__(act_bits, weight_bits)
        k = eca_kernel_size(channels) if k is None else int(k)
        if k < 1 or k > 9 or k % 2 == 0:
            raise ValueError(f"ECA kernel size {k}: must be odd, in [1, 9]")
        self.channels, self.k = int(channels), k
        self.kernel = nn.Parameter(torch.empty(k).uniform_(-1 / math.sqrt(k), 1 / math.sqrt(k)))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def _kernel(self):
        if not self.qat:
            return self.kernel
        qmax = (1 << (self.weight_bits - 1)) - 1
        s = weight_scale(self.kernel[None], self.weight_bits, per_channel=False)[0]
        k = self.kernel / s
        return torch.clamp(k + (torch.round(k) - k).detach(), -qmax, qmax) * s

    def forward(self, x):
        p = x.mean(dim=(2, 3))
        z = self.bias + F.conv1d(p[:, None], self._kernel().view(1, 1, -1),
                                 padding=(self.k - 1) // 2)[:, 0]
        out = x * torch.sigmoid(z)[:, :, None, None]
        if not self.qat:
            return out
        qo, _ = self._exact(x, channel_attention_int)
        return _ste(out, qo.to(x.dtype) * self.in_scale())

    def integer_layer(self, s_in, h, w, where="channel_attention"):
        pool_m, pool_sh = _rq1(1.0 / (h * w), where)
        kernel, s_k = _quant_tensor(self.kernel.detach().cpu().numpy(), self.weight_bits, where)
        bias = int(_int32(float(self.bias.detach()) / (s_k * s_in), "bias", where))
        z_m, z_sh = _rq1(s_k * s_in / SIGMOID_STEP, where)
        return _Consts(pool_m=pool_m, pool_sh=pool_sh, bias=bias, z_m=z_m, z_sh=z_sh,
                       kernel=kernel.astype(np.int8), lut=sigmoid_lut())


class SpatialAttention(AttentionBase):
    """NL-SAM: ``x * sigmoid(bias + sum_c u[c] x[y, x, c])``, ``u = Linear(C, C)(mean_pool(x))``.

    Parameters
    ----------
    channels : int
    bias_init : float
        Initial scalar bias of the map (2: starts near the identity).
    act_bits, weight_bits : int
    """

    op = "spatial_attention"

    def __init__(self, channels, bias_init=2.0, act_bits=8, weight_bits=8):
        super().__init__(act_bits, weight_bits)
        self.channels = int(channels)
        self.ctx = nn.Linear(channels, channels)
        with torch.no_grad():  # a small context at first: the map starts flat
            self.ctx.weight.mul_(0.3)
            self.ctx.bias.zero_()
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))
        self.uq = SignedQuant()

    def forward(self, x):
        p = x.mean(dim=(2, 3))
        w = self.ctx.weight
        if self.qat:
            qmax = (1 << (self.weight_bits - 1)) - 1
            s = weight_scale(w, self.weight_bits, per_channel=False)[0]
            wk = w / s
            w = torch.clamp(wk + (torch.round(wk) - wk).detach(), -qmax, qmax) * s
        u = self.uq(F.linear(p, w, self.ctx.bias))
        z = self.bias + torch.einsum("nc,nchw->nhw", u, x)
        out = x * torch.sigmoid(z)[:, None]
        if not self.qat:
            return out
        qo, _ = self._exact(x, spatial_attention_int)
        return _ste(out, qo.to(x.dtype) * self.in_scale())

    def integer_layer(self, s_in, h, w, where="spatial_attention"):
        pool_m, pool_sh = _rq1(1.0 / (h * w), where)
        cw, s_w = _quant_tensor(self.ctx.weight.detach().cpu().numpy(), self.weight_bits, where)
        cb = _int32(self.ctx.bias.detach().cpu().double().numpy() / (s_w * s_in), "ctx_bias",
                    where)
        s_u = float(self.uq.scale)
        if not s_u > 0:
            raise ExportError(f"{where}: the context's scale was never calibrated")
        ctx_m, ctx_sh = _rq1(s_w * s_in / s_u, where)
        bias = int(_int32(float(self.bias.detach()) / (s_u * s_in), "bias", where))
        z_m, z_sh = _rq1(s_u * s_in / SIGMOID_STEP, where)
        return _Consts(pool_m=pool_m, pool_sh=pool_sh, ctx_m=ctx_m, ctx_sh=ctx_sh, bias=bias,
                       z_m=z_m, z_sh=z_sh, ctx_weight=cw.astype(np.int8),
                       ctx_bias=cb.astype(np.int32), lut=sigmoid_lut())


class DynamicConv1x1(AttentionBase):
    """Dynamic 1x1 convolution: ``K`` kernels mixed per image by a softmax attention.

    ``pi = softmax(att(pool_t(x)))`` where ``pool_t`` averages the pixels ``(t*y, t*x)``
    (EAM-DyNet's sampled pooling: ``1/t**2`` of the pooling work), then the conv with
    ``sum_k pi_k W_k`` and ``sum_k pi_k b_k``, BatchNorm (frozen and folded into every kernel
    in QAT and at export; exact in float since the ``pi_k`` sum to 1), ReLU, activation
    quantizer. Stride 1 or 2 as :class:`~models.quant.QConv`.

    Parameters
    ----------
    cin, cout : int
    stride : int
    kernels : int
        K >= 2.
    step : int
        Attention pooling interval t >= 1.
    act_bits, weight_bits : int
    """

    op = "dynamic_conv1x1"

    def __init__(self, cin, cout, stride=1, kernels=4, step=2, act_bits=8, weight_bits=8):
        super().__init__(act_bits, weight_bits)
        if stride not in (1, 2):
            raise ValueError(f"dynamic conv1x1 stride {stride} not supported (1 or 2)")
        if kernels < 2:
            raise ValueError(f"dynamic conv1x1: kernels = {kernels}, at least 2 are needed")
        if step < 1:
            raise ValueError(f"dynamic conv1x1: attention step {step} must be at least 1")
        self.cin, self.cout, self.stride = int(cin), int(cout), int(stride)
        self.kernels, self.step = int(kernels), int(step)
        self.last = False
        self.weight = nn.Parameter(torch.empty(kernels, cout, cin))
        for k in range(kernels):
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(kernels, cout))
        self.att = nn.Linear(cin, kernels)
        with torch.no_grad():  # near-uniform mix at first (every kernel gets trained)
            self.att.weight.mul_(0.1)
            self.att.bias.zero_()
        self.bn = nn.BatchNorm2d(cout)
        self.aq = ActQuant(act_bits)

    def gate_parameters(self):
        return list(self.att.parameters())

    def folded(self):
        """BatchNorm folded into every kernel: (weight ``[K, cout, cin]``, bias ``[K, cout]``)."""
        k = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        return (self.weight * k[None, :, None],
                (self.bias - self.bn.running_mean[None]) * k[None] + self.bn.bias[None])

    def _row_scale(self, w):
        """One scale per output channel shared by the K kernels: ``[cout]``."""
        rows = w.permute(1, 0, 2).reshape(self.cout, -1)
        return weight_scale(rows, self.weight_bits, per_channel=True)

    def forward(self, x):
        p = x[:, :, ::self.step, ::self.step].mean(dim=(2, 3))
        aw = self.att.weight
        if self.qat:
            w, b = self.folded()
            qmax = (1 << (self.weight_bits - 1)) - 1
            s = self._row_scale(w)[None, :, None]
            wk = w / s
            w = torch.clamp(wk + (torch.round(wk) - wk).detach(), -qmax, qmax) * s
            sa = weight_scale(aw, self.weight_bits, per_channel=False)[0]
            ak = aw / sa
            aw = torch.clamp(ak + (torch.round(ak) - ak).detach(), -qmax, qmax) * sa
        else:
            w, b = self.weight, self.bias
        pi = torch.softmax(F.linear(p, aw, self.att.bias), dim=1)                 # [N, K]
        wm = torch.einsum("nk,koi->noi", pi, w)
        bm = pi @ b
        xs = x[:, :, ::self.stride, ::self.stride]
        y = torch.einsum("noi,nihw->nohw", wm, xs) + bm[:, :, None, None]
        if not self.qat:
            y = self.bn(y)
        out = self.aq(torch.relu(y))
        if not self.qat:
            return out
        qo, _ = self._exact(x, dynamic_conv1x1_int)
        return _ste(out, qo.to(x.dtype) * float(self.aq.scale))

    def integer_layer(self, s_in, h, w, where="dynamic_conv1x1"):
        t = self.step
        n_att = (-(-h // t)) * (-(-w // t))
        att_pool_m, att_pool_sh = _rq1(1.0 / n_att, where)
        aw, s_a = _quant_tensor(self.att.weight.detach().cpu().numpy(), self.weight_bits, where)
        ab = _int32(self.att.bias.detach().cpu().double().numpy() / (s_a * s_in), "att_bias",
                    where)
        att_m, att_sh = _rq1(s_a * s_in / EXP_STEP, where)
        with torch.no_grad():
            wf, bf = (v.detach().cpu().double() for v in self.folded())
            sw = self._row_scale(wf).numpy()                                      # [cout]
        wf, bf = wf.numpy(), bf.numpy()
        qmax = (1 << (self.weight_bits - 1)) - 1
        wq = np.clip(np.round(wf / sw[None, :, None]), -qmax, qmax).astype(np.int8)
        bq = _int32(bf / (sw[None, :] * s_in), "bias", where).astype(np.int32)
        s_out = float(self.aq.scale)
        if not s_out > 0:
            raise ExportError(f"{where}: activation scale never calibrated (run QAT "
                              f"calibration before export)")
        m, sh = requant_constants(sw * s_in / s_out, where)
        return _Consts(stride=self.stride, weight=wq, bias=bq, att_step=t,
                       att_pool_m=att_pool_m, att_pool_sh=att_pool_sh, att_m=att_m,
                       att_sh=att_sh, att_weight=aw.astype(np.int8),
                       att_bias=ab.astype(np.int32), exp_lut=exp_lut(),
                       m=m.astype(np.uint16), sh=sh.astype(np.uint8))
