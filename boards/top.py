"""The board top: oscillator -> PLL -> reset synchroniser -> :class:`hw.board.LinkTop`.

:class:`BoardTop` is what ``shiftacc build`` hands to ``platform.build``. It requests the
board's oscillator, makes the target clock with a PLL whose dividers are computed by
:mod:`shiftacc.boards.pll` (iCE40 ``SB_PLL40_PAD``/``SB_PLL40_CORE``, ECP5 ``EHXPLLL``; no
PLL when the target equals the oscillator), holds the ``sync`` domain in reset until the PLL
has locked and a short power-on delay has passed (iCE40 block RAMs read as zero for a few
microseconds after configuration), and wires the platform's UART pins and LEDs to the
link top. The achieved clock, not the requested one, is what the link engine reports in
IDENTIFY and what the UART divides.

With ``link_clock_ratio`` 2 (the iCE40 boards' default, :class:`~shiftacc.boards.registry.Board`)
the PLL is the two-output ``SB_PLL40_2F_PAD``/``SB_PLL40_2F_CORE``: port A (``GENCLK``) is the
accelerator's ``sync`` clock, port B (``GENCLK_HALF``) half of it for a ``link`` domain that
runs the UART PHY and the link engine (:class:`~shiftacc.hw.board.LinkTop` ``link_domain``);
both domains are held in reset until the PLL has locked, each released by its own
synchroniser. The link's clock is then what IDENTIFY reports and what the UART divides.
"""

from __future__ import annotations

import math

from amaranth.build import ResourceError
from amaranth.hdl import ClockDomain, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from .pll import pll_for_family

__all__ = ["BoardTop", "UARTEcho", "POWER_ON_SECONDS"]

#: Power-on delay before reset is released (iCE40 BRAM needs ~3 us after configuration).
POWER_ON_SECONDS = 16e-6


