"""UART PHY, 8N1: a transmitter and a receiver with fractional bit timing.

A frame is a start bit (0), eight data bits LSB first, and a stop bit (1); the idle line is
high. Both directions time their bits from the bit period in fixed point,
``P = round(clk_hz * 2**frac_bits / baud)`` (:func:`bit_period_fixed`), so the clock need not be
an integer multiple of the baud rate: the *average* bit period is ``clk_hz / baud`` to within
``2**-frac_bits`` of a cycle, and every bit boundary lies within one cycle of its ideal time.
At least :data:`MIN_CYCLES_PER_BIT` (4) clock cycles per bit are required: the receiver takes a
3-sample majority vote around each bit's centre and needs a cycle of margin either side.

:class:`UARTTx` sends bytes back to back (the stop bit of one frame is followed directly by the
start bit of the next, 100 % line efficiency). :class:`UARTRx` synchronises the asynchronous
line, finds the start bit's falling edge, checks the start bit at its centre (a glitch on the
idle line yields nothing), votes each data bit and the stop bit at its centre, and reports
framing errors, breaks and overruns with one-cycle pulses.

The pure-Python :func:`uart_waveform` (a per-cycle line for given bytes at any bit period) and
:func:`decode_waveform` / :func:`decode_frames` (a reference decoder) are the independent models
the tests check the hardware against; they use no Amaranth (plain integers and Fractions).
"""

import math
from fractions import Fraction

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .resources import Cost
from .stream import require_int

__all__ = ["UARTTx", "UARTRx", "MIN_CYCLES_PER_BIT", "DEFAULT_FRAC_BITS", "BITS_PER_FRAME",
           "uart_ratio_ok", "check_uart_ratio", "bit_period_fixed", "uart_cost",
           "uart_waveform", "decode_waveform", "decode_frames"]

#: Fewest clock cycles per bit the PHY accepts (the receiver's vote spans 3 cycles).
MIN_CYCLES_PER_BIT = 4
#: Default fractional bits of the bit-period accumulator (error <= 2**-17 cycle per bit).
DEFAULT_FRAC_BITS = 16
#: Bit periods per 8N1 frame (start + 8 data + stop).
BITS_PER_FRAME = 10


# ---- parameters ------------------------------------------------------------------------------

def uart_ratio_ok(clk_hz, baud):
    """Whether ``clk_hz / baud`` is at least :data:`MIN_CYCLES_PER_BIT` (exact, no float)."""
    return clk_hz >= MIN_CYCLES_PER_BIT * baud


