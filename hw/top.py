"""The whole-network dataflow accelerator, composed from a :class:`~hw.plan.Plan`.

One engine per layer, chained by pixel streams through FIFOs; one parameter port broadcast to
every engine; images in through one stream, logits (one int32 per beat) out through another.
"""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .params import channel_attention_param_words, conv_param_words, \
    dynamic_conv_param_words, gap_param_words, param_bus_signature, shift_param_words, \
    spatial_attention_param_words
from .plan import stage_block
from .stream import RegisterSlice, beats_per_pixel, pixel_layout, pixel_stream

__all__ = ["Accelerator", "param_words", "stage_param_words", "image_beats",
           "overlay_param_space", "overlay_param_words"]


def _make_block(stage, model, radius):
    """Instantiate the hardware block that implements one plan stage (the planner counted
    the same block's resources through :func:`hw.plan.stage_block`)."""
    cls, kwargs = stage_block(stage, model, radius)
    return cls(**kwargs)


def _is_ice40(platform):
    """An Amaranth iCE40 (SiliconBlue) platform."""
    try:
        from amaranth.vendor import SiliconBluePlatform
    except ImportError:  # pragma: no cover - the vendor module is part of Amaranth 0.5
        return False
    return isinstance(platform, SiliconBluePlatform)


def _add_tap(m, layer, out):
    """Named copies of a layer's output handshake (``tap{layer}_valid/ready/payload``).

    The cocotb testbench monitors these to find the first layer whose output differs from
    the golden model; the simulation build keeps exactly these public.
    """
    valid = Signal(name=f"tap{layer}_valid")
    ready = Signal(name=f"tap{layer}_ready")
    payload = Signal(len(out.payload.as_value()), name=f"tap{layer}_payload")
    m.d.comb += [valid.eq(out.valid), ready.eq(out.ready), payload.eq(out.payload.as_value())]


