"""Simulation top for ``shiftacc serve``: the board top plus bulk byte windows for a socket.

Per-byte Python on every clock edge would cap the simulated link near 10⁴ cycles/s, so the
testbench (:mod:`shiftacc.sim.tb_serve`) touches the design only every few hundred cycles and
moves up to :data:`WINDOW` bytes each time:

- **Host → device.** Python writes up to ``WINDOW`` bytes into ``in_data`` (byte 0 in bits
  0–7), their number into ``in_count``, and flips ``in_toggle``; the loader copies them, one
  per cycle, into a byte FIFO. ``in_ready`` says the loader is idle and the FIFO has room for
  a whole window.
- **Device → host.** Reply bytes collect in a FIFO and then in ``out_data``/``out_count``
  (up to ``WINDOW``); Python reads them and flips ``out_ack``, which empties the window on the
  next edge. Python acts between a falling and the next rising edge, so nothing moves while
  it reads.

Between the two FIFOs sits the board top (:class:`shiftacc.hw.board.LinkTop`): with
``uart=False`` its byte streams connect to the FIFOs directly; with ``uart=True`` a host-side
UART pair (the same PHY) turns the FIFO bytes into the serial line the board top's UART
receives, and its serial output back into bytes, so the link runs at the configured baud.

**Stalls.** ``stall_level`` (x/256) and ``stall_seed`` (set by the testbench before reset is
released, so one build serves every level and seed) drive a xorshift32 generator stepped every
cycle: a host → device byte waits a cycle with probability ``stall_level``/256 (the link's
``rx`` is always ready, as a UART's is, so a stall there is a gap between bytes; a gap never
exceeds :data:`MAX_GAP` cycles, far below the link's watchdog, which would otherwise abandon
the frame, as it must on a real line), and without a UART the device → host stream is refused
(``tx.ready`` low) with the same probability (a host that reads late). Level 0 leaves both
streams back to back.

**Probes** (simulation only, never built for a board). Counted at the accelerator's own
ports, cleared by ``probe_clear``: ``images_started`` (first beats of images accepted),
``window`` (cycles from the first image's first beat to the latest image's first beat),
``starved`` (cycles in that window the accelerator was ready for image bytes and none was
offered), ``logit_waits`` (cycles a logit waited for the link), and the shortest and longest
*clean* period between two consecutive images' first beats (no starved cycle and no logit
wait inside it) with their count: with nothing holding the accelerator back, each such
period is exactly one image's compute time, the figure ``hw/overlay_timing`` predicts.
Whether the host keeps the accelerator fed depends on the host's wall-clock speed (the
simulation runs on while the driver is late), so ``(window - starved) / (images_started - 1)``
is the figure to compare when no logit waited. ``rx_stalls``/``tx_stalls`` count the cycles
the stall generator held a byte back on each stream (proof that stalls happened).
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

__all__ = ["BridgeHarness", "WINDOW", "FIFO_DEPTH", "MAX_GAP", "PROBES"]

#: Bytes moved per Python access in each direction.
WINDOW = 128
#: Depth of each byte FIFO (bytes).
FIFO_DEPTH = 2048
#: Longest gap (cycles) the stall generator puts between two host -> device bytes: the link's
#: watchdog (at least 640 idle cycles inside a frame) must never fire on a testbench stall.
MAX_GAP = 48
#: Probe outputs (name, width) read by the testbench; see the module docstring.
PROBES = (("images_started", 32), ("window", 48), ("starved", 48), ("logit_waits", 48),
          ("clean_min", 32), ("clean_max", 32), ("clean_count", 32), ("rx_stalls", 48),
          ("tx_stalls", 48))


class BridgeHarness(wiring.Component):
    """Board top + host-side byte windows (and a host-side UART pair with ``uart=True``).

    Parameters
    ----------
    top : shiftacc.hw.board.LinkTop
    uart : bool
        ``top`` was built with its UART (``uart_rx``/``uart_tx`` lines) or without
        (``rx``/``tx`` byte streams).
    clock_hz, baud : int
        For the host-side UART (``uart=True`` only).

    Attributes
    ----------
    in_data : In(8 * WINDOW)
    in_count : In(range(WINDOW + 1))
    in_toggle : In(1)
    in_ready : Out(1)
    out_data : Out(8 * WINDOW)
    out_count : Out(range(WINDOW + 1))
    out_ack : In(1)
    rx_level, tx_level : Out(16)
        Bytes waiting in the host → device and device → host FIFOs.
    line_active : Out(1)
        The serial lines are not idle (a byte is on the wire; always 0 without a UART).
    stall_level : In(8)
        Stall probability x/256 on the link's byte streams (0: none).
    stall_seed : In(32)
        Seed of the stall generator, taken in the first cycle after reset.
    probe_clear : In(1)
        Clear the probes (the testbench pulses it when a client connects).
    images_started, window, starved, logit_waits, clean_min, clean_max, clean_count : Out
        The probes of the accelerator's ports (see the module docstring).
    """

    def __init__(self, top, *, uart, clock_hz=None, baud=None):
        self.top = top
        self.uart = uart
        self.clock_hz, self.baud = clock_hz, baud
        super().__init__({
            "in_data": In(8 * WINDOW),
            "in_count": In(range(WINDOW + 1)),
            "in_toggle": In(1),
            "in_ready": Out(1),
            "out_data": Out(8 * WINDOW),
            "out_count": Out(range(WINDOW + 1)),
            "out_ack": In(1),
            "rx_level": Out(16),
            "tx_level": Out(16),
            "line_active": Out(1),
            "stall_level": In(8),
            "stall_seed": In(32),
            "probe_clear": In(1),
            **{name: Out(width) for name, width in PROBES},
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.top = top = self.top
        m.submodules.rx_fifo = rx_fifo = SyncFIFOBuffered(width=8, depth=FIFO_DEPTH)
        m.submodules.tx_fifo = tx_fifo = SyncFIFOBuffered(width=8, depth=FIFO_DEPTH)
        m.d.comb += [self.rx_level.eq(rx_fifo.level), self.tx_level.eq(tx_fifo.level)]

        # -- loader: one window of bytes into the host -> device FIFO, a byte per cycle --
        shreg = Signal(8 * WINDOW)
        left = Signal(range(WINDOW + 1))
        toggle_seen = Signal()
        m.d.sync += toggle_seen.eq(self.in_toggle)
        with m.If(self.in_toggle != toggle_seen):
            m.d.sync += [shreg.eq(self.in_data), left.eq(self.in_count)]
        with m.Elif((left != 0) & rx_fifo.w_rdy):
            m.d.comb += [rx_fifo.w_en.eq(1), rx_fifo.w_data.eq(shreg[:8])]
            m.d.sync += [shreg.eq(shreg >> 8), left.eq(left - 1)]
        m.d.comb += self.in_ready.eq((left == 0) & (self.in_toggle == toggle_seen)
                                     & (rx_fifo.level <= FIFO_DEPTH - WINDOW))

        # -- gatherer: the device -> host FIFO into the output window --
        ack_seen = Signal()
        m.d.sync += ack_seen.eq(self.out_ack)
        with m.If(self.out_ack != ack_seen):
            m.d.sync += self.out_count.eq(0)  # Python took the window; no pop this cycle
        with m.Elif((self.out_count != WINDOW) & tx_fifo.r_rdy):
            m.d.comb += tx_fifo.r_en.eq(1)
            m.d.sync += [self.out_data.word_select(self.out_count, 8).eq(tx_fifo.r_data),
                         self.out_count.eq(self.out_count + 1)]

        rx_go, tx_go = self._stalls(m)
        self._probes(m)
        # Cycles a byte was there and the stall generator held it back (the probes).
        tx_waiting = Signal()
        with m.If(self.probe_clear):
            m.d.sync += [self.rx_stalls.eq(0), self.tx_stalls.eq(0)]
        with m.Else():
            m.d.sync += [self.rx_stalls.eq(self.rx_stalls + (rx_fifo.r_rdy & ~rx_go)),
                         self.tx_stalls.eq(self.tx_stalls + (tx_waiting & ~tx_go))]

        # -- the link: direct byte streams, or through a host-side UART pair --
        if self.uart:
            from ..hw.uart import UARTRx, UARTTx
            m.submodules.host_tx = host_tx = UARTTx(self.clock_hz, self.baud)
            m.submodules.host_rx = host_rx = UARTRx(self.clock_hz, self.baud)
            m.d.comb += [host_tx.i.valid.eq(rx_fifo.r_rdy & rx_go),
                         host_tx.i.payload.eq(rx_fifo.r_data),
                         rx_fifo.r_en.eq(host_tx.i.ready & rx_go)]
            m.d.comb += [top.uart_rx.eq(host_tx.tx), host_rx.rx.eq(top.uart_tx),
                         self.line_active.eq(~host_tx.tx | ~top.uart_tx | host_tx.i.valid)]
            # The host UART cannot be backpressured either; the FIFO is deep enough for
            # every reply in flight (the driver keeps at most `slots` frames unanswered).
            m.d.comb += [tx_fifo.w_en.eq(host_rx.o.valid), tx_fifo.w_data.eq(host_rx.o.payload)]
            m.d.comb += host_rx.o.ready.eq(tx_fifo.w_rdy)
        else:
            # rx is always ready (a line cannot be held back): a stall is a missing byte.
            m.d.comb += [top.rx.valid.eq(rx_fifo.r_rdy & rx_go),
                         top.rx.payload.eq(rx_fifo.r_data),
                         rx_fifo.r_en.eq(rx_fifo.r_rdy & rx_go)]
            m.d.comb += tx_waiting.eq(top.tx.valid)
            m.d.comb += [tx_fifo.w_en.eq(top.tx.valid & tx_go),
                         tx_fifo.w_data.eq(top.tx.payload),
                         top.tx.ready.eq(tx_fifo.w_rdy & tx_go)]
        return m

    def _stalls(self, m):
        """(rx_go, tx_go): a byte may move this cycle on each stream (see the module
        docstring). A xorshift32 draw per cycle; its bytes 0 and 1 against the level."""
        x = Signal(32)
        nxt = Signal(32)
        a = Signal(32)
        b = Signal(32)
        m.d.comb += [a.eq(x ^ (x << 13)[:32]), b.eq(a ^ (a >> 17)), nxt.eq(b ^ (b << 5)[:32])]
        # x == 0 only before the first step (xorshift never reaches 0 from another value).
        with m.If(x == 0):
            m.d.sync += x.eq(Mux(self.stall_seed == 0, 1, self.stall_seed))
        with m.Else():
            m.d.sync += x.eq(nxt)
        gap = Signal(range(MAX_GAP + 1))
        rx_go, tx_go = Signal(), Signal()
        self._go = (rx_go, tx_go)
        m.d.comb += [rx_go.eq((x[:8] >= self.stall_level) | (gap == MAX_GAP)),
                     tx_go.eq(x[8:16] >= self.stall_level)]
        m.d.sync += gap.eq(Mux(rx_go, 0, gap + 1))
        return rx_go, tx_go

    def _probes(self, m):
        """The accelerator-port counters (see the module docstring); they stay 0 for a top
        without an ``accelerator`` (a stand-in such as the tests' echo design)."""
        acc = getattr(self.top, "accelerator", None)
        if acc is None or not {"images", "logits"} <= set(acc.signature.members):
            return
        img, lg = acc.images, acc.logits
        beat = img.valid & img.ready
        first = Signal(init=1)       # the next accepted beat starts an image
        started = Signal()           # an image has started since the last clear
        run = Signal(48)             # cycles since the first image's first beat
        period = Signal(32)          # cycles since the latest first beat
        dirty = Signal()             # a starved cycle or a logit wait in this period
        starved, waits = Signal(48), Signal(48)
        is_first = beat & first
        starve = started & img.ready & ~img.valid
        wait = lg.valid & ~lg.ready
        with m.If(beat):
            m.d.sync += first.eq(img.payload.last)
        m.d.sync += [run.eq(run + (started | is_first)), period.eq(period + 1),
                     starved.eq(starved + starve), waits.eq(waits + wait)]
        with m.If(starve | wait):
            m.d.sync += dirty.eq(1)
        with m.If(is_first):
            m.d.sync += [started.eq(1), period.eq(1), dirty.eq(wait),
                         self.images_started.eq(self.images_started + 1),
                         self.window.eq(run), self.starved.eq(starved)]
            with m.If(started & ~dirty):
                m.d.sync += self.clean_count.eq(self.clean_count + 1)
                with m.If((self.clean_count == 0) | (period < self.clean_min)):
                    m.d.sync += self.clean_min.eq(period)
                with m.If(period > self.clean_max):
                    m.d.sync += self.clean_max.eq(period)
        m.d.comb += self.logit_waits.eq(waits)
        with m.If(self.probe_clear):
            m.d.sync += [started.eq(0), run.eq(0), starved.eq(0), waits.eq(0), dirty.eq(0),
                         self.images_started.eq(0), self.window.eq(0), self.starved.eq(0),
                         self.clean_min.eq(0), self.clean_max.eq(0), self.clean_count.eq(0)]


def bridge_signature_ok(top, uart):
    """True when ``top`` has the members :class:`BridgeHarness` expects for ``uart``."""
    members = top.signature.members
    return ({"uart_rx", "uart_tx"} <= set(members)) if uart else ({"rx", "tx"} <= set(members))

