"""Clock-domain crossings between the link (``link`` domain) and the accelerator (``sync``).

On the iCE40 boards the UART PHY and the link engine run at half the accelerator's clock
(:class:`~shiftacc.hw.board.LinkTop` with ``link_domain``): the link serves a 3 Mbaud line
and needs no more than 24 MHz, while the accelerator's clock is what sets images/s. The
three streams between them cross here, each with real synchronisers (two flip-flops per
crossing signal, driven from a flip-flop of the source domain), never on the assumption
that the two clocks come from one PLL:

* :class:`ParamCrossing` (link -> sync, the always-ready parameter bus): a toggle per word.
  The payload is not copied: the link holds its word (``busy`` stalls its byte reader) from
  the beat until the accelerator's side has acknowledged it, so the 80 payload bits are a
  bundle held stable across the handshake.
* :class:`AsyncStreamFIFO` (link -> sync, the image stream): a small asynchronous FIFO in
  flip-flops (Gray-coded pointers through two-flip-flop synchronisers), one beat per link
  cycle sustained: the overlay's LOAD takes the image serially, so its rate shows in the
  cycles per image.
* :class:`StreamHandshake` (sync -> link, the logits): a two-phase request/acknowledge per
  beat. The payload is not copied either: the source's stream holds it (valid without
  ready: the payload may not change) until the acknowledge returns and ``ready`` is given.

The synchronisers are ``amaranth.lib.cdc.FFSynchronizer`` (two stages).
"""

from amaranth.hdl import Array, Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .params import param_bus_signature

__all__ = ["ParamCrossing", "AsyncStreamFIFO", "StreamHandshake", "SYNC_STAGES",
           "IMAGE_FIFO_DEPTH"]

#: Flip-flops of every synchroniser (the first may go metastable, the second resolves it).
SYNC_STAGES = 2

#: Entries of the image crossing's FIFO in :class:`~shiftacc.hw.board.LinkTop` (4 keep one
#: value per link cycle flowing at 2:1; the cycle model counts LOAD from it).
IMAGE_FIFO_DEPTH = 4


def _gray(v):
    return v ^ (v >> 1)


class ParamCrossing(wiring.Component):
    """The parameter bus from ``i_domain`` to ``o_domain``: one toggle per word, the word
    itself held by the source.

    Contract of the source (the link engine with ``param_handshake``): after a beat
    (``i.valid``) its payload does not change while ``busy`` is high, and it offers no
    beat while ``busy`` is high. ``busy`` is high in the beat's own cycle and until the
    acknowledge has come back through the synchroniser, so the payload is stable from two
    ``o_domain`` flip-flops before the beat appears there until after it has been taken.

    Attributes
    ----------
    i : In(param_bus_signature())
        Source side (``i_domain``).
    busy : Out(1)
        ``i_domain``: a word is on its way (hold the payload, send no beat).
    o : Out(param_bus_signature())
        ``o_domain``: one ``valid`` cycle per word, payload = the source's held word.
    """

    def __init__(self, *, i_domain="link", o_domain="sync"):
        self._i, self._o = i_domain, o_domain
        #: i_domain register that crosses: toggles once per word
        self.req = Signal()
        super().__init__({"i": In(param_bus_signature()), "busy": Out(1),
                          "o": Out(param_bus_signature())})

    def elaborate(self, platform):
        m = Module()
        di, do = m.d[self._i], m.d[self._o]
        req = self.req
        req_o = Signal()        # req in o_domain (synchronised)
        seen = Signal()         # o_domain: the last req taken (also the acknowledge)
        ack_i = Signal()        # seen in i_domain (synchronised)
        with m.If(self.i.valid):
            di += req.eq(~req)
        m.submodules.req_sync = FFSynchronizer(req, req_o, o_domain=self._o,
                                               stages=SYNC_STAGES)
        m.submodules.ack_sync = FFSynchronizer(seen, ack_i, o_domain=self._i,
                                               stages=SYNC_STAGES)
        # The beat in o_domain is a register (one cycle per toggle): nothing but a
        # flip-flop in front of the consumer's enables. ``seen`` changes at the same edge,
        # so the acknowledge leaves only once the beat has been offered.
        do += [seen.eq(req_o), self.o.valid.eq(req_o ^ seen)]
        m.d.comb += [self.o.payload.eq(self.i.payload),
                     self.busy.eq(self.i.valid | (req ^ ack_i))]
        return m