class BoardTop(Elaboratable):
    """A :class:`~shiftacc.hw.board.LinkTop` on a board.

    Parameters
    ----------
    board : boards.registry.Board
    model : models.artifact.Model
    plan : hw.plan.Plan
    freq_hz : float, optional
        Target ``sync`` (accelerator) clock (default: the board's ``target_mhz``).
    baud : int, optional
        UART line rate (default: the board's).
    link_top : callable, optional
        ``link_top(clock_hz, baud) -> Elaboratable`` with ``uart_rx``, ``uart_tx`` and
        ``status_led`` (tests plug a small stand-in); default a :class:`LinkTop`. Called
        with the link's clock (``link_hz``); with ``link_clock_ratio`` 2 the stand-in must
        run its link in the ``link`` domain.
    link_clock_ratio : int, optional
        1 or 2 (default: the board's): the link in ``sync``, or in a ``link`` domain at
        half the ``sync`` clock (iCE40 with a PLL only).

    Attributes
    ----------
    pll : boards.pll.PLLConfig or None
    clock_hz : int
        The achieved ``sync`` (accelerator) frequency (rounded to a whole hertz).
    link_hz : int
        The achieved link clock (``clock_hz`` with ratio 1).
    link_clock_ratio : int
    """

    def __init__(self, board, model, plan, *, freq_hz=None, baud=None, link_top=None,
                 link_clock_ratio=None):
        try:
            self._setup(board, model, plan, freq_hz, baud, link_top, link_clock_ratio)
        except BaseException:
            self._MustUse__silence = True  # never built: no "unused elaboratable" warning
            raise

    def _setup(self, board, model, plan, freq_hz, baud, link_top, ratio):
        self.board = board
        self.osc_hz = board.oscillator_hz
        self.target_hz = float(freq_hz if freq_hz is not None else board.target_mhz * 1e6)
        ratio = int(board.link_clock_ratio if ratio is None else ratio)
        if ratio not in (1, 2):
            raise ValueError(f"link_clock_ratio {ratio}: 1 or 2")
        self.pll = pll_for_family(board.family, self.osc_hz, self.target_hz)
        if ratio == 2 and (board.family != "ice40" or self.pll is None):
            raise ValueError(f"a link clock at half the accelerator's needs an iCE40 PLL "
                             f"(its GENCLK_HALF output); {board.name} at "
                             f"{self.target_hz / 1e6:g} MHz has "
                             + ("none" if self.pll is None else f"a {board.family} PLL")
                             + ": use link_clock_ratio 1")
        self.link_clock_ratio = ratio
        f_hz = self.pll.f_out_hz if self.pll else self.osc_hz
        self.clock_hz, self.link_hz = int(round(f_hz)), int(round(f_hz / ratio))
        self.baud = int(baud or board.baud)
        if link_top is None:
            from ..hw.board import LinkTop

            kw = board.link_kw(model)
            if ratio != 1:
                kw["link_domain"] = "link"

            def link_top(clock_hz, baud):
                return LinkTop(model, plan, clock_hz=clock_hz, baud=baud, uart=True, **kw)
        self.link = link_top(self.link_hz, self.baud)

    def _clock(self, m, platform):
        """The ``sync`` clock signal, the ``link`` one (None with ratio 1) and the PLL's lock
        (Const(1) without a PLL)."""
        board, pll = self.board, self.pll
        clk_name = platform.default_clk
        if pll is None:
            m.submodules.clk_buf = buf = io.Buffer("i", platform.request(clk_name, dir="-"))
            return buf.i, None, Const(1)
        clk_out, lock = Signal(), Signal()
        clk_link = None
        p = pll.params
        if pll.family == "ice40":
            common = dict(p_FEEDBACK_PATH=p["FEEDBACK_PATH"], p_DIVR=p["DIVR"],
                          p_DIVF=p["DIVF"], p_DIVQ=p["DIVQ"],
                          p_FILTER_RANGE=p["FILTER_RANGE"],
                          i_RESETB=Const(1), i_BYPASS=Const(0), o_LOCK=lock)
            if self.link_clock_ratio == 2:
                # Two global outputs of one PLL: A the VCO / 2**DIVQ (GENCLK), B half of it
                # (GENCLK_HALF), in phase with A.
                clk_link = Signal()
                common.update(p_PLLOUT_SELECT_PORTA="GENCLK",
                              p_PLLOUT_SELECT_PORTB="GENCLK_HALF",
                              o_PLLOUTGLOBALA=clk_out, o_PLLOUTGLOBALB=clk_link)
                prim = "SB_PLL40_2F"
            else:
                common.update(o_PLLOUTGLOBAL=clk_out)
                prim = "SB_PLL40"
            if board.ice40_pll_pad:
                port = platform.request(clk_name, dir="-")
                m.submodules.pll = Instance(f"{prim}_PAD", i_PACKAGEPIN=port.io, **common)
            else:
                m.submodules.clk_buf = buf = io.Buffer("i", platform.request(clk_name,
                                                                             dir="-"))
                m.submodules.pll = Instance(f"{prim}_CORE", i_REFERENCECLK=buf.i, **common)
        elif pll.family == "ecp5":
            m.submodules.clk_buf = buf = io.Buffer("i", platform.request(clk_name, dir="-"))
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{pll.f_in_hz / 1e6:g}",
                a_FREQUENCY_PIN_CLKOP=f"{pll.f_out_hz / 1e6:.6g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_CLKOP_ENABLE="ENABLED", p_CLKI_DIV=p["CLKI_DIV"],
                p_CLKFB_DIV=p["CLKFB_DIV"], p_CLKOP_DIV=p["CLKOP_DIV"],
                p_CLKOP_CPHASE=p["CLKOP_CPHASE"], p_CLKOP_FPHASE=p["CLKOP_FPHASE"],
                p_FEEDBK_PATH=p["FEEDBK_PATH"],
                i_CLKI=buf.i, i_CLKFB=clk_out, i_RST=Const(0), i_STDBY=Const(0),
                i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1),
                i_PHASESTEP=Const(1), i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0),
                i_ENCLKOP=Const(0), o_CLKOP=clk_out, o_LOCK=lock)
        else:  # pragma: no cover (pll_for_family refuses other families)
            raise AssertionError(pll.family)
        return clk_out, clk_link, lock

    def _leds(self, m, platform):
        """status_led -> the board's LEDs: params_ready, busy, error on led 0, 1, 2 (as many
        as exist), or green/blue/red of an RGB LED."""
        st = self.link.status_led
        bits = [st.params_ready, st.busy, st.error]
        names = {name for name, _ in platform.resources}
        if "led" not in names and "rgb_led" in names:
            rgb = platform.request("rgb_led", 0, dir="-")
            for colour, bit in (("g", st.params_ready), ("b", st.busy), ("r", st.error)):
                m.submodules[f"led_{colour}"] = buf = io.Buffer("o", getattr(rgb, colour))
                m.d.comb += buf.o.eq(bit)
            return
        for i, bit in enumerate(bits):
            try:
                led = platform.request("led", i, dir="-")
            except ResourceError:
                break
            m.submodules[f"led_{i}"] = buf = io.Buffer("o", led)
            m.d.comb += buf.o.eq(bit)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd_sync = ClockDomain("sync")
        m.domains.por = cd_por = ClockDomain("por", reset_less=True)
        clk, clk_link, lock = self._clock(m, platform)
        m.d.comb += [cd_sync.clk.eq(clk), cd_por.clk.eq(clk)]
        if clk_link is not None:
            m.domains.link = cd_link = ClockDomain("link")
            m.d.comb += cd_link.clk.eq(clk_link)
        # No constraint on the PLL output here: nextpnr derives it from the oscillator's
        # constraint through the PLL (and `--freq` covers the rest); without a PLL the
        # oscillator's own constraint is the clock's.
        # Power-on delay (counted in a reset-less domain on the same clock), then the PLL's
        # lock: until both, `sync` is held in reset; release is synchronised to the clock.
        delay = max(2, math.ceil(POWER_ON_SECONDS * self.clock_hz))
        count = Signal(range(delay + 1))
        por_done = Signal()
        with m.If(count != delay):
            m.d.por += count.eq(count + 1)
        m.d.comb += por_done.eq(count == delay)
        arst = ~(lock & por_done)
        if self.board.family == "ecp5":
            # The reset fans out to every flip-flop of `sync` that has one: through general
            # routing that took ~10.5 ns on an 85F, a whole 100 MHz period. nextpnr-ecp5
            # promotes only clocks to the global network by itself, so the synchronised reset
            # goes through a DCCA global buffer (nextpnr routes a DCCA's output on a global
            # and from there into each tile's LSR). The synchroniser runs in its own domain on
            # the same clock, so its output is a wire to hand to the buffer.
            m.domains.reset_src = cd_rst = ClockDomain("reset_src")
            m.d.comb += cd_rst.clk.eq(clk)
            m.submodules.reset_sync = ResetSynchronizer(arst, domain="reset_src")
            m.submodules.reset_gbuf = Instance("DCCA", i_CLKI=cd_rst.rst, i_CE=Const(1, 1),
                                               o_CLKO=cd_sync.rst)
        else:
            # (nextpnr-ice40 promotes a high-fanout reset to a global buffer itself.)
            m.submodules.reset_sync = ResetSynchronizer(arst, domain="sync")
        if clk_link is not None:
            # The link domain: the same asynchronous reset (PLL lock and power-on delay),
            # released by a synchroniser on its own clock.
            m.submodules.reset_sync_link = ResetSynchronizer(arst, domain="link")

        m.submodules.link = link = self.link
        uart = platform.request(self.board.uart, 0, dir="-")
        m.submodules.uart_rx_buf = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx = io.Buffer("o", uart.tx)
        m.d.comb += [link.uart_rx.eq(rx.i), tx.o.eq(link.uart_tx)]
        self._leds(m, platform)
        return m

    def describe(self):
        """The clocking as a JSON-able dict (for the build report)."""
        return {"oscillator_hz": self.osc_hz, "target_hz": self.target_hz,
                "clock_hz": self.clock_hz, "link_hz": self.link_hz,
                "link_clock_ratio": self.link_clock_ratio, "baud": self.baud,
                "pll": self.pll.to_dict() if self.pll else None}