class Accelerator(wiring.Component):
    """Dataflow accelerator for one network topology (parameters loaded at run time).

    Parameters
    ----------
    model : models.artifact.Model
        Gives the topology and bit widths; its weights are *not* built in (load them through
        ``params``, see :func:`param_words`), so one bitstream serves every retraining.
    plan : hw.plan.Plan

    Attributes
    ----------
    params : In(param_bus_signature())
        Parameter beats (always ready); load them while no image is in flight.
    images : In(pixel_stream(plan.input_lanes, model.input_bits))
        Input pixels, raster order, ``last`` on the final beat of each image.
    logits : Out(pixel_stream(1, 32, is_signed=True))
        One int32 logit per beat, classes in order, ``last`` on the final class.
    register_boundaries : bool or None
        Put a full-throughput :class:`~hw.stream.RegisterSlice` on both sides of every
        inter-stage FIFO (and on the image input), so that no handshake or data path runs
        from one block into the next block's FIFO logic in one cycle. ``None`` (default):
        on, except on an iCE40 platform, whose parts are nearly full and whose builds never
        ran near their clock limit on these paths (every flip-flop is a logic cell there).
        The slices add latency and buffering, never a cycle per image (see ``elaborate``).
    """

    def __init__(self, model, plan, *, register_boundaries=None):
        self.model = model
        self.plan = plan
        self.register_boundaries = register_boundaries
        super().__init__({
            "params": In(param_bus_signature()),
            "images": In(pixel_stream(plan.input_lanes, model.input_bits)),
            "logits": Out(pixel_stream(1, 32, is_signed=True)),
        })

    def elaborate(self, platform):
        m = Module()
        # Register the broadcast parameter beat once: it fans out to every engine, and a
        # register here keeps that fan-out off the input port's timing path. The port is
        # always ready (consumers only write memories), so the broadcast needs no ready
        # combining: one registered stream connected to every block's parameter port.
        bus = param_bus_signature().create(path=("param_bus",))
        m.d.sync += [bus.valid.eq(self.params.valid), bus.payload.eq(self.params.payload)]
        consumers = []
        regs = self.register_boundaries
        if regs is None:
            regs = not _is_ice40(platform)

        def slice_(name, src):
            # Whole 85F digits design at ~84 MHz: its critical paths were handshakes routed
            # across the die, a block's comb valid/ready into the far FIFO's LUT-RAM write
            # data, read enable and output-register enables (10+ ns of routing). A register
            # slice cuts each such path at the boundary. It keeps one beat per cycle and
            # holds two beats, so a stage's steady rate and the FIFOs' room are unchanged or
            # larger; the blocks' own credit counts only their internal output FIFOs, which
            # these slices are outside of.
            if not regs:
                return src
            rs = RegisterSlice(src.payload.shape())
            m.submodules[name] = rs
            wiring.connect(m, src, rs.i)
            return rs.o

        upstream = slice_("rs_in", wiring.flipped(self.images))
        for n, stage in enumerate(self.plan.stages):
            block = _make_block(stage, self.model, self.plan.radius)
            m.submodules[f"s{n}_{stage.name.replace('.', '_')}"] = block
            if "params" in block.signature.members:
                consumers.append((f"s{n}", block.layer_id, block.params))
            wiring.connect(m, upstream, block.i)
            out = block.o
            if stage.layer is not None and stage.kind != "subsample":
                _add_tap(m, stage.layer, out)
            if stage.fifo_depth:
                # Producer -> slice -> FIFO -> slice -> consumer: the FIFO's write side (level
                # compare, LUT-RAM write) and read side (read enable into its output register)
                # each see only flip-flops of a slice next to them.
                out = slice_(f"rs{n}_w", out)
                out = self._fifo(m, n, out, stage)
                out = slice_(f"rs{n}_r", out)
            else:
                out = slice_(f"rs{n}", out)
            upstream = out
        wiring.connect(m, upstream, wiring.flipped(self.logits))
        # One registered parameter stream per consumer, carrying only that block's beats.
        # Every block decodes the bus the same way (kind, row 0, lane 0, row < depth, ...),
        # so with one shared bus register Yosys's opt_merge kept one copy of the common
        # decode terms for several blocks, and their fan-out across the die to the far
        # blocks' write and clock enables was the whole 85F digits design's critical path
        # (L7.conv's parameter payload -> the decode shared by L7/L8/L9 -> L8.gap's (m, sh)
        # enables, 11.9 ns, 9.7 ns of it routing, 84.15 MHz). Here each block's own layer
        # match is registered once (its valid) and its payload registers load only on that
        # match: the enables differ per block (different layer constant), so these registers
        # and every decode behind them stay the block's own, and the bus register's fan-out
        # is one register stage per block. Costs one cycle of parameter latency (the port is
        # always ready and loads happen while no image is in flight; no beat is dropped:
        # every beat of the block's layer is forwarded, in order, one cycle later).
        # (name, layer id, port) of each block's parameter port, for tests.
        self.param_ports = [(name, layer_id, consumer) for name, layer_id, consumer in consumers]
        for block, layer_id, consumer in consumers:
            local = param_bus_signature().create(path=(f"param_{block}",))
            hit = bus.valid & (bus.payload.layer == layer_id)
            m.d.sync += local.valid.eq(hit)
            with m.If(hit):
                m.d.sync += local.payload.eq(bus.payload)
            wiring.connect(m, local, consumer)
        return m

    def _fifo(self, m, n, src, stage):
        # Elastic buffer of about one output row: absorbs the bursts of stages that emit on
        # some rows only (maxpool, stride 2) so the next engine keeps its steady rate.
        # The FIFO's streams carry the payload as plain bits of the same width; wiring.connect
        # matches members by width, so the pixel layout passes through unchanged.
        layout = pixel_layout(stage.lanes_out, stage.bits_out, is_signed=stage.signed)
        fifo = SyncFIFOBuffered(width=layout.size, depth=stage.fifo_depth)
        m.submodules[f"f{n}"] = fifo
        wiring.connect(m, src, fifo.w_stream)
        return fifo.r_stream

def param_words(model, plan):
    """Every parameter beat the accelerator needs, encoded (see :mod:`hw.params`).

    A dataflow plan: the words of every stage's block. An overlay plan (``plan.engine ==
    "overlay"``): :func:`overlay_param_words`, every entry of the engine's memories.

    Returns
    -------
    list of int
    """
    if getattr(plan, "engine", "dataflow") == "overlay":
        return overlay_param_words(plan)
    return [w for stage in plan.stages if stage.layer is not None
            for w in stage_param_words(stage, model.layers[stage.layer])]


def overlay_param_space(config):
    """The memories an overlay engine with ``config`` takes words for, in load order.

    Returns
    -------
    list of (ParamKind, rows, lanes)
        Program (``max_passes`` × the pass fields), gather table, weights (``weight_rows`` ×
        ``lanes``; with a weight store ``weight_store // 2`` rows, the gather and channel
        tables ``weight_store // 4`` entries), then the per-channel tables (``channel_rows`` each): bias, m, sh, qmax;
        with attention hardware (``config.attention``) its table (``attention_rows``).
    """
    from .overlay_program import PASS_FIELDS
    from .params import ParamKind
    from .overlay_program import store_capacity
    wrows, grows, ch = store_capacity(config)
    return [(ParamKind.PROGRAM, int(config.max_passes), len(PASS_FIELDS)),
            (ParamKind.GATHER, int(grows), 1),
            (ParamKind.WEIGHT, int(wrows), int(config.lanes)),
            (ParamKind.BIAS, ch, 1), (ParamKind.M, ch, 1), (ParamKind.SH, ch, 1),
            (ParamKind.QMAX, ch, 1)] + (
        # The attention unit's table (sigmoid/exp/spatial LUTs and kernels, ParamKind.LUT
        # words), only when the engine is built with attention hardware.
        [(ParamKind.LUT, int(config.attention_rows), 1)]
        if getattr(config, "attention", ()) else [])


