"""DynamicConv1x1: dynamic 1×1 convolution (DyNet/CondConv, EAM-DyNet sampled attention).

Per image (DESIGN.md §1 / SPEC.md ``dynamic_conv1x1``, exactly): an attention vector is pooled
from the full-resolution input at an interval ``t``, projected to ``K`` logits, turned into
mixing coefficients ``π`` by an exp table and one floor division, the ``K`` kernels are mixed
into one conv1x1 weight/bias set, and the image is convolved with it by a
:class:`~hw.mac_array.MacArray`.
"""

import re

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .mac_array import MacArray
from .params import PARAM_LAYOUT, ParamKind, param_bus_signature
from .requant import M_BITS, SH_BITS
from .resources import Cost, MemorySpec, Multiplier, const_mul
from .stream import beats_per_pixel, pixel_stream, require_int

__all__ = ["DynamicConv1x1"]

C0 = Const(0, 1)
#: Weight-mixing schedules (see the class docstring); ``mix_mode=None`` picks the best,
#: ``"bank_rowN"`` / ``"bank_rowNxL"`` force row mixing of N kernels (and L lanes) per cycle.
MIX_MODES = ("parallel", "serial", "buffered", "bank_serial", "bank_row")

#: Width of a mixing coefficient π (0..256).
PI_BITS = 9
#: Width of an exp-table entry (uint16 in the artifact).
LUT_BITS = 16
#: Cycles from issuing an operand to the shared rq unit to its result being usable
#: (operand register, product, shift/saturate, round/clamp, result write).
RQ_PIPE = 4
#: Banked schedules: cycles of the attention sequencer per image beyond its phases (IDLE,
#: the MacArray-bank wait state).
SEQ_GAP = 2
#: Banked schedules: cycles of a map bank's use beyond receive, attention, mixing and feed.
SPAN_GAP = 4
#: Overlapped row mixing: cycles of the attention / mixing stage per image beyond its phases.
OVL_ATT_GAP = 2
OVL_MIX_GAP = 1
#: Banked schedules: slack demanded of the two-image chains (so that the period is the
#: one-image chain, exact, rather than half a two-image one).
MARGIN = 16


def _index(count, name):
    """A counter for ``count`` values, at least 1 bit wide (a zero-width signal would reach
    the Verilog as an undriven net)."""
    return Signal(range(max(count, 2)), name=name)