class UARTEcho(Elaboratable):
    """A board bring-up stand-in for the link top: every byte received is sent back.

    Same members as :class:`~shiftacc.hw.board.LinkTop` with ``uart=True`` (``uart_rx``,
    ``uart_tx``, ``status_led``), built from the same UART PHY, so that
    ``BoardTop(..., link_top=UARTEcho)`` checks a board's clock, PLL, reset and pins (and the
    whole build flow) with a design small enough for any device. LEDs: ``params_ready`` lit
    once out of reset, ``busy`` while a byte is being echoed, ``error`` on a line error.
    """

    def __init__(self, clock_hz, baud):
        from ..hw.board import STATUS_LED
        from ..hw.uart import UARTRx, UARTTx
        self.phy_rx = UARTRx(clock_hz, baud)
        self.phy_tx = UARTTx(clock_hz, baud)
        self.uart_rx = Signal(init=1)
        self.uart_tx = Signal(init=1)
        self.status_led = Signal(STATUS_LED)

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = self.phy_rx
        m.submodules.tx = tx = self.phy_tx
        err = Signal()
        with m.If(rx.framing_error | rx.overrun | rx.break_detected):
            m.d.sync += err.eq(1)
        m.d.comb += [rx.rx.eq(self.uart_rx), self.uart_tx.eq(tx.tx),
                     tx.i.valid.eq(rx.o.valid), tx.i.payload.eq(rx.o.payload),
                     rx.o.ready.eq(tx.i.ready),
                     self.status_led.params_ready.eq(1),
                     self.status_led.busy.eq(tx.i.valid | ~tx.tx),
                     self.status_led.error.eq(err)]
        return m
