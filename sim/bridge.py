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
"""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

__all__ = ["BridgeHarness", "WINDOW", "FIFO_DEPTH"]

#: Bytes moved per Python access in each direction.
WINDOW = 128
#: Depth of each byte FIFO (bytes).
FIFO_DEPTH = 2048


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

        # -- the link: direct byte streams, or through a host-side UART pair --
        if self.uart:
            from ..hw.uart import UARTRx, UARTTx
            m.submodules.host_tx = host_tx = UARTTx(self.clock_hz, self.baud)
            m.submodules.host_rx = host_rx = UARTRx(self.clock_hz, self.baud)
            wiring.connect(m, rx_fifo.r_stream, host_tx.i)
            m.d.comb += [top.uart_rx.eq(host_tx.tx), host_rx.rx.eq(top.uart_tx),
                         self.line_active.eq(~host_tx.tx | ~top.uart_tx | host_tx.i.valid)]
            # The host UART cannot be backpressured either; the FIFO is deep enough for
            # every reply in flight (the driver keeps at most `slots` frames unanswered).
            m.d.comb += [tx_fifo.w_en.eq(host_rx.o.valid), tx_fifo.w_data.eq(host_rx.o.payload)]
            m.d.comb += host_rx.o.ready.eq(tx_fifo.w_rdy)
        else:
            wiring.connect(m, rx_fifo.r_stream, top.rx)
            wiring.connect(m, top.tx, tx_fifo.w_stream)
        return m


def bridge_signature_ok(top, uart):
    """True when ``top`` has the members :class:`BridgeHarness` expects for ``uart``."""
    members = top.signature.members
    return ({"uart_rx", "uart_tx"} <= set(members)) if uart else ({"rx", "tx"} <= set(members))

