"""The pixel-stream convention shared by every shiftacc block (DESIGN.md §3).

A feature map travels in raster order (y, then x). A pixel of C channels is
``ceil(C / P)`` *beats* of P lanes: beat ``b`` lane ``l`` carries channel ``b * P + l``.
Lanes past C in the last beat are padding: a producer may put anything there and a consumer
must ignore them (never let them reach a result). ``last`` is high on the final beat of an
image. Shapes (H, W, C) are elaboration parameters of each block, so blocks count beats
themselves; ``last`` lets a consumer check framing and lets the top end an image.
"""

from amaranth import Module, Signal
from amaranth.hdl import signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["pixel_layout", "pixel_stream", "beats_per_pixel", "require_positive", "require_int",
           "verilog_ports", "to_verilog", "RegisterSlice"]


def beats_per_pixel(channels, lanes):
    """Beats needed to carry ``channels`` values over ``lanes`` lanes."""
    return -(-channels // lanes)


def pixel_layout(lanes, bits, *, is_signed=False):
    """Payload of a pixel stream: ``data`` (``lanes`` values of ``bits`` bits) and ``last``.

    Parameters
    ----------
    lanes : int
        Values per beat (P).
    bits : int
        Width of one value.
    is_signed : bool
        Signed lanes (raw accumulators / logits) instead of unsigned activations.
    """
    elem = signed(bits) if is_signed else unsigned(bits)
    return data.StructLayout({"data": data.ArrayLayout(elem, lanes), "last": 1})


def pixel_stream(lanes, bits, *, is_signed=False):
    """``stream.Signature`` of a pixel stream; see :func:`pixel_layout`."""
    return stream.Signature(pixel_layout(lanes, bits, is_signed=is_signed))


def require_int(block, name, value, lo, hi=None):
    """Raise a ``ValueError`` naming ``block`` and ``name`` unless ``value`` is an int (not a
    bool) in ``[lo, hi]`` (no upper bound when ``hi`` is None).

    The one check every block's elaboration parameters (shapes, lane counts, bit widths,
    layer ids) go through, so a bad one fails at construction with the same wording
    everywhere.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else (
            "a positive integer" if lo == 1 else f"an integer >= {lo}")
        if hi is not None:
            bound = f"an integer {bound}"
        raise ValueError(f"{block}: {name} must be {bound}, got {value!r}")
    return value


def require_positive(block, **values):
    """:func:`require_int` with ``lo = 1`` for every keyword argument."""
    for name, value in values.items():
        require_int(block, name, value, 1)


def verilog_ports(component):
    """The ports of ``component`` for ``amaranth.back.verilog.convert``, without constants.

    A stream with ``always_ready=True`` (the parameter port) has a constant ``ready``;
    Amaranth 0.5 refuses constant members when it derives a top-level component's ports
    itself (amaranth-lang/amaranth#1574), so they are left out here: a constant is not a
    wire of the module.
    """
    from amaranth.hdl import Const, Value, ValueCastable
    from amaranth.hdl._ir import PortDirection
    from amaranth.lib import wiring
    ports = {}
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        value = Value.cast(value)
        if isinstance(value, Const):
            continue
        direction = PortDirection.Input if member.flow == wiring.In else PortDirection.Output
        ports["__".join(map(str, path))] = (value, direction)
    return ports


def to_verilog(component, name="top", **kwargs):
    """``verilog.convert`` of a top-level component, constant ports (always-ready streams)
    included (see :func:`verilog_ports`)."""
    from amaranth.back import verilog
    return verilog.convert(component, name=name, ports=verilog_ports(component), **kwargs)


class RegisterSlice(wiring.Component):
    """Full-throughput register slice (skid buffer) of a stream: ``valid``, ``payload`` *and*
    ``ready`` leave it from flip-flops.

    A plain output register cuts ``valid``/``payload`` but leaves the consumer's ``ready``
    running combinationally back into the producer; a slice that registered ``ready`` alone
    would lose every other beat. This one has a second (skid) register: ``i.ready`` is "the
    skid register is empty", a flip-flop, so the beat accepted in the cycle the consumer
    stalls lands there and nothing is lost; one beat per cycle passes while ``o.ready`` stays
    high. Timing: the only combinational paths through it are ``o.ready`` → its output
    register's enable and the valid flags (the skid register loads whenever it is empty),
    and ``i.payload``/``i.valid`` → its output registers. At a block boundary of the whole
    design these are short (the slice sits next to one side),
    whereas a FIFO's write data, read enable and level logic otherwise sit at the far end of
    a route across the die from the block whose comb ``valid``/``ready`` they take.

    Latency one cycle, storage two beats (a consumer that counts credit in front of it must
    count them; the accelerator's blocks count credit only against their own output FIFOs).

    Parameters
    ----------
    shape : shape-castable
        Payload shape (a pixel layout, or plain bits).

    Attributes
    ----------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    """

    def __init__(self, shape):
        self.shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        # Data registers carry no reset (only the two valid flags need one: a small reset
        # fan-out, as in the blocks).
        skid = Signal.like(self.i.payload, name="skid_payload", reset_less=True)
        skid_valid = Signal()
        o_payload = Signal.like(self.i.payload, name="out_payload", reset_less=True)
        o_valid = Signal()
        m.d.comb += [self.i.ready.eq(~skid_valid), self.o.valid.eq(o_valid),
                     self.o.payload.eq(o_payload)]
        with m.If(self.o.ready | ~o_valid):
            # The output register is free (taken this cycle, or empty): it loads the skid
            # beat if there is one, else the beat on the input (accepted iff i.ready, which
            # is ~skid_valid: true on this branch's else).
            with m.If(skid_valid):
                m.d.sync += [o_payload.eq(skid), o_valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [o_payload.eq(self.i.payload), o_valid.eq(self.i.valid)]
        with m.Elif(self.i.valid & ~skid_valid):
            # Output held: the beat accepted this cycle (i.ready was high) waits in the skid.
            m.d.sync += skid_valid.eq(1)
        # The skid register takes the input whenever it is empty: its contents only matter
        # once skid_valid is set, and the cycle that sets it is one of these. Its enable is
        # then ~skid_valid, a flip-flop, instead of a function of o.ready (the consumer's,
        # often a FIFO level compare, routed into a payload-wide enable: one seed's 85F
        # critical path, 10.11 ns).
        with m.If(~skid_valid):
            m.d.sync += skid.eq(self.i.payload)
        return m