class DynamicConv1x1(wiring.Component):
    """Dynamic 1×1 convolution over a buffered feature map.

    Dataflow, per image.

    1. **Receive** (``R = H · W · NBi`` cycles, one input beat per cycle): every beat of a
       pixel with ``y % s == 0 and x % s == 0`` (the only ones the strided conv reads) is
       written to one bank of a two-bank map memory; every beat of a pixel with
       ``y % t == 0 and x % t == 0`` is added to that bank's pooling sums (registers, exact,
       ``in_bits + ceil(log2(ceil(H/t) · ceil(W/t)))`` bits). The next image is received into
       the other bank while this one is processed (ping-pong), so input never waits when the
       block is input-bound.
    2. **Attention** (its own small sequencer, ``A`` cycles):

       * POOL, ``cin + 4`` cycles: ``p[c] = clamp(rq(S_t[c]), 0, A)`` through a one-lane
         rq unit (the block's one shared ``a_bits × 16`` multiplier, barrel shift, clamp);
       * ATT, ``K · cin + 3`` cycles: ``r[k] = att_bias[k] + Σ_c att_weight[k, c] · p[c]``
         on the shared multiplier, the running ``max_k r[k]`` beside it;
       * EXP, ``K + 5`` cycles: ``e[k] = exp_lut[clamp(rq(r[k] - max), -255, 0) + 255]``
         through the same rq unit and the table (one block RAM), ``E = Σ e`` beside it;
       * DIV, ``9 · K`` cycles: ``π[k] = (256 · e[k]) // E`` by a restoring divider (one
         quotient bit per cycle; ``π <= 256`` has 9 bits; LUT logic, no multiplier).
    3. **Mixing**: every real weight (padding weights stay 0: they only meet masked inputs
       or don't-care outputs) ``W = (Σ_k π[k] · w_k + 128) >> 8`` (the ``K`` kernels'
       weights sit side by side in one memory row) and every ``B[o] = (Σ_k π[k] · b_k[o] +
       128) >> 8`` are written into the MacArray through its parameter port (one element
       per cycle, at its MacArray row and lane). MIXB (biases) always takes
       ``cout · K + 4`` cycles on the shared multiplier. The weights, by one of five
       schedules (:meth:`geometry` picks the allowed one with the smallest multipliers ×
       cycles, DESIGN.md §3's efficiency measure; ``mix_mode`` forces one):

       * *parallel*: MIXW, ``cin · cout + 3`` cycles on ``K`` dedicated ``weight_bits × 9``
         multipliers, after the previous image's drain (pays off on small maps, where
         mixing is a large part of the image: a classifier after gap mixes K times the
         conv's MACs);
       * *serial*: MIXW, ``K · cin · cout + 4`` cycles on the shared multiplier, after the
         drain;
       * *buffered*: the same serial mixing into a ``cin · cout`` weight buffer, done by the
         attention sequencer right after DIV, i.e. during the previous image's conv; after
         the drain only COPYW (``cin · cout + 2`` cycles) copies it into the MacArray.
         Allowed where the next image is received early enough (see :meth:`geometry`);
       * *banked* (``bank_serial``, ``bank_row``): the MacArray has two weight/bias banks
         (:class:`~hw.mac_array.MacArray` ``banks=2``) and image ``n`` uses bank ``n % 2``
         (as it uses map bank ``n % 2``), so image ``n + 1`` is mixed straight into the
         other bank while image ``n`` is convolved: no drain wait, no copy, and the feed
         of image ``n + 1`` follows image ``n``'s last map beat without a gap. The
         attention sequencer mixes after DIV (once image ``n - 1`` has left ``o``, which
         frees the bank): *bank_serial* weights on the shared multiplier through the
         parameter port (MIXW ``K · cin · cout + 4``), then MIXB (``MIX = MIXW + MIXB``);
         *bank_row* ``kpc · lpc`` dedicated ``weight_bits × 9`` multipliers: the kernel
         memory holds ``kpc`` kernels' MacArray rows side by side, each cycle ``lpc`` lanes
         of them are multiplied by their ``π``, summed and accumulated per lane, and each
         finished row (``P = p_in · p_out`` weights) is written in one cycle through the
         MacArray's row port; MIXW ``ceil(K / kpc) · NBo · NBi · ceil(P / lpc) + 3``, MIXB
         at the same time on the shared multiplier (``MIX = max(MIXW, MIXB)``);
         *bank_row…o* (overlapped): the same row mixer in a second sequencer with its own
         copy of ``π`` (taken when it starts) and MIXB on one more dedicated ``32 × 9``
         multiplier, so the next image's attention runs during this image's mixing (pays
         off where attention and mixing, not the conv, bound the period: a classifier).
         Allowed where the period is the one-image chain (see :meth:`geometry`). Then, with
         ``C = Ho · Wo · NBi · NBo`` the conv's own cycles, ``T = max(R, C, A + MIX + 2)``
         (``T = max(R, C, A + 2, MIX + 1)`` overlapped): the conv, the input or the
         attention/mixing bounds.
    4. **Conv**: the stored (strided) map, ``Ho · Wo · NBi`` beats, is streamed from the bank
       into the MacArray (``p_in × p_out`` multipliers, shared Requant, output FIFO, its own
       backpressure), whose output stream is this block's ``o``. The bank is free again once
       the last beat is in the MacArray.

    Unbanked, the MacArray holds one weight set, so writing the weights of image ``n + 1``
    waits until image ``n``'s last output beat has left ``o`` (then every weight/bias/m/sh
    read of image ``n`` is done; the banked schedules avoid this). The attention of
    image ``n + 1`` starts when it is received and ``π`` is free: in the parallel/serial
    schedules once image ``n``'s map is all in the MacArray (it overlaps the MacArray's
    tail), in the buffered one at image ``n``'s feed start. Steady-state cycles per image
    (images back to back, no stalls), exact and measured in ``tests/test_dynamic_conv.py``::

        T = max(R, P),  R = H · W · NBi
        parallel/serial:  P = MIXW + MIXB + max(D + 2, F + 3 + A)
        buffered:         P = COPYW + MIXB + 2 + max(D, A + MIXW)
        banked:           P = max(C, A + MIX + 2),  C = Ho · Wo · NBi · NBo
        overlapped:       P = max(C, A + 2, MIX + 1)
        A = (cin + 4) + (K · cin + 3) + (K + 5) + 9 · K                    attention
        D = NBi + Ho · Wo · NBi · NBo + mac.latency                         feed start -> drain
        F = NBi if Ho · Wo == 1 else NBi · (2 + (Ho · Wo - 2) · NBo)        feed start -> last
                                                                            map beat taken

    ``D``: the first pixel's ``NBi`` beats into the MacArray, its ``Ho · Wo · NBi · NBo``
    issue cycles and its :attr:`~hw.mac_array.MacArray.latency`. ``F``: the MacArray buffers
    two pixels, then takes one every ``NBi · NBo`` cycles. The weight writes of the next
    image start 2 cycles after this image's drain (seen, WAIT left) or once the next
    image's attention (and buffered mixing) is done and seen, whichever is later.
    Input-bound (``R >= P``, parallel/serial only) the next image's receive never waits for
    a bank, so ``T = R``; otherwise ``T = P``.

    Parameters (run time, :func:`hw.params.dynamic_conv_param_words`): kernel k's ``WEIGHT``
    rows ``k · NBo · NBi + conv row`` and ``BIAS`` rows ``k · NBo + o // p_out`` are stored in
    this block's kernel memories; ``M``/``SH`` go straight to the MacArray; ``ATT_WEIGHT``
    row k lane c, ``ATT_BIAS`` lane k, ``LUT`` lane j and ``SCALAR`` lanes 0..3
    (att_pool_m, att_pool_sh, att_m, att_sh) to the attention unit.

    Widths. ``r`` is exact in ``r_bits = max(31, wb + ab - 1 + ceil(log2 cin)) + 2`` signed
    bits (``|att_bias| <= 2**31``, ``|Σ| < 2**(wb-1) · 2**ab · cin``), ``d = r - max`` in one
    more. ``W`` fits ``weight_bits`` and ``B`` 32 bits (``Σ_k π[k] <= 256``), so the MacArray
    is the plain conv1x1 engine of the same widths.

    Parameters
    ----------
    width, height : int
        Input map size (W, H), full resolution.
    cin, cout : int
    p_in, p_out : int
        Lanes of ``i`` and ``o``; the MacArray has ``p_in · p_out`` multipliers.
    stride : int
        1 or 2; output ``ceil(H / s) × ceil(W / s)``, output (y, x) reads input (s·y, s·x).
    kernels : int
        K, 2..64.
    att_step : int
        t >= 1, the pooling interval of the attention input.
    in_bits, weight_bits, act_bits : int
    requant : bool
        Requantize (hidden layer) or output raw int32 logits (classifier).
    layer_id : int
    mix_mode : str or None
        None (default): the best allowed weight-mixing schedule; else force one of
        ``parallel``, ``serial``, ``buffered``, ``bank_serial``, ``bank_row`` (best
        ``kpc``/``lpc``), ``bank_rowN`` or ``bank_rowNxL`` (``kpc = N``, ``lpc = L``),
        ``bank_rowNxLo`` (overlapped);
        ValueError if it is not allowed for the shape.

    Attributes
    ----------
    i : In(pixel_stream(p_in, in_bits))
        ``H · W`` pixels of ``NBi`` beats per image; positions are counted against the
        elaboration-time shape (as GlobalAvgPool does), the input ``last`` is not needed.
        Padding lanes are masked by the MacArray and never pooled into a used sum.
    o : Out(pixel_stream(p_out, act_bits)) or Out(pixel_stream(p_out, 32, is_signed=True))
        ``Ho · Wo`` pixels of ``NBo`` beats per image, ``last`` on the image's final beat.
    params : In(param_bus_signature())
        Parameter writes of this ``layer_id`` (see above); ``ready`` is always 1.
    geo : dict
        :meth:`geometry` of this instance (folds, widths, phase lengths, cycles).

    Raises
    ------
    ValueError
        A size, width, lane count, stride, kernel count, step or layer id out of range, or
        ``requant`` not a bool; the message names the argument.
    """

    def __init__(self, *, width, height, cin, cout, p_in, p_out, stride, kernels, att_step,
                 in_bits, weight_bits, act_bits, requant, layer_id=0, mix_mode=None):
        self._cost_args = self._check(width=width, height=height, cin=cin, cout=cout,
                                      p_in=p_in, p_out=p_out, stride=stride, kernels=kernels,
                                      att_step=att_step, in_bits=in_bits,
                                      weight_bits=weight_bits, act_bits=act_bits,
                                      requant=requant, layer_id=layer_id,
                                      mix_mode=mix_mode)
        self.width, self.height, self.cin, self.cout = width, height, cin, cout
        self.p_in, self.p_out, self.stride, self.kernels = p_in, p_out, stride, kernels
        self.att_step, self.in_bits, self.weight_bits = att_step, in_bits, weight_bits
        self.act_bits, self.requant, self.layer_id = act_bits, requant, layer_id
        self.geo = self.geometry(**self._cost_args)
        for key in ("nbi", "nbo", "ho", "wo", "sum_bits", "r_bits", "d_bits", "a_bits"):
            setattr(self, key, self.geo[key])
        out_sig = (pixel_stream(p_out, act_bits) if requant
                   else pixel_stream(p_out, 32, is_signed=True))
        super().__init__({
            "i": In(pixel_stream(p_in, in_bits)),
            "o": Out(out_sig),
            "params": In(param_bus_signature()),
        })

    @staticmethod
    def _check(**kw):
        name = "DynamicConv1x1"
        for key in ("width", "height", "cin", "cout", "p_in", "p_out", "att_step"):
            require_int(name, key, kw[key], 1)
        require_int(name, "stride", kw["stride"], 1, 2)
        require_int(name, "kernels", kw["kernels"], 2, 64)
        require_int(name, "in_bits", kw["in_bits"], 1, 16)
        require_int(name, "weight_bits", kw["weight_bits"], 2, 16)
        require_int(name, "act_bits", kw["act_bits"], 1, 16)
        require_int(name, "layer_id", kw["layer_id"], 0, 255)
        if not isinstance(kw["requant"], bool):
            raise ValueError(f"{name}: requant must be a bool, got {kw['requant']!r}")
        if kw.get("mix_mode") is None:
            kw.pop("mix_mode", None)
        elif kw["mix_mode"] not in MIX_MODES and not (
                isinstance(kw["mix_mode"], str)
                and re.fullmatch(r"bank_row\d+(x\d+o?)?", kw["mix_mode"])):
            raise ValueError(f"{name}: mix_mode must be one of {MIX_MODES} or None, got "
                             f"{kw['mix_mode']!r}")
        return kw

    @staticmethod
    def geometry(*, width, height, cin, cout, p_in, p_out, stride, kernels, att_step,
                 in_bits, weight_bits, act_bits, requant, layer_id=0, mix_mode=None):
        """Folds, widths, phase lengths, the weight-mixing schedule and cycles (a dict);
        the constructor and :meth:`cost` both use it, so the planner counts what the RTL
        builds.

        The banked schedules are allowed only where two-image chains cannot set the period
        (with ``MARGIN`` cycles to spare): a map bank is held from its receive start to its
        last feed (``R + A + MIX + F + 4 <= 2 T``) and a MacArray bank from its mixing
        start to its image's drain (``D + MIX <= 2 T``). Otherwise (tiny maps where the
        mixing is most of the work) only the unbanked schedules compete.

        The buffered schedule is allowed only where its period is the one-image chain of
        the class docstring: the next image, received ``R`` cycles after its bank frees
        (this image's feed end, ``P - F`` cycles before the next feed start), is either in
        8 cycles before this image's feed starts, or late by ``late = F + R - P`` cycles
        but with its attention and mixing still ending 8 cycles before the drain; and the
        block is not input-bound (``R + 8 <= P``). (Measured exact with zero margin as well;
        the margins keep a two-image chain from ever setting the period.)
        """
        K = kernels
        nbi, nbo = beats_per_pixel(cin, p_in), beats_per_pixel(cout, p_out)
        ho, wo = -(-height // stride), -(-width // stride)
        pooled = (-(-height // att_step)) * (-(-width // att_step))
        sum_bits = in_bits + ceil_log2(pooled)
        r_bits = max(31, weight_bits + act_bits - 1 + ceil_log2(cin)) + 2
        d_bits = r_bits + 1
        # The shared multiplier's signed operand: a pooled sum, d, an att weight or a bias.
        a_bits = max(sum_bits + 1, d_bits, 32, weight_bits)
        mac = MacArray.geometry(cin=cin, cout=cout, p_in=p_in, p_out=p_out, requant=requant)
        conv = ho * wo * nbi * nbo
        receive = height * width * nbi
        # From the start of FEED: the last output beat leaves after the first pixel's NBi
        # beats, the conv's issue cycles and the MacArray latency; the last map beat enters
        # the MacArray when its input bank frees (two pixels buffered, then one every
        # NBi * NBo cycles).
        pixels = ho * wo
        drain = nbi + conv + mac["latency"]
        feed = nbi if pixels == 1 else nbi * (2 + (pixels - 2) * nbo)

        def timing(mode):
            phases = {
                "pool": cin + RQ_PIPE,
                "att": K * cin + 3,
                "exp": K + RQ_PIPE + 1,
                "div": PI_BITS * K,
                "mixw": {"parallel": cin * cout + 3, "serial": cin * cout * K + 4,
                         "buffered": cin * cout * K + 4}[mode],
                "copyw": cin * cout + 2,
                "mixb": cout * K + 4,
            }
            att = phases["pool"] + phases["att"] + phases["exp"] + phases["div"]
            if mode == "buffered":
                # Attention and weight mixing (into a buffer) of the next image run during
                # this image's conv, from the start of its feed; after the drain the buffer
                # is copied into the MacArray and the biases are mixed.
                att += phases["mixw"]
                mix = phases["copyw"] + phases["mixb"]
                process = mix + 2 + max(drain, att)
            else:
                mix = phases["mixw"] + phases["mixb"]
                # Mixing starts 2 cycles after the previous drain, or 3 + att after its
                # feed ended (the attention runs in the MacArray's tail of the previous one).
                process = mix + max(drain + 2, feed + 3 + att)
            return phases, att, mix, process, max(receive, process)

        # Weight mixing on K dedicated multipliers (one weight per cycle), or on the shared
        # one (K cycles per weight), either after the drain ("serial") or during the
        # previous conv into a buffer ("buffered", where the next image is received in
        # time, see below). The choice: the smallest multipliers x cycles, the
        # DESIGN.md §3 efficiency measure (K more multipliers idle during the conv pay off
        # only when mixing is a large part of the image, e.g. on small maps).
        base = p_in * p_out + (mac["rq_lanes"] if requant else 0) + 1
        options = {"parallel": ((base + K), timing("parallel")),
                   "serial": (base, timing("serial"))}
        buf = timing("buffered")
        # The next image is received R cycles after its bank frees (this image's feed
        # end), i.e. ``late`` cycles after this image's feed start; its attention and
        # mixing must still end before the drain, or start at the feed start (margins
        # of 8 cycles keep the period the one-image chain, never a two-image one).
        late = feed + receive - buf[3]
        if receive + 8 <= buf[3] and (late + 8 <= 0 or late + buf[1] + 8 <= drain):
            options["buffered"] = (base, buf)
        att0 = sum(options["serial"][1][0][x] for x in ("pool", "att", "exp", "div"))
        nr, lanes = nbo * nbi, p_in * p_out

        def banked(mixw, mixb, overlap=False):
            """Mixing into the MacArray's second weight bank (overlapping the previous conv):
            period and whether it is the one-image chain (see the class docstring)."""
            mix = mixw if mixb is None else max(mixw, mixb)
            # Overlapped: attention and mixing are two stages (pi handed over).
            seq = max(att0 + OVL_ATT_GAP, mix + OVL_MIX_GAP) if overlap else \
                att0 + mix + SEQ_GAP
            period = max(receive, conv, seq)
            # Two-image chains (a map bank from receive start to its last feed, a MacArray
            # bank from mixing start to drain) must not set the period: margin MARGIN.
            span = receive + att0 + mix + feed + SPAN_GAP
            ok = span + MARGIN <= 2 * period and drain + mix + MARGIN <= 2 * period
            return mix, seq, period, ok

        mixb = cout * K + 4
        # Serial mixing on the shared multiplier, then the biases (one sequencer).
        mixw = cin * cout * K + 4
        mix, seq, period, ok = banked(mixw + mixb, None)
        if ok:
            phases = dict(options["serial"][1][0], mixw=mixw, mixb=mixb)
            options["bank_serial"] = (base, (phases, att0, mix, seq, period))
        # Rows: kpc kernels x lpc of a row's p_in * p_out weights per cycle (kpc * lpc
        # multipliers), ceil(K / kpc) * ceil(P / lpc) cycles per row, the biases beside it
        # on the shared multiplier.
        for kpc in range(1, K + 1):
            groups = -(-K // kpc)
            if kpc > 1 and -(-K // (kpc - 1)) == groups:
                continue                      # as many cycles with fewer multipliers
            for lpc in range(1, lanes + 1):
                sub = -(-lanes // lpc)
                if lpc > 1 and -(-lanes // (lpc - 1)) == sub:
                    continue
                mixw = groups * nr * sub + 3
                mix, seq, period, ok = banked(mixw, mixb)
                phases = dict(options["serial"][1][0], mixw=mixw, mixb=mixb)
                if ok:
                    options[f"bank_row{kpc}x{lpc}"] = (
                        base + kpc * lpc, (phases, att0, mix, seq, period))
                # Overlapped ("o"): the next image's attention runs during this one's mixing
                # (pi copied at the mixing start), the biases on a dedicated multiplier.
                mix, seq, period, ok = banked(mixw, mixb, overlap=True)
                if ok:
                    options[f"bank_row{kpc}x{lpc}o"] = (
                        base + kpc * lpc + 1, (phases, att0, mix, seq, period))
        if mix_mode is not None:
            # A forced schedule (tests, comparisons): only it competes.
            options = {k: v for k, v in options.items()
                       if k == mix_mode or k.startswith(mix_mode + "x")
                       or (mix_mode == "bank_row" and k.startswith(mix_mode))}
            if not options:
                raise ValueError(f"DynamicConv1x1: mix_mode {mix_mode!r} is not allowed for "
                                 f"this shape (see DynamicConv1x1.geometry)")
        mode = min(options, key=lambda k: (options[k][0] * options[k][1][4], k))
        phases, att, mix, process, cycles = options[mode][1]
        kpc, lpc = (map(int, mode[8:].rstrip("o").split("x")) if mode.startswith("bank_row")
                    else (0, 0))
        return dict(nbi=nbi, nbo=nbo, ho=ho, wo=wo, sum_bits=sum_bits, r_bits=r_bits,
                    d_bits=d_bits, a_bits=a_bits, phases=phases, conv=conv, process=process,
                    attention=att, mixing=mix, drain=drain, feed=feed,
                    mix_mode="bank_row" if kpc else mode, mix_kpc=kpc, mix_lpc=lpc,
                    mix_groups=-(-K // kpc) if kpc else 0,
                    mix_sub=-(-(p_in * p_out) // lpc) if kpc else 0,
                    mix_overlap=mode.endswith("o") and kpc > 0,
                    banked=mode.startswith("bank_"),
                    mix_parallel=mode == "parallel", receive=receive, cycles=cycles,
                    mac_latency=mac["latency"], map_rows=ho * wo * nbi)

    @classmethod
    def cost(cls, *, width, height, cin, cout, p_in, p_out, stride, kernels, att_step,
             in_bits, weight_bits, act_bits, requant, layer_id=0, mix_mode=None):
        """Resources as built (see :mod:`hw.resources`).

        Multipliers: the MacArray's (``p_in · p_out`` MACs and its shared Requant lanes),
        one shared multiplier (``a_bits`` signed × 16 unsigned: the two rq steps, the
        attention MAC, the bias mixing and the serial weight mixing, never at the same time)
        and ``K`` weight-mixing multipliers (``weight_bits`` × 9) when the weights are mixed
        in parallel, ``kpc · lpc`` of them in the bank_row schedule, plus a ``32 × 9`` bias
        mixer when it is overlapped (see the class docstring); the divider is LUT logic.
        Memories: the two-bank map, the kernel weights (``K`` per row, or ``kpc`` MacArray
        rows per row in bank_row) and biases,
        ``att_weight``, the exp table, the mixed-weight buffer (buffered schedule) and the
        MacArray's (two weight/bias banks in the banked schedules). Cycles: see the class
        docstring. ``mix_mode`` (not passed by the planner) forces a schedule.
        """
        kw = cls._check(width=width, height=height, cin=cin, cout=cout, p_in=p_in,
                        p_out=p_out, stride=stride, kernels=kernels, att_step=att_step,
                        in_bits=in_bits, weight_bits=weight_bits, act_bits=act_bits,
                        requant=requant, layer_id=layer_id, mix_mode=mix_mode)
        g = cls.geometry(**kw)
        K, nbi, nbo = kernels, g["nbi"], g["nbo"]
        mac = MacArray.cost(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=in_bits,
                            weight_bits=weight_bits, act_bits=act_bits, requant=requant,
                            banks=2 if g["banked"] else 1)
        mults = [Multiplier(f"mac.{x.name}", x.count, x.a_bits, x.a_signed, x.b_bits,
                            x.b_signed, x.y_bits) for x in mac.multipliers]
        mults.append(Multiplier.amaranth("att_shared", 1, g["a_bits"], True, M_BITS, False))
        if g["mix_parallel"]:
            mults.append(Multiplier.amaranth("mix_weight", K, weight_bits, True, PI_BITS,
                                             False))
        if g["mix_mode"] == "bank_row":
            mults.append(Multiplier.amaranth("mix_weight", g["mix_kpc"] * g["mix_lpc"],
                                             weight_bits, True, PI_BITS, False))
            if g["mix_overlap"]:
                mults.append(Multiplier.amaranth("mix_bias", 1, 32, True, PI_BITS, False))
        mems = [
            MemorySpec("map", 2 * g["map_rows"], p_in * in_bits),
        ] + ([MemorySpec("mixed_weights", max(cin * cout, 2), weight_bits)]
             if g["mix_mode"] == "buffered" else []) + [
            (MemorySpec("kernel_weights", max(g["mix_groups"] * nbo * nbi, 2),
                        g["mix_kpc"] * p_in * p_out * weight_bits)
             if g["mix_mode"] == "bank_row" else
             MemorySpec("kernel_weights", max(nbo * nbi * p_in * p_out, 2), K * weight_bits)),
            MemorySpec("kernel_bias", max(K * nbo * p_out, 2), 32),
            MemorySpec("att_weight", max(K * cin, 2), weight_bits),
            MemorySpec("exp_lut", 256, LUT_BITS),
        ] + [MemorySpec(f"mac.{x.name}", x.depth, x.width) for x in mac.memories]
        return Cost(cycles=g["cycles"], multipliers=mults, memories=mems)

    def resources(self):
        """:meth:`cost` of this instance."""
        return self.cost(**self._cost_args)

    # ------------------------------------------------------------------------------ RTL
    def elaborate(self, platform):
        m = Module()
        g = self.geo
        K, cin, cout = self.kernels, self.cin, self.cout
        p_in, p_out, nbi, nbo = self.p_in, self.p_out, self.nbi, self.nbo
        ib, wb, ab = self.in_bits, self.weight_bits, self.act_bits
        W, H, s, t = self.width, self.height, self.stride, self.att_step
        NF = g["map_rows"]                    # map beats of one bank
        NR, P = nbo * nbi, p_in * p_out       # MacArray weight rows, lanes
        top = (1 << ab) - 1

        banked, row_mode = g["banked"], g["mix_mode"] == "bank_row"
        m.submodules.mac = mac = MacArray(cin=cin, cout=cout, p_in=p_in, p_out=p_out,
                                          in_bits=ib, weight_bits=wb, act_bits=ab,
                                          requant=self.requant, layer_id=self.layer_id,
                                          banks=2 if banked else 1,
                                          # Its mixer writes the weights per image through
                                          # the parameter port; the schedule (and the exact
                                          # cycle model above) counts the one-stage decode's
                                          # write latency.
                                          param_stages=1)
        wiring.connect(m, mac.o, wiring.flipped(self.o))

        # ------------------------------------------------------------ parameter decode
        par = self.params.payload
        mine = self.params.valid & (par.layer == self.layer_id)

        def kind(k):
            return mine & (par.kind == k)

        pool_m, pool_sh = Signal(M_BITS), Signal(SH_BITS)
        att_m, att_sh = Signal(M_BITS), Signal(SH_BITS)
        with m.If(kind(ParamKind.SCALAR) & (par.row == 0)):
            for lane, reg in enumerate((pool_m, pool_sh, att_m, att_sh)):
                with m.If(par.lane == lane):
                    m.d.sync += reg.eq(par.data)
        att_bias = [Signal(signed(32), name=f"att_bias{k}") for k in range(K)]
        with m.If(kind(ParamKind.ATT_BIAS) & (par.row == 0)):
            for k in range(K):
                with m.If(par.lane == k):
                    m.d.sync += att_bias[k].eq(par.data)

        # att_weight[k, c] at k * cin + c.
        m.submodules.att_weight = attw_mem = memory.Memory(
            shape=signed(wb), depth=max(K * cin, 2), init=[])
        wp = attw_mem.write_port()
        m.d.comb += [wp.addr.eq(const_mul(par.row, cin) + par.lane), wp.data.eq(par.data),
                     wp.en.eq(kind(ParamKind.ATT_WEIGHT) & (par.row < K) & (par.lane < cin))]
        attw_rd = attw_mem.read_port(domain="sync")

        m.submodules.exp_lut = lut_mem = memory.Memory(
            shape=unsigned(LUT_BITS), depth=256, init=[])
        wp = lut_mem.write_port()
        m.d.comb += [wp.addr.eq(par.lane[:8]), wp.data.eq(par.data),
                     wp.en.eq(kind(ParamKind.LUT) & (par.row == 0) & (par.lane < 256))]
        lut_rd = lut_mem.read_port(domain="sync")

        # Kernel weights: element k of row (conv row · P + lane) is kernel k's weight, so one
        # read gives the K values mixed into one MacArray weight. Row mixing (bank_row):
        # element j · P + lane of row g · NR + conv row is kernel g · kpc + j's weight, so one
        # read gives kpc kernels' whole MacArray rows.
        kpc, groups = g["mix_kpc"], g["mix_groups"]
        if row_mode:
            m.submodules.kernel_weights = kw_mem = memory.Memory(
                shape=data.ArrayLayout(signed(wb), kpc * P), depth=max(groups * NR, 2),
                init=[])
        else:
            m.submodules.kernel_weights = kw_mem = memory.Memory(
                shape=data.ArrayLayout(signed(wb), K), depth=max(NR * P, 2), init=[])
        wp = kw_mem.write_port(granularity=1)
        kw_write = kind(ParamKind.WEIGHT) & (par.row < K * NR) & (par.lane < P)
        bank = Signal(range(K + 1))
        bank_row = Signal(16)
        if row_mode:
            grp_base = Signal(range(max(groups * NR, 2)))
            sub = Signal(range(max(kpc, 2)))
        for k in range(K):
            # (row >= 0 is always true: the first bank has no lower compare.)
            in_bank = par.row < (k + 1) * NR
            if k:
                in_bank &= par.row >= k * NR
            with m.If(in_bank):
                m.d.comb += [bank.eq(k), bank_row.eq(par.row - k * NR)]
                if row_mode:
                    m.d.comb += [grp_base.eq((k // kpc) * NR), sub.eq(k % kpc)]
        if row_mode:
            m.d.comb += wp.addr.eq(grp_base + bank_row)
            for e in range(kpc * P):
                m.d.comb += [wp.data[e].eq(par.data),
                             wp.en[e].eq(kw_write & (sub == e // P) & (par.lane == e % P))]
        else:
            m.d.comb += wp.addr.eq(const_mul(bank_row, P) + par.lane)
            for k in range(K):
                m.d.comb += [wp.data[k].eq(par.data), wp.en[k].eq(kw_write & (bank == k))]
        kw_rd = kw_mem.read_port(domain="sync")

        # Kernel biases: b_k[o] at k * NBo * p_out + o = row * p_out + lane.
        m.submodules.kernel_bias = kb_mem = memory.Memory(
            shape=signed(32), depth=max(K * nbo * p_out, 2), init=[])
        wp = kb_mem.write_port()
        m.d.comb += [wp.addr.eq(const_mul(par.row, p_out) + par.lane), wp.data.eq(par.data),
                     wp.en.eq(kind(ParamKind.BIAS) & (par.row < K * nbo) & (par.lane < p_out))]
        kb_rd = kb_mem.read_port(domain="sync")

        # MacArray parameters: M/SH forwarded, WEIGHT/BIAS only from the mixer.
        mix_valid = Signal()
        mix_beat = Signal(PARAM_LAYOUT)
        fwd = kind(ParamKind.M) | kind(ParamKind.SH)
        with m.If(mix_valid):
            m.d.comb += [mac.params.valid.eq(1), mac.params.payload.eq(mix_beat)]
        with m.Else():
            m.d.comb += [mac.params.valid.eq(fwd), mac.params.payload.eq(par)]

        # ------------------------------------------------------------ receiver
        sum_layout = data.ArrayLayout(unsigned(g["sum_bits"]), p_in)
        sums = [[Signal(sum_layout, name=f"sum{b}_{j}") for j in range(nbi)] for b in range(2)]
        bank_full = [Signal(name=f"bank_full{b}") for b in range(2)]
        # Banked schedules: a received image not yet attended (its bank stays full until
        # its feed ends, long after its attention when the sequencer runs ahead).
        fresh = [Signal(name=f"fresh{b}") for b in range(2)]
        wbank = Signal()
        beat = _index(nbi, "beat")
        x, y = _index(W, "x"), _index(H, "y")
        tx, ty = _index(t, "tx"), _index(t, "ty")
        sx, sy = _index(s, "sx"), _index(s, "sy")
        waddr = _index(NF, "waddr")
        m.d.comb += self.i.ready.eq(~Mux(wbank, bank_full[1], bank_full[0]))
        take = self.i.valid & self.i.ready
        pool = (tx == 0) & (ty == 0)
        store = (sx == 0) & (sy == 0)
        first = (x == 0) & (y == 0)
        cur = Array([sums[b][j] for b in range(2) for j in range(nbi)])[Mux(wbank, nbi, 0)
                                                                        + beat]
        new = Signal(sum_layout)
        for k in range(p_in):
            m.d.comb += new[k].eq(Mux(first, 0, cur[k]) + self.i.payload.data[k])

        m.submodules.map = map_mem = memory.Memory(
            shape=unsigned(p_in * ib), depth=max(2 * NF, 2), init=[])
        map_wp = map_mem.write_port()
        m.d.comb += [map_wp.addr.eq(Mux(wbank, NF, 0) + waddr),
                     map_wp.data.eq(self.i.payload.data.as_value()),
                     map_wp.en.eq(take & store)]

        with m.If(take):
            with m.If(pool):
                for b in range(2):
                    for j in range(nbi):
                        with m.If((wbank == b) & (beat == j)):
                            m.d.sync += sums[b][j].eq(new)
            with m.If(store):
                m.d.sync += waddr.eq(Mux(waddr == NF - 1, 0, waddr + 1))
            with m.If(beat == nbi - 1):
                m.d.sync += beat.eq(0)
                with m.If(x == W - 1):
                    m.d.sync += [x.eq(0), tx.eq(0), sx.eq(0)]
                    with m.If(y == H - 1):
                        m.d.sync += [y.eq(0), ty.eq(0), sy.eq(0), wbank.eq(~wbank)]
                        for b in range(2):
                            with m.If(wbank == b):
                                m.d.sync += bank_full[b].eq(1)
                                if banked:
                                    m.d.sync += fresh[b].eq(1)
                    with m.Else():
                        m.d.sync += [y.eq(y + 1), ty.eq(Mux(ty == t - 1, 0, ty + 1)),
                                     sy.eq(Mux(sy == s - 1, 0, sy + 1))]
                with m.Else():
                    m.d.sync += [x.eq(x + 1), tx.eq(Mux(tx == t - 1, 0, tx + 1)),
                                 sx.eq(Mux(sx == s - 1, 0, sx + 1))]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)

        # ------------------------------------------------------------ engine state
        rbank = Signal()
        out_last = self.o.valid & self.o.ready & self.o.payload.last
        feed_done = Signal()
        if not banked:
            outstanding = Signal(2)     # images fed to the MacArray, last beat not yet out
            m.d.sync += outstanding.eq(outstanding + feed_done - out_last)

        phases = g["phases"]
        cnt = Signal(range(max(max(phases.values()), 2) + 1))
        tag_n = max(cin, K, 2)

        # Shared rq unit: q = clamp(rq(a, m, sh)); mode 0: [0, top] (pool), 1: [-255, 0].
        rq_v0, rq_mode0 = Signal(), Signal()
        rq_a0 = Signal(signed(g["a_bits"]))
        rq_m0, rq_sh0 = Signal(M_BITS), Signal(SH_BITS)
        rq_tag0 = Signal(range(tag_n))
        prod_bits = g["a_bits"] + M_BITS + 1
        rq_v1, rq_mode1 = Signal(), Signal()
        rq_p1 = Signal(signed(prod_bits))
        rq_s1 = Signal(SH_BITS)
        rq_tag1 = Signal.like(rq_tag0)
        m.d.sync += [rq_v1.eq(rq_v0), rq_mode1.eq(rq_mode0), rq_tag1.eq(rq_tag0),
                     rq_p1.eq(rq_a0 * rq_m0), rq_s1.eq(rq_sh0 - 1)]
        # floor((p + 2**(sh-1)) / 2**sh) == floor((floor(p / 2**(sh-1)) + 1) / 2); t is
        # saturated to a range that keeps every clamp result (see hw/requant.py).
        t_bits = max(ab + 2, 10) + 1
        rq_v2, rq_mode2 = Signal(), Signal()
        rq_t2 = Signal(signed(t_bits))
        rq_tag2 = Signal.like(rq_tag0)
        shifted = Signal(signed(prod_bits))
        m.d.comb += shifted.eq(rq_p1 >> rq_s1)
        lo = Mux(rq_mode1, -511, -1)
        hi = Mux(rq_mode1, 1, 2 * top + 1)
        m.d.sync += [rq_v2.eq(rq_v1), rq_mode2.eq(rq_mode1), rq_tag2.eq(rq_tag1)]
        with m.If(shifted < lo):
            m.d.sync += rq_t2.eq(lo)
        with m.Elif(shifted > hi):
            m.d.sync += rq_t2.eq(hi)
        with m.Else():
            m.d.sync += rq_t2.eq(shifted)
        rq_v3, rq_mode3 = Signal(), Signal()
        rq_q3 = Signal(signed(t_bits))
        rq_tag3 = Signal.like(rq_tag0)
        qq = Signal(signed(t_bits))
        m.d.comb += qq.eq((rq_t2 + 1) >> 1)
        m.d.sync += [rq_v3.eq(rq_v2), rq_mode3.eq(rq_mode2), rq_tag3.eq(rq_tag2),
                     rq_q3.eq(Mux(rq_mode2, Mux(qq > 0, 0, qq), Mux(qq > top, top, qq)))]

        # Attention registers.
        p = [Signal(unsigned(ab), name=f"p{c}") for c in range(cin)]
        r = [Signal(signed(g["r_bits"]), name=f"r{k}") for k in range(K)]
        mx = Signal(signed(g["r_bits"]))
        esum_bits = LUT_BITS + ceil_log2(K)
        e = [Signal(unsigned(LUT_BITS), name=f"e{k}") for k in range(K)]
        esum = Signal(unsigned(esum_bits))
        pi = [Signal(unsigned(PI_BITS), name=f"pi{k}") for k in range(K)]

        # rq results: pool -> p[tag]; exp -> table read, then e[tag] and E.
        with m.If(rq_v3 & ~rq_mode3):
            with m.Switch(rq_tag3):
                for c in range(cin):
                    with m.Case(c):
                        m.d.sync += p[c].eq(rq_q3)
        m.d.comb += lut_rd.addr.eq(rq_q3 + 255)
        lut_v, lut_tag = Signal(), Signal.like(rq_tag0)
        m.d.sync += [lut_v.eq(rq_v3 & rq_mode3), lut_tag.eq(rq_tag3)]
        with m.If(lut_v):
            m.d.sync += esum.eq(Mux(lut_tag == 0, 0, esum) + lut_rd.data)
            with m.Switch(lut_tag):
                for k in range(K):
                    with m.Case(k):
                        m.d.sync += e[k].eq(lut_rd.data)

        flat_sums = [[sums[b][c // p_in][c % p_in] for c in range(cin)] for b in range(2)]

        # ATT datapath: issue (k, c) reads att_weight[k*cin + c]; products; accumulate.
        ak, ac = _index(K, "att_k"), _index(cin, "att_c")
        aaddr = _index(K * cin, "att_addr")
        m.d.comb += attw_rd.addr.eq(aaddr)
        at_v1, at_k1, at_c1 = Signal(), Signal.like(ak), Signal.like(ac)
        at_p1 = Signal(unsigned(ab))
        # The product is the shared multiplier's (the rq unit is idle during ATT):
        # operands registered at stage 1, product at stage 2, accumulate at stage 3.
        with m.If(at_v1):
            m.d.sync += [rq_a0.eq(attw_rd.data), rq_m0.eq(at_p1)]
        at_v2, at_k2, at_c2 = Signal(), Signal.like(ak), Signal.like(ac)
        at_v3, at_k3, at_c3 = Signal(), Signal.like(ak), Signal.like(ac)
        m.d.sync += [at_v2.eq(at_v1), at_k2.eq(at_k1), at_c2.eq(at_c1),
                     at_v3.eq(at_v2), at_k3.eq(at_k2), at_c3.eq(at_c2)]
        r_old = Array(r)[at_k3]
        r_new = Signal(signed(g["r_bits"]))
        m.d.comb += r_new.eq(Mux(at_c3 == 0, Array(att_bias)[at_k3], r_old) + rq_p1)
        with m.If(at_v3):
            with m.Switch(at_k3):
                for k in range(K):
                    with m.Case(k):
                        m.d.sync += r[k].eq(r_new)
            with m.If(at_c3 == cin - 1):
                m.d.sync += mx.eq(Mux((at_k3 == 0) | (r_new > mx), r_new, mx))

        # DIV datapath: restoring division, one quotient bit per cycle (MSB first).
        dk = _index(K, "div_k")
        dj = Signal(range(PI_BITS))
        rem = Signal(unsigned(LUT_BITS + 8 + 1))
        dv = Signal(unsigned(esum_bits + 8))
        quo = Signal(unsigned(PI_BITS))

        # MIXW datapath: read kernel row, K products, sum, round, param beat. Only the
        # cin * cout real weights are visited (padding weights of the MacArray stay 0 and
        # only meet masked inputs or don't-care outputs): o = jo * p_out + lo,
        # i = ji * p_in + li, MacArray row jo * NBi + ji, lane lo * p_in + li.
        mi = _index(cin, "mixw_i")
        ji, li = _index(nbi, "mixw_ji"), _index(p_in, "mixw_li")
        lo = _index(p_out, "mixw_lo")
        row_base = _index(NR, "mixw_row_base")         # jo * NBi
        lane_base = _index(P, "mixw_lane_base")        # lo * p_in
        wrow, wlane = Signal.like(row_base), Signal.like(lane_base)
        m.d.comb += [wrow.eq(row_base + ji), wlane.eq(lane_base + li)]
        if not row_mode:
            m.d.comb += kw_rd.addr.eq(const_mul(wrow, P) + wlane)
        parallel = g["mix_parallel"]
        wk = _index(K, "mixw_k")                       # serial mixing: kernel of this cycle
        mw_v1, mw_row1, mw_lane1 = Signal(), Signal.like(wrow), Signal.like(wlane)
        mw_k1 = Signal.like(wk)
        mw_v2, mw_row2, mw_lane2 = Signal(), Signal.like(wrow), Signal.like(wlane)
        mw_k2 = Signal.like(wk)
        mw_v3, mw_row3, mw_lane3 = Signal(), Signal.like(wrow), Signal.like(wlane)
        mw_k3 = Signal.like(wk)
        m.d.sync += [mw_v2.eq(mw_v1), mw_row2.eq(mw_row1), mw_lane2.eq(mw_lane1),
                     mw_k2.eq(mw_k1), mw_v3.eq(mw_v2), mw_row3.eq(mw_row2),
                     mw_lane3.eq(mw_lane2), mw_k3.eq(mw_k2)]
        mw_sum = Signal(signed(max(wb, 32) + PI_BITS + 1 + ceil_log2(K)))
        mw_done = Signal()                             # mw_sum is a finished weight
        if parallel:
            # K products (one per kernel) per cycle, then their sum: one weight per cycle.
            mw_prods = [Signal(signed(wb + PI_BITS + 1), name=f"mix_prod{k}")
                        for k in range(K)]
            for k in range(K):
                m.d.sync += mw_prods[k].eq(kw_rd.data[k] * pi[k])
            total = mw_prods[0]
            for k in range(1, K):
                total = total + mw_prods[k]
            m.d.sync += mw_sum.eq(total)
            m.d.comb += mw_done.eq(mw_v3)
        elif not row_mode:
            # One product per cycle on the shared multiplier (operands at stage 1, product
            # at stage 2), accumulated over the K kernels at stage 3.
            with m.If(mw_v1):
                m.d.sync += [rq_a0.eq(Array([kw_rd.data[k] for k in range(K)])[mw_k1]),
                             rq_m0.eq(Array(pi)[mw_k1])]
            mw_acc = Signal.like(mw_sum)
            m.d.comb += mw_sum.eq(Mux(mw_k3 == 0, 0, mw_acc) + rq_p1)
            with m.If(mw_v3):
                m.d.sync += mw_acc.eq(mw_sum)
            m.d.comb += mw_done.eq(mw_v3 & (mw_k3 == K - 1))

        # Overlapped row mixing: the mixer works from its own copy of pi (taken at its
        # start) and its own bank pointer, so the next image's attention may run meanwhile.
        ovl = g.get("mix_overlap", False)
        pim = [Signal(unsigned(PI_BITS), name=f"pi_mix{k}") for k in range(K)] if ovl else pi

        # MIXB datapath: read b_k[o], product with pi[k], accumulate over k, round, beat.
        bo, bk = _index(cout, "mixb_o"), _index(K, "mixb_k")
        ba = _index(K * nbo * p_out, "mixb_addr")
        m.d.comb += kb_rd.addr.eq(ba)
        mb_v1, mb_k1 = Signal(), Signal.like(bk)
        # Product on the shared multiplier (idle while mixing; overlapped: a dedicated
        # one): operands at stage 1, product at stage 2, accumulate at stage 3.
        if ovl:
            bm_a, bm_m = Signal(signed(32)), Signal(unsigned(PI_BITS))
            mb_prod = Signal(signed(32 + PI_BITS + 1))
            m.d.sync += mb_prod.eq(bm_a * bm_m)
            with m.If(mb_v1):
                m.d.sync += [bm_a.eq(kb_rd.data), bm_m.eq(Array(pim)[mb_k1])]
        else:
            mb_prod = rq_p1
            with m.If(mb_v1):
                m.d.sync += [rq_a0.eq(kb_rd.data), rq_m0.eq(Array(pi)[mb_k1])]
        mb_v2, mb_k2 = Signal(), Signal.like(bk)
        mb_v3, mb_k3 = Signal(), Signal.like(bk)
        m.d.sync += [mb_v2.eq(mb_v1), mb_k2.eq(mb_k1), mb_v3.eq(mb_v2), mb_k3.eq(mb_k2)]
        mb_acc = Signal(signed(32 + PI_BITS + 1 + ceil_log2(K)))
        mb_new = Signal.like(mb_acc)
        m.d.comb += mb_new.eq(Mux(mb_k3 == 0, 0, mb_acc) + mb_prod)
        with m.If(mb_v3):
            m.d.sync += mb_acc.eq(mb_new)

        # Banked schedules: the MacArray bank of the image being mixed (abank, below) as
        # a row offset of the parameter port.
        abank = Signal()           # bank of the image being attended / mixed
        mbank = Signal() if ovl else abank     # bank of the image being mixed
        w_off = Mux(mbank, NR, 0) if banked else 0
        b_off = Mux(mbank, nbo, 0) if banked else 0

        # Row mixing (bank_row): kernel-memory row rg · NR + rr holds kpc kernels' MacArray
        # row rr. Per cycle (sub-step rs of ``sub``) lanes rs · lpc .. rs · lpc + lpc - 1 of
        # the kpc kernels are multiplied by their pi (kpc · lpc multipliers, stage 1), summed
        # over the kpc kernels and accumulated over the ceil(K / kpc) groups per lane
        # (stage 2); after the last group's last sub-step the rounded row is written into
        # the MacArray's other weight bank through its row port (stage 3).
        lpc, sub = g["mix_lpc"], g["mix_sub"]
        if row_mode:
            rr, rg = _index(NR, "rmix_row"), _index(groups, "rmix_grp")
            rs = _index(sub, "rmix_sub")
            raddr = _index(groups * NR, "rmix_addr")
            m.d.comb += kw_rd.addr.eq(raddr)
            rm_v1, rm_g1, rm_r1 = Signal(), Signal.like(rg), Signal.like(rr)
            rm_s1 = Signal.like(rs)
            rm_v2, rm_g2, rm_r2 = Signal(), Signal.like(rg), Signal.like(rr)
            rm_s2 = Signal.like(rs)
            m.d.sync += [rm_v2.eq(rm_v1), rm_g2.eq(rm_g1), rm_r2.eq(rm_r1), rm_s2.eq(rm_s1)]
            rprods = [Signal(signed(wb + PI_BITS + 1), name=f"rmix_prod{e}")
                      for e in range(kpc * lpc)]
            zero_w = Const(0, signed(wb))
            for j in range(kpc):
                pij = Array([pim[gi * kpc + j] if gi * kpc + j < K else C0
                             for gi in range(groups)])[rm_g1]
                for q in range(lpc):
                    w_sel = Array([kw_rd.data[j * P + s_ * lpc + q] if s_ * lpc + q < P
                                   else zero_w for s_ in range(sub)])[rm_s1]
                    m.d.sync += rprods[j * lpc + q].eq(w_sel * pij)
            racc = [Signal(signed(wb + PI_BITS + 1 + ceil_log2(K)), name=f"rmix_acc{lane}")
                    for lane in range(P)]
            wr_valid, wr_row = Signal(), Signal.like(rr)
            wr_data = [Signal(signed(wb), name=f"rmix_w{lane}") for lane in range(P)]
            m.d.sync += wr_valid.eq(rm_v2 & (rm_g2 == groups - 1) & (rm_s2 == sub - 1))
            for lane in range(P):
                q = lane % lpc
                total = rprods[q]
                for j in range(1, kpc):
                    total = total + rprods[j * lpc + q]
                new_acc = Signal.like(racc[lane], name=f"rmix_new{lane}")
                m.d.comb += new_acc.eq(Mux(rm_g2 == 0, 0, racc[lane]) + total)
                with m.If(rm_v2 & (rm_s2 == lane // lpc)):
                    m.d.sync += [racc[lane].eq(new_acc), wr_data[lane].eq((new_acc + 128) >> 8)]
            with m.If(rm_v2):
                m.d.sync += wr_row.eq(rm_r2)
            wr_bank = Signal()
            m.d.sync += wr_bank.eq(mbank)
            m.d.comb += [mac.wrow.valid.eq(wr_valid), mac.wrow.bank.eq(wr_bank),
                         mac.wrow.row.eq(wr_row)]
            for lane in range(P):
                m.d.comb += mac.wrow.data[lane].eq(wr_data[lane])
        elif banked:
            m.d.comb += mac.wrow.valid.eq(0)

        # The mixer's parameter beat (one register, both mixing phases).
        m.d.sync += mix_valid.eq(0)
        buffered = g["mix_mode"] == "buffered"
        if buffered:
            # Mixed weights go to a buffer (element order), copied after the drain.
            m.submodules.mixed_weights = wbuf = memory.Memory(
                shape=signed(wb), depth=max(cin * cout, 2), init=[])
            wbuf_wp = wbuf.write_port()
            wbuf_rd = wbuf.read_port(domain="sync")
            wb_idx = _index(cin * cout, "mixed_idx")
            m.d.comb += [wbuf_wp.addr.eq(wb_idx), wbuf_wp.data.eq((mw_sum + 128) >> 8),
                         wbuf_wp.en.eq(mw_done)]
            with m.If(mw_done):
                m.d.sync += wb_idx.eq(wb_idx + 1)
            cp_v1, cp_row1, cp_lane1 = Signal(), Signal.like(wrow), Signal.like(wlane)
            m.d.sync += cp_v1.eq(0)
            with m.If(cp_v1):
                m.d.sync += [mix_valid.eq(1), mix_beat.layer.eq(self.layer_id),
                             mix_beat.kind.eq(ParamKind.WEIGHT), mix_beat.row.eq(cp_row1),
                             mix_beat.lane.eq(cp_lane1), mix_beat.data.eq(wbuf_rd.data)]
        else:
            with m.If(mw_done):
                m.d.sync += [mix_valid.eq(1), mix_beat.layer.eq(self.layer_id),
                             mix_beat.kind.eq(ParamKind.WEIGHT),
                             mix_beat.row.eq(mw_row3 + w_off),
                             mix_beat.lane.eq(mw_lane3),
                             mix_beat.data.eq((mw_sum + 128) >> 8)]

        def reset_elements():
            """Start the (o, i) walk over the real weights."""
            return [mi.eq(0), ji.eq(0), li.eq(0), wk.eq(0), lo.eq(0), row_base.eq(0),
                    lane_base.eq(0)]

        def next_element(per_weight):
            """Advance the walk: kernel wk (``per_weight`` = K, serial) then (o, i)."""
            if per_weight > 1:
                m.d.sync += wk.eq(Mux(wk == K - 1, 0, wk + 1))
            step = 1 if per_weight == 1 else wk == K - 1
            with m.If(step & (mi == cin - 1)):
                m.d.sync += [mi.eq(0), ji.eq(0), li.eq(0)]
                with m.If(lo == p_out - 1):
                    m.d.sync += [lo.eq(0), lane_base.eq(0), row_base.eq(row_base + nbi)]
                with m.Else():
                    m.d.sync += [lo.eq(lo + 1), lane_base.eq(lane_base + p_in)]
            with m.Elif(step):
                m.d.sync += mi.eq(mi + 1)
                with m.If(li == p_in - 1):
                    m.d.sync += [li.eq(0), ji.eq(ji + 1)]
                with m.Else():
                    m.d.sync += li.eq(li + 1)
        # Output channel o's BIAS address (row o // p_out, lane o % p_out) as counters.
        b_row, b_lane = _index(nbo, "mixb_row"), _index(p_out, "mixb_lane")
        with m.If(mb_v3 & (mb_k3 == K - 1)):
            m.d.sync += [mix_valid.eq(1), mix_beat.layer.eq(self.layer_id),
                         mix_beat.kind.eq(ParamKind.BIAS), mix_beat.row.eq(b_row + b_off),
                         mix_beat.lane.eq(b_lane),
                         mix_beat.data.eq((mb_new + 128) >> 8)]
            with m.If(b_lane == p_out - 1):
                m.d.sync += [b_lane.eq(0), b_row.eq(b_row + 1)]
            with m.Else():
                m.d.sync += b_lane.eq(b_lane + 1)

        # FEED datapath: map bank -> MacArray input, one beat per cycle.
        fa = _index(NF, "feed_addr")
        f_more, f_valid, f_last = Signal(), Signal(), Signal()
        map_rd = map_mem.read_port(domain="sync")
        f_taken = mac.i.valid & mac.i.ready
        m.d.comb += [mac.i.valid.eq(f_valid), mac.i.payload.data.eq(map_rd.data),
                     mac.i.payload.last.eq(f_last)]
        fetch = Signal()
        m.d.comb += [map_rd.en.eq(fetch), map_rd.addr.eq(Mux(rbank, NF, 0) + fa)]
        m.d.sync += f_valid.eq(fetch | (f_valid & ~f_taken))
        # Banked schedules: an image is fed as soon as it is mixed (mready of its bank),
        # straight after the previous one (no gap: the MacArray never starves between
        # images); its last fetch frees its map bank. Map bank = MacArray bank = image
        # parity, so the beat's weight bank is the bank it was read from.
        mready = [Signal(name=f"mixed{b}") for b in range(2)]
        mbusy = [Signal(name=f"mac_bank_busy{b}") for b in range(2)]
        if banked:
            f_sel = Signal()
            m.d.comb += [fetch.eq(Mux(rbank, mready[1], mready[0]) & (~f_valid | f_taken)),
                         mac.wsel.eq(f_sel)]
            with m.If(fetch):
                m.d.sync += [fa.eq(Mux(fa == NF - 1, 0, fa + 1)), f_last.eq(fa == NF - 1),
                             f_sel.eq(rbank)]
                with m.If(fa == NF - 1):
                    m.d.sync += rbank.eq(~rbank)
                    for b in range(2):
                        with m.If(rbank == b):
                            m.d.sync += [bank_full[b].eq(0), mready[b].eq(0)]
            # A MacArray bank is free once the image that used it has left o.
            dbank = Signal()
            with m.If(out_last):
                m.d.sync += dbank.eq(~dbank)
                for b in range(2):
                    with m.If(dbank == b):
                        m.d.sync += mbusy[b].eq(0)
        else:
            m.d.comb += fetch.eq(f_more & (~f_valid | f_taken))
            with m.If(fetch):
                m.d.sync += [fa.eq(fa + 1), f_more.eq(fa != NF - 1), f_last.eq(fa == NF - 1)]

        # ------------------------------------------------------------ attention FSM
        # Runs while the mixer/feeder is in WAIT (the previous image's feed is done, so
        # rbank is this image's bank and pi of the previous image has been consumed); its
        # work overlaps the MacArray's tail of the previous image.
        m.d.sync += [rq_v0.eq(0), at_v1.eq(0), mw_v1.eq(0), mb_v1.eq(0)]
        if row_mode:
            m.d.sync += rm_v1.eq(0)
        pi_ready = Signal()
        mixer_idle = Signal()
        acnt = Signal.like(cnt)
        pi_full = Signal()         # overlapped: pi computed, not yet taken by the mixer
        start_ok = (~pi_full if ovl else 1) if banked else \
            ~pi_ready if buffered else ~pi_ready & mixer_idle
        with m.FSM(name="attention"):
            with m.State("IDLE"):
                full = Mux(abank, fresh[1], fresh[0]) if banked else \
                    Mux(abank, bank_full[1], bank_full[0])
                with m.If(full & start_ok):
                    m.d.sync += acnt.eq(0)
                    if banked:
                        for b in range(2):
                            with m.If(abank == b):
                                m.d.sync += fresh[b].eq(0)
                    m.next = "POOL"
            with m.State("POOL"):
                m.d.sync += acnt.eq(acnt + 1)
                with m.If(acnt < cin):
                    sel = Mux(abank, Array(flat_sums[1])[acnt], Array(flat_sums[0])[acnt])
                    m.d.sync += [rq_v0.eq(1), rq_mode0.eq(0), rq_a0.eq(sel),
                                 rq_m0.eq(pool_m), rq_sh0.eq(pool_sh), rq_tag0.eq(acnt)]
                with m.If(acnt == phases["pool"] - 1):
                    m.d.sync += [acnt.eq(0), ak.eq(0), ac.eq(0), aaddr.eq(0)]
                    m.next = "ATT"
            with m.State("ATT"):
                m.d.sync += acnt.eq(acnt + 1)
                with m.If(acnt < K * cin):
                    m.d.sync += [at_v1.eq(1), at_k1.eq(ak), at_c1.eq(ac),
                                 at_p1.eq(Array(p)[ac]), aaddr.eq(aaddr + 1)]
                    with m.If(ac == cin - 1):
                        m.d.sync += [ac.eq(0), ak.eq(ak + 1)]
                    with m.Else():
                        m.d.sync += ac.eq(ac + 1)
                with m.If(acnt == phases["att"] - 1):
                    m.d.sync += acnt.eq(0)
                    m.next = "EXP"
            with m.State("EXP"):
                m.d.sync += acnt.eq(acnt + 1)
                with m.If(acnt < K):
                    m.d.sync += [rq_v0.eq(1), rq_mode0.eq(1),
                                 rq_a0.eq(Array(r)[acnt] - mx),
                                 rq_m0.eq(att_m), rq_sh0.eq(att_sh), rq_tag0.eq(acnt)]
                with m.If(acnt == phases["exp"] - 1):
                    m.d.sync += [acnt.eq(0), dk.eq(0), dj.eq(0)]
                    m.next = "DIV"
            with m.State("DIV"):
                rem_cur = Mux(dj == 0, Array(e)[dk] << 8, rem)
                dv_cur = Mux(dj == 0, esum << 8, dv)
                ge = rem_cur >= dv_cur
                bit_q = Cat(ge, Mux(dj == 0, 0, quo)[:PI_BITS - 1])
                m.d.sync += [rem.eq(Mux(ge, rem_cur - dv_cur, rem_cur)), dv.eq(dv_cur >> 1),
                             quo.eq(bit_q)]
                with m.If(dj == PI_BITS - 1):
                    m.d.sync += [dj.eq(0), dk.eq(dk + 1)]
                    with m.Switch(dk):
                        for k in range(K):
                            with m.Case(k):
                                m.d.sync += pi[k].eq(bit_q)
                    with m.If(dk == K - 1):
                        if ovl:
                            m.d.sync += [pi_full.eq(1), abank.eq(~abank)]
                            m.next = "IDLE"
                        elif banked:
                            m.next = "BANKWAIT"
                        elif buffered:
                            m.d.sync += [acnt.eq(0), wb_idx.eq(0)] + reset_elements()
                            m.next = "BMIX"
                        else:
                            m.d.sync += [pi_ready.eq(1), abank.eq(~abank)]
                            m.next = "IDLE"
                with m.Else():
                    m.d.sync += dj.eq(dj + 1)
            if banked:
                def start_mixb():
                    return [bo.eq(0), bk.eq(0), ba.eq(0), b_row.eq(0), b_lane.eq(0)]

                def issue_mixb():
                    """One bias-mixing product (b_k[o] · pi[k]) on the shared multiplier."""
                    m.d.sync += [mb_v1.eq(1), mb_k1.eq(bk)]
                    with m.If(bk == K - 1):
                        m.d.sync += [bk.eq(0), bo.eq(bo + 1), ba.eq(bo + 1)]
                    with m.Else():
                        m.d.sync += [bk.eq(bk + 1), ba.eq(ba + nbo * p_out)]

                def finish():
                    """This image's weights and biases are in its MacArray bank."""
                    for b in range(2):
                        with m.If(mbank == b):
                            m.d.sync += mready[b].eq(1)
                    m.d.sync += mbank.eq(~mbank)
                    m.next = "IDLE"

                def bank_wait(ready, take):
                    """Wait for this image's MacArray bank (free once the image two before
                    has left o) and ``ready``; then start mixing (``take`` statements)."""
                    with m.If(ready & ~Mux(mbank, mbusy[1], mbusy[0])):
                        for b in range(2):
                            with m.If(mbank == b):
                                m.d.sync += mbusy[b].eq(1)
                        m.d.sync += [mcnt.eq(0)] + reset_elements() + start_mixb() + take
                        if row_mode:
                            m.d.sync += [rr.eq(0), rg.eq(0), rs.eq(0), raddr.eq(0)]
                            m.next = "MIX"
                        else:
                            m.next = "MIXW"

                def row_mix():
                    # Whole weight rows (row mixer) and biases (shared or, overlapped,
                    # dedicated multiplier) at the same time.
                    m.d.sync += mcnt.eq(mcnt + 1)
                    with m.If(mcnt < groups * NR * sub):
                        m.d.sync += [rm_v1.eq(1), rm_g1.eq(rg), rm_r1.eq(rr), rm_s1.eq(rs)]
                        with m.If(rs == sub - 1):
                            m.d.sync += rs.eq(0)
                            with m.If(rg == groups - 1):
                                m.d.sync += [rg.eq(0), rr.eq(rr + 1), raddr.eq(rr + 1)]
                            with m.Else():
                                m.d.sync += [rg.eq(rg + 1), raddr.eq(raddr + NR)]
                        with m.Else():
                            m.d.sync += rs.eq(rs + 1)
                    with m.If(mcnt < cout * K):
                        issue_mixb()
                    with m.If(mcnt == max(phases["mixw"], phases["mixb"]) - 1):
                        finish()

                mcnt = Signal.like(cnt, name="mix_cnt") if ovl else acnt
                if not ovl:
                    with m.State("BANKWAIT"):
                        bank_wait(1, [])
                if row_mode and not ovl:
                    with m.State("MIX"):
                        row_mix()
                elif not ovl:
                    with m.State("MIXW"):
                        # Serial weight mixing on the shared multiplier, element by element
                        # into the other MacArray bank (parameter port, row + NR).
                        m.d.sync += acnt.eq(acnt + 1)
                        with m.If(acnt < cin * cout * K):
                            m.d.sync += [mw_v1.eq(1), mw_row1.eq(wrow), mw_lane1.eq(wlane),
                                         mw_k1.eq(wk)]
                            next_element(K)
                        with m.If(acnt == phases["mixw"] - 1):
                            m.d.sync += acnt.eq(0)
                            m.next = "MIXB"
                    with m.State("MIXB"):
                        m.d.sync += acnt.eq(acnt + 1)
                        with m.If(acnt < cout * K):
                            issue_mixb()
                        with m.If(acnt == phases["mixb"] - 1):
                            finish()
            if buffered:
                with m.State("BMIX"):
                    # Serial weight mixing into the buffer, during the previous conv.
                    m.d.sync += acnt.eq(acnt + 1)
                    with m.If(acnt < cin * cout * K):
                        m.d.sync += [mw_v1.eq(1), mw_k1.eq(wk)]
                        next_element(K)
                    with m.If(acnt == phases["mixw"] - 1):
                        m.d.sync += [pi_ready.eq(1), abank.eq(~abank)]
                        m.next = "IDLE"

        if ovl:
            # The mixing stage: takes pi (a copy) as soon as it is computed and its MacArray
            # bank is free, so the attention of the next image runs meanwhile.
            with m.FSM(name="mixer"):
                with m.State("IDLE"):
                    bank_wait(pi_full, [pi_full.eq(0)] + [pim[k].eq(pi[k]) for k in range(K)])
                with m.State("MIX"):
                    row_mix()
        if banked:
            return m
        # ------------------------------------------------------------ mixer/feeder FSM
        # Mixing rewrites the MacArray's only weight set, so it waits until the previous
        # image's last output beat has left (outstanding == 0).
        with m.FSM(name="mixer"):
            with m.State("WAIT"):
                m.d.comb += mixer_idle.eq(1)
                with m.If(pi_ready & (outstanding == 0)):
                    m.d.sync += [cnt.eq(0)] + reset_elements()
                    if buffered:
                        m.next = "COPYW"
                    else:
                        m.d.sync += pi_ready.eq(0)
                        m.next = "MIXW"
            if buffered:
                with m.State("COPYW"):
                    # The buffered weights into the MacArray, one per cycle.
                    m.d.sync += cnt.eq(cnt + 1)
                    m.d.comb += wbuf_rd.addr.eq(cnt)
                    with m.If(cnt < cin * cout):
                        m.d.sync += [cp_v1.eq(1), cp_row1.eq(wrow), cp_lane1.eq(wlane)]
                        next_element(1)
                    with m.If(cnt == phases["copyw"] - 1):
                        m.d.sync += [cnt.eq(0), bo.eq(0), bk.eq(0), ba.eq(0), b_row.eq(0),
                                     b_lane.eq(0)]
                        m.next = "MIXB"
            else:
                with m.State("MIXW"):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt < phases["mixw"] - (3 if parallel else 4)):
                        m.d.sync += [mw_v1.eq(1), mw_row1.eq(wrow), mw_lane1.eq(wlane),
                                     mw_k1.eq(wk)]
                        next_element(1 if parallel else K)
                    with m.If(cnt == phases["mixw"] - 1):
                        m.d.sync += [cnt.eq(0), bo.eq(0), bk.eq(0), ba.eq(0), b_row.eq(0),
                                     b_lane.eq(0)]
                        m.next = "MIXB"
            with m.State("MIXB"):
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt < cout * K):
                    m.d.sync += [mb_v1.eq(1), mb_k1.eq(bk)]
                    with m.If(bk == K - 1):
                        m.d.sync += [bk.eq(0), bo.eq(bo + 1), ba.eq(bo + 1)]
                    with m.Else():
                        m.d.sync += [bk.eq(bk + 1), ba.eq(ba + nbo * p_out)]
                with m.If(cnt == phases["mixb"] - 1):
                    m.d.sync += [fa.eq(0), f_more.eq(1)]
                    if buffered:
                        # pi and the buffer are free: the next image's attention may start.
                        m.d.sync += pi_ready.eq(0)
                    m.next = "FEED"
            with m.State("FEED"):
                with m.If(f_taken & f_last):
                    m.d.comb += feed_done.eq(1)
                    m.d.sync += rbank.eq(~rbank)
                    for b in range(2):
                        with m.If(rbank == b):
                            m.d.sync += bank_full[b].eq(0)
                    m.next = "WAIT"
        return m