def _word_fields():
    from .params import PARAM_LAYOUT
    return {name: (PARAM_LAYOUT[name].offset, (1 << PARAM_LAYOUT[name].width) - 1)
            for name in ("layer", "kind", "row", "lane", "data")}


def overlay_param_words(plan):
    """The parameter words of an overlay plan as the link loads them: one write to *every*
    entry of every memory of :func:`overlay_param_space` (the plan's value where
    ``plan.param_words()`` has one, else 0), in that order.

    The link engine fixes a design's word count and address limits from the words of the
    model it was built for (:func:`shiftacc.sw.protocol.param_limits`, the LOAD_BEGIN word
    count). An overlay bitstream must take every model that compiles for its config, so its
    count and limits must depend on the config alone: writing the whole memory space gives
    exactly that, and also leaves nothing of an earlier model in the engine (unused table
    entries and program rows after END are zeros).

    Raises
    ------
    ValueError
        A word of ``plan.param_words()`` lies outside the engine's memories (a compiler bug).
    """
    from .params import OVERLAY_LAYER
    f = _word_fields()
    (yo, ym), (ko, km), (ro, rm), (lo, lm), (do, dm) = (
        f["layer"], f["kind"], f["row"], f["lane"], f["data"])
    given = {}
    for w in plan.param_words():
        w = int(w)
        if w >> yo & ym != OVERLAY_LAYER:
            raise ValueError(f"overlay parameter word {w:#x} has layer {w >> yo & ym}, not "
                             f"{OVERLAY_LAYER:#x}")
        given[(w >> ko & km, w >> ro & rm, w >> lo & lm)] = w >> do & dm
    base = OVERLAY_LAYER << f["layer"][0]
    words, used = [], 0
    for kind, rows, lanes in overlay_param_space(plan.config):
        k = int(kind.value)
        head = base | k << ko
        for r in range(rows):
            for ln in range(lanes):
                v = given.get((k, r, ln))
                if v is not None:
                    used += 1
                else:
                    v = 0
                words.append(head | r << ro | ln << lo | v << do)
    if used != len(given):
        raise ValueError(f"the overlay plan has {len(given) - used} parameter words outside "
                         f"the engine's memories ({overlay_param_space(plan.config)})")
    return words


def stage_param_words(stage, layer):
    """The parameter beats of one stage's block for ``layer`` (none for blocks without
    parameters), addressed as :mod:`hw.params` defines for that block's lanes."""
    if stage.kind == "shift":
        return shift_param_words(stage.layer, layer.shifts.tolist(), stage.lanes_in)
    if stage.kind == "conv":
        return conv_param_words(stage.layer, layer.weight.tolist(), layer.bias.tolist(),
                                None if layer.m is None else layer.m.tolist(),
                                None if layer.sh is None else layer.sh.tolist(),
                                stage.lanes_in, stage.lanes_out)
    if stage.kind == "gap":
        return gap_param_words(stage.layer, layer.m, layer.sh)
    if stage.kind == "channel_attention":
        return channel_attention_param_words(stage.layer, layer)
    if stage.kind == "spatial_attention":
        return spatial_attention_param_words(stage.layer, layer)
    if stage.kind == "dynamic_conv":
        return dynamic_conv_param_words(stage.layer, layer, stage.lanes_in, stage.lanes_out)
    return []


def image_beats(images, lanes, bits):
    """Pack uint images ``[N, H, W, C]`` into the input stream's beat data (without ``last``).

    Returns
    -------
    ndarray of object (Python ints) [N, beats_per_image]
        Each entry is the ``data`` field of one beat: lane l at bits ``l*bits``.
    """
    import numpy as np
    n, h, w, c = images.shape
    nb = beats_per_pixel(c, lanes)
    padded = np.zeros((n, h, w, nb * lanes), np.int64)
    padded[..., :c] = images
    lanes_v = padded.reshape(n, h * w * nb, lanes)
    weights = [1 << (l * bits) for l in range(lanes)]
    out = np.zeros((n, h * w * nb), dtype=object)
    for l in range(lanes):
        out = out + lanes_v[..., l].astype(object) * weights[l]
    return out