class AsyncStreamFIFO(wiring.Component):
    """A stream from ``w_domain`` to ``r_domain`` through a ``depth``-entry FIFO of
    flip-flops (never a block RAM: the entries are registers, read through a multiplexer).

    Gray-coded write and read pointers (one bit wider than the index) cross through
    two-flip-flop synchronisers; an entry is read only after the write pointer that covers
    it has crossed, and rewritten only after the read pointer past it has crossed back.
    ``o.valid`` is a flip-flop (registered from the synchroniser's output and the read
    pointer's next value): the reader (the accelerator, at the fast clock) sees nothing but
    a flip-flop there; ``i.ready`` is decoded from the write pointer and the synchronised
    read pointer (the writer is the slow link).

    Parameters
    ----------
    shape : shape-castable
        Payload shape.
    depth : int
        Entries, a power of two >= 2.

    Attributes
    ----------
    i : In(stream.Signature(shape))
        ``w_domain``.
    o : Out(stream.Signature(shape))
        ``r_domain``.
    """

    def __init__(self, shape, depth=4, *, w_domain="link", r_domain="sync"):
        if depth < 2 or depth & (depth - 1):
            raise ValueError(f"AsyncStreamFIFO: depth {depth} is not a power of two >= 2")
        self.shape, self.depth = shape, depth
        self._w, self._r = w_domain, r_domain
        #: the Gray-coded pointers, the registers that cross (one bit wider than the index)
        self.w_gray = Signal(depth.bit_length(), name="w_gray")
        self.r_gray = Signal(depth.bit_length(), name="r_gray")
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        dw, dr = m.d[self._w], m.d[self._r]
        n = self.depth.bit_length() - 1
        bits = n + 1
        mem = Array(Signal.like(self.i.payload, name=f"entry{k}") for k in range(self.depth))

        r_gray = self.r_gray        # read pointer (r_domain)

        # write side
        w_bin = Signal(bits)
        w_gray = self.w_gray
        r_gray_w = Signal(bits)     # the read pointer, synchronised into w_domain
        m.submodules.r_sync = FFSynchronizer(r_gray, r_gray_w, o_domain=self._w,
                                             stages=SYNC_STAGES)
        # full: the pointers differ in their top two Gray bits only. Decoded from the
        # synchroniser's output, not registered again: the round trip (write, pointer
        # across, read, pointer back) is then 4 write cycles at 2:1, so 4 entries keep one
        # beat per write cycle flowing (a registered flag made it 5: 4 beats per 5 cycles).
        flip = 0b11 << (bits - 2)
        w_full = Signal()
        m.d.comb += w_full.eq(w_gray == (r_gray_w ^ flip))
        w_take = self.i.valid & ~w_full
        w_bin_n = Signal(bits)
        m.d.comb += [self.i.ready.eq(~w_full), w_bin_n.eq(w_bin + w_take)]
        with m.If(w_take):
            dw += mem[w_bin[:n]].eq(self.i.payload)
        dw += [w_bin.eq(w_bin_n), w_gray.eq(_gray(w_bin_n))]

        # read side
        r_bin = Signal(bits)
        w_gray_r = Signal(bits)     # the write pointer, synchronised into r_domain
        m.submodules.w_sync = FFSynchronizer(w_gray, w_gray_r, o_domain=self._r,
                                             stages=SYNC_STAGES)
        r_valid = Signal()
        r_take = r_valid & self.o.ready
        r_bin_n = Signal(bits)
        m.d.comb += [r_bin_n.eq(r_bin + r_take),
                     self.o.valid.eq(r_valid), self.o.payload.eq(mem[r_bin[:n]])]
        # not empty, registered (an older view of the write pointer only makes it look
        # emptier): ``o.valid`` is a flip-flop.
        dr += [r_bin.eq(r_bin_n), r_gray.eq(_gray(r_bin_n)),
               r_valid.eq(_gray(r_bin_n) != w_gray_r)]
        return m


class StreamHandshake(wiring.Component):
    """A stream from ``i_domain`` to ``o_domain``, one beat per two-phase handshake, the
    payload held by the source (a stream's payload may not change while ``valid`` waits
    for ``ready``): no copy of it.

    A beat offered in ``i_domain`` toggles a request (registered); ``o_domain`` sees the
    request through a synchroniser and offers the beat with the source's payload; when it
    is taken there, the acknowledge toggles and comes back through a synchroniser, and
    only then is ``i.ready`` given (one cycle), so the payload stays put while
    ``o_domain`` may read it. The source must keep the stream rule: a beat offered
    (``valid``) stays offered, with its payload, until taken (the overlay engine's logits
    queue does); a beat withdrawn after its request left would still arrive.

    Attributes
    ----------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    """

    def __init__(self, shape, *, i_domain="sync", o_domain="link"):
        self._i, self._o = i_domain, o_domain
        #: the registers that cross: i_domain's request and o_domain's acknowledge toggles
        self.req = Signal()
        self.ack = Signal()
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        di, do = m.d[self._i], m.d[self._o]
        req = self.req          # i_domain toggle: a beat is offered
        waiting = Signal()      # i_domain: a request is outstanding
        req_o = Signal()
        ack = self.ack          # o_domain toggle: the beat was taken
        ack_i = Signal()
        m.submodules.req_sync = FFSynchronizer(req, req_o, o_domain=self._o,
                                               stages=SYNC_STAGES)
        m.submodules.ack_sync = FFSynchronizer(ack, ack_i, o_domain=self._i,
                                               stages=SYNC_STAGES)
        done = Signal()
        m.d.comb += [done.eq(waiting & (ack_i == req)), self.i.ready.eq(done)]
        with m.If(done):
            di += waiting.eq(0)
        with m.Elif(self.i.valid & ~waiting):
            di += [req.eq(~req), waiting.eq(1)]
        m.d.comb += [self.o.valid.eq(req_o ^ ack), self.o.payload.eq(self.i.payload)]
        with m.If(self.o.valid & self.o.ready):
            do += ack.eq(~ack)
        return m