def check_uart_ratio(block, clk_hz, baud):
    """Raise ``ValueError`` naming ``block`` unless ``clk_hz`` and ``baud`` are positive ints
    with at least :data:`MIN_CYCLES_PER_BIT` clock cycles per bit."""
    for name, value in (("clk_hz", clk_hz), ("baud", baud)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{block}: {name} must be a positive integer, got {value!r}")
    if not uart_ratio_ok(clk_hz, baud):
        raise ValueError(
            f"{block}: clk_hz/baud = {clk_hz}/{baud} = {clk_hz / baud:.4g} clock cycles per bit "
            f"is below the minimum of {MIN_CYCLES_PER_BIT} (the receiver votes over 3 cycles "
            f"around each bit centre); raise clk_hz or lower baud")


def bit_period_fixed(clk_hz, baud, frac_bits=DEFAULT_FRAC_BITS):
    """The bit period ``clk_hz / baud`` in cycles, as a fixed-point integer with ``frac_bits``
    fractional bits, rounded to nearest (error <= ``2**-(frac_bits + 1)`` cycle)."""
    return ((clk_hz << (frac_bits + 1)) + baud) // (2 * baud)


def uart_cost(clk_hz, baud):
    """Resources of either PHY direction (see :mod:`hw.resources`): no multiplier, no memory
    (a few counters and shift registers); ``cycles`` is one frame,
    ``ceil(10 * clk_hz / baud)`` clock cycles per byte."""
    return Cost(cycles=-(-BITS_PER_FRAME * clk_hz // baud))


def _check_frac_bits(block, frac_bits):
    require_int(block, "frac_bits", frac_bits, 0, 32)


# ---- hardware --------------------------------------------------------------------------------


class _UARTCost:
    """The resource statement both halves of the PHY share."""

    @staticmethod
    def cost(*, clk_hz, baud):
        """Resources (see :mod:`hw.resources`): no multiplier, no memory; one frame
        (``ceil(10 * clk_hz / baud)`` cycles) per byte."""
        return uart_cost(clk_hz, baud)

    def resources(self):
        """:meth:`cost` of this instance."""
        return self.cost(clk_hz=self.clk_hz, baud=self.baud)


class UARTTx(_UARTCost, wiring.Component):
    """8N1 transmitter with fractional bit timing and no gap between back-to-back frames.

    Each bit lasts ``N`` or ``N + 1`` cycles, ``N = floor(clk_hz / baud)``: a ``frac_bits``
    accumulator adds the fractional part of the fixed-point period every bit and its carry
    lengthens that bit by one cycle (a first-order sigma-delta). The accumulator starts at
    one half when a frame starts from idle and runs on across back-to-back frames, so the
    ``m``-th bit boundary of a burst is ``start + m * clk_hz / baud`` rounded to the nearest
    cycle (off by at most ``1/2 + m * 2**-(frac_bits+1)`` cycle, the second term from the
    rounding of the period): no drift however long the burst.

    ``i.ready`` is high when idle and in the last cycle of a stop bit: a byte offered then
    starts its start bit on the very next cycle, so a continuous stream fills the line
    completely (10 bit periods per byte). ``tx`` is a register (no glitches on the pin); it
    falls one cycle after the handshake.

    Parameters
    ----------
    clk_hz : int
        Clock frequency of the ``sync`` domain.
    baud : int
        Line rate in bits per second; ``clk_hz / baud >= 4``.
    frac_bits : int
        Fractional bits of the bit-period accumulator (default 16).

    Attributes
    ----------
    i : In(stream.Signature(8))
        Bytes to send.
    tx : Out(1, init=1)
        The serial line (idle high).

    Raises
    ------
    ValueError
        Non-positive ``clk_hz``/``baud`` or fewer than 4 clock cycles per bit.
    """

    def __init__(self, clk_hz, baud, *, frac_bits=DEFAULT_FRAC_BITS):
        check_uart_ratio("UARTTx", clk_hz, baud)
        _check_frac_bits("UARTTx", frac_bits)
        self.clk_hz, self.baud, self.frac_bits = clk_hz, baud, frac_bits
        #: Bit period in fixed point (``frac_bits`` fractional bits).
        self.period = bit_period_fixed(clk_hz, baud, frac_bits)
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        k = self.frac_bits
        n_int = self.period >> k                       # whole cycles per bit (>= 4)
        n_frac = self.period & ((1 << k) - 1)          # fractional part, added every bit

        busy = Signal()
        count = Signal(range(n_int + 2))               # cycles left in the current bit, >= 1
        frac = Signal(k)                               # fractional phase carried across bits
        shreg = Signal(9)                              # data bits then the stop bit, LSB first
        left = Signal(range(10))                       # bits still to shift out after this one

        # Length of the next bit: N, plus one when the fractional phase wraps. A frame that
        # starts from idle restarts the phase at one half, so its bit boundaries are the ideal
        # times rounded to the nearest cycle; back to back, the phase runs on (no drift).
        frac_sum = Signal(k + 1)
        m.d.comb += frac_sum.eq(Mux(busy, frac, (1 << k) >> 1) + n_frac)
        next_len = Signal(range(n_int + 2))
        m.d.comb += next_len.eq(n_int + frac_sum[k])

        # Ready in the stop bit's last cycle too, so the next start bit follows with no gap:
        # ready == ~busy | (busy & count == 1 & left == 0), kept in its own register (set
        # from the next state below) rather than decoded from count and left, because the
        # producer's handshake logic hangs off it (in the 85F board design the decode plus the
        # link's send logic was the critical path, 83.9 MHz).
        ready = Signal(init=1)
        m.d.comb += self.i.ready.eq(ready)

        with m.If(self.i.valid & ready):
            m.d.sync += [
                self.tx.eq(0),                         # start bit
                shreg.eq(Cat(self.i.payload, Const(1, 1))),
                left.eq(9),
                count.eq(next_len),                    # >= 4: not the last cycle
                frac.eq(frac_sum[:k]),
                busy.eq(1),
                ready.eq(0),
            ]
        with m.Elif(busy):
            with m.If(count == 1):
                with m.If(left == 0):
                    m.d.sync += [busy.eq(0), ready.eq(1)]   # stop bit done; tx stays high
                with m.Else():
                    m.d.sync += [
                        self.tx.eq(shreg[0]),
                        shreg.eq(shreg >> 1),
                        left.eq(left - 1),
                        count.eq(next_len),            # >= 4: not the last cycle
                        frac.eq(frac_sum[:k]),
                    ]
            with m.Else():
                m.d.sync += [count.eq(count - 1),
                             ready.eq((count == 2) & (left == 0))]   # next: the last cycle
        return m


class UARTRx(_UARTCost, wiring.Component):
    """8N1 receiver: start-edge search, centre sampling with a 3-sample majority vote.

    Timing. ``rx`` passes through a two-stage :class:`~amaranth.lib.cdc.FFSynchronizer` (it is
    asynchronous to ``sync``). The first low sample after a high one (the falling edge of a
    start bit) starts a fixed-point phase register ``rem`` = time to the next sample point, in
    units of ``2**-frac_bits`` cycle: it falls by one cycle per cycle and fires when less than
    a cycle is left, then adds the bit period ``P``. So the ten sample points of a frame are
    ``P`` apart on average and each within half a cycle of its ideal time; the frame is
    re-timed at every start edge, so a sender off by a few percent is still sampled near each
    bit's centre (±2 % is tested at 8 and 16 cycles per bit).

    Voting. The vote at a sample point is the majority of the synchronised line at the
    bit's centre - 1, centre and centre + 1 cycles (the sample point is scheduled one cycle
    after the centre so that the three samples are in hand). One- or two-cycle glitches are
    thus ignored inside a bit, and a glitch on the idle line fails the start-bit check (the
    start bit must vote 0 at its centre) and produces nothing.

    Output. A byte whose stop bit votes 1 goes to a one-byte output register, ``o.valid`` high
    (payload stable) until taken: the consumer has a whole frame time to take it. A UART
    cannot be held back, so a byte that completes while the register still holds an untaken
    byte is dropped and ``overrun`` pulses; the held (older) byte is kept.

    Errors.

    * ``framing_error`` pulses for one cycle when a stop bit votes 0; the byte is not delivered
      and the receiver waits for the line to be high before it hunts for the next start bit.
      When every bit of the frame was 0 (the line may be in a break) the pulse is deferred
      until the line returns high, and is replaced by ``break_detected`` if the low lasts.
    * ``break_detected`` pulses for one cycle once the line has been low for longer than a
      whole frame (``floor(10 * clk_hz / baud) + 1`` cycles); nothing is delivered, and the
      receiver waits for the line to return high before hunting for a start bit.

    Latency: ``o.valid`` rises about 4 cycles after the centre of the stop bit on the ``rx``
    pin (2 synchroniser stages, the vote's centre + 1 sample point, the output register),
    within ±1 cycle from the rounding of the sample point.

    Parameters
    ----------
    clk_hz : int
        Clock frequency of the ``sync`` domain.
    baud : int
        Nominal line rate in bits per second; ``clk_hz / baud >= 4``.
    frac_bits : int
        Fractional bits of the sample-point phase (default 16).

    Attributes
    ----------
    rx : In(1)
        The serial line (asynchronous, idle high).
    o : Out(stream.Signature(8))
        Received bytes.
    overrun : Out(1)
        One-cycle pulse: a completed byte was dropped (the previous one was not taken yet).
    framing_error : Out(1)
        One-cycle pulse: a stop bit sampled 0 (the byte is not delivered).
    break_detected : Out(1)
        One-cycle pulse: the line has been low for longer than a frame.

    Raises
    ------
    ValueError
        Non-positive ``clk_hz``/``baud`` or fewer than 4 clock cycles per bit.
    """

    def __init__(self, clk_hz, baud, *, frac_bits=DEFAULT_FRAC_BITS):
        check_uart_ratio("UARTRx", clk_hz, baud)
        _check_frac_bits("UARTRx", frac_bits)
        self.clk_hz, self.baud, self.frac_bits = clk_hz, baud, frac_bits
        #: Bit period in fixed point (``frac_bits`` fractional bits).
        self.period = bit_period_fixed(clk_hz, baud, frac_bits)
        #: Consecutive low cycles that make a break (longer than one whole frame).
        self.break_cycles = BITS_PER_FRAME * clk_hz // baud + 1
        super().__init__({
            "rx": In(1),
            "o": Out(stream.Signature(8)),
            "overrun": Out(1),
            "framing_error": Out(1),
            "break_detected": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        k = self.frac_bits
        one = 1 << k
        P = self.period

        # The line is asynchronous: two flip-flops against metastability, idle (1) at reset
        # so that reset does not look like a start bit.
        line = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, line, init=1)

        # The two previous samples, for edge detection and the 3-sample vote.
        h1 = Signal(init=1)
        h2 = Signal(init=1)
        m.d.sync += [h1.eq(line), h2.eq(h1)]
        vote = Signal()
        m.d.comb += vote.eq((line & h1) | (line & h2) | (h1 & h2))
        fell = Signal()
        m.d.comb += fell.eq(~line & h1)

        # Sample-point phase: time to the next sample point, fixed point, in [0, P).
        rem = Signal(range(max(P, one) + 1))
        fire = Signal()
        m.d.comb += fire.eq(rem < one)
        # At the edge (first low sample, cycle n0) the start bit's centre is taken as
        # n0 - 1/2 + P/2 (the edge lies somewhere in the cycle before n0); the sample point is
        # one cycle after the centre and is rounded to a cycle by firing when
        # 0 <= rem < 1 with a +1/2 bias: for cycle n0 + 1 that leaves rem = P/2.
        rem_at_edge = P >> 1

        IDLE, RECV, WAIT_HIGH = 0, 1, 2
        state = Signal(range(3), init=IDLE)
        bitn = Signal(range(10))                       # 0: start bit, 1..8 data, 9 stop bit
        shreg = Signal(8)                              # data bits, shifted in at the MSB
        fe_pending = Signal()                          # all-zero frame: framing error or break?

        low_run = Signal(range(self.break_cycles + 1))
        brk = Signal()
        m.d.comb += brk.eq(~line & (low_run == self.break_cycles - 1))
        with m.If(line):
            m.d.sync += low_run.eq(0)
        with m.Elif(low_run != self.break_cycles):
            m.d.sync += low_run.eq(low_run + 1)

        # Pulses default to 0 every cycle.
        m.d.sync += [self.overrun.eq(0), self.framing_error.eq(0), self.break_detected.eq(0)]
        # The output register empties when taken.
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        def start_frame():
            return [state.eq(RECV), bitn.eq(0), rem.eq(rem_at_edge)]

        with m.Switch(state):
            with m.Case(IDLE):
                with m.If(fell):
                    m.d.sync += start_frame()
            with m.Case(RECV):
                with m.If(fire):
                    m.d.sync += [rem.eq(rem + (P - one)), bitn.eq(bitn + 1)]
                    with m.If(bitn == 0):
                        with m.If(vote):
                            m.d.sync += state.eq(IDLE)     # start bit gone: it was a glitch
                    with m.Elif(bitn != 9):
                        m.d.sync += shreg.eq(Cat(shreg[1:], vote))
                    with m.Elif(vote):
                        # Good stop bit: deliver, unless the last byte is still waiting.
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.sync += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        # A fast sender's next start edge may fall on this very cycle (the
                        # vote's newest sample): start that frame now rather than miss it.
                        with m.If(fell):
                            m.d.sync += start_frame()
                        with m.Else():
                            m.d.sync += state.eq(IDLE)
                    with m.Else():
                        m.d.sync += state.eq(WAIT_HIGH)
                        with m.If(shreg == 0):
                            m.d.sync += fe_pending.eq(1)   # maybe a break; decide later
                        with m.Else():
                            m.d.sync += self.framing_error.eq(1)
                with m.Else():
                    m.d.sync += rem.eq(rem - one)
            with m.Case(WAIT_HIGH):
                with m.If(line):
                    m.d.sync += [state.eq(IDLE), fe_pending.eq(0)]
                    with m.If(fe_pending):
                        m.d.sync += self.framing_error.eq(1)

        # A break overrides everything: report it once, then wait for the line to go high.
        with m.If(brk):
            m.d.sync += [self.break_detected.eq(1), state.eq(WAIT_HIGH), fe_pending.eq(0)]
        return m


# ---- pure-Python reference models ------------------------------------------------------------

def _frame_bits(byte):
    return [0] + [(byte >> j) & 1 for j in range(8)] + [1]


def uart_waveform(data, cycles_per_bit, idle=None, gap_bits=0):
    """The 8N1 line, one level per clock cycle, for ``data`` at a possibly fractional bit period.

    Time is continuous: frame ``f`` starts at ``idle + f * (10 + gap_bits) * cycles_per_bit``
    and its bit ``j`` covers ``[start + j * cpb, start + (j + 1) * cpb)``; cycle ``n`` carries
    the level at time ``n``. So every bit lasts ``floor`` or ``ceil`` of the period and the
    average is exact (computed with :class:`fractions.Fraction`, no drift).

    Parameters
    ----------
    data : bytes or iterable of int
        Bytes to send, each in 0..255.
    cycles_per_bit : int, float or Fraction
        Bit period in clock cycles (e.g. ``Fraction(clk_hz, baud)``, or that times 1.02 for a
        sender 2 % slow); at least 1.
    idle : int, optional
        High cycles before the first frame and after the last (default: one bit period,
        rounded up).
    gap_bits : int, float or Fraction
        Extra idle time between frames, in bit periods (default 0: back to back).

    Returns
    -------
    list of int
        0/1 per cycle.
    """
    cpb = Fraction(cycles_per_bit)
    if cpb < 1:
        raise ValueError(f"uart_waveform: cycles_per_bit must be >= 1, got {cycles_per_bit!r}")
    idle = math.ceil(cpb) if idle is None else int(idle)
    if idle < 0:
        raise ValueError(f"uart_waveform: idle must be >= 0, got {idle!r}")
    gap = Fraction(gap_bits)
    if gap < 0:
        raise ValueError(f"uart_waveform: gap_bits must be >= 0, got {gap_bits!r}")
    levels = [1] * idle
    t = Fraction(idle)
    for f, byte in enumerate(data):
        if not 0 <= int(byte) <= 255:
            raise ValueError(f"uart_waveform: byte {f} is {byte!r}, not in 0..255")
        if f:
            t += gap * cpb
            levels += [1] * (math.ceil(t) - len(levels))
        for j, bit in enumerate(_frame_bits(int(byte))):
            end = math.ceil(t + (j + 1) * cpb)
            levels += [bit] * (end - len(levels))
        t += BITS_PER_FRAME * cpb
    levels += [1] * idle
    return levels


def decode_frames(levels, cycles_per_bit):
    """Reference 8N1 decoder: ``(start cycle, byte)`` of every frame on a per-cycle line.

    A frame starts at a low cycle that follows a high one (the line before index 0 counts as
    high); each bit is read at one point, its centre ``start + floor((j + 1/2) * cpb)``. A
    start bit that is high again at its centre is skipped as a glitch; the hunt for the next
    start resumes at the stop bit's centre.

    Raises
    ------
    ValueError
        A stop bit reads 0 (framing error) or the line ends inside a frame.
    """
    cpb = Fraction(cycles_per_bit)
    centre = [math.floor((j + Fraction(1, 2)) * cpb) for j in range(BITS_PER_FRAME)]
    out = []
    prev, i, n = 1, 0, len(levels)
    while i < n:
        level = levels[i]
        if not (prev and not level):
            prev, i = level, i + 1
            continue
        start = i
        if start + centre[0] < n and levels[start + centre[0]]:
            prev, i = level, i + 1                 # glitch: not a start bit
            continue
        if start + centre[-1] >= n:
            raise ValueError(f"decode_frames: the line ends inside the frame starting at "
                             f"cycle {start}")
        bits = [levels[start + c] for c in centre]
        if not bits[-1]:
            raise ValueError(f"decode_frames: framing error (stop bit 0) in the frame "
                             f"starting at cycle {start}")
        out.append((start, sum(b << j for j, b in enumerate(bits[1:9]))))
        i = start + centre[-1]
        prev = levels[i]
    return out


def decode_waveform(levels, cycles_per_bit):
    """The bytes of a per-cycle 8N1 line (see :func:`decode_frames`)."""
    return bytes(b for _, b in decode_frames(levels, cycles_per_bit))
