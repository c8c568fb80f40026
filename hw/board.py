"""The board top: link engine + accelerator (+ UART PHY), what a board and the simulator run.

:class:`LinkTop` is the whole device of DESIGN.md §4, by default in one clock domain
(``sync``, reset by the domain's reset), or with ``link_domain`` in two: the UART PHY and the
link engine in their own (slower) domain, the accelerator in ``sync``, the three streams
between them through the crossings of :mod:`shiftacc.hw.cdc` (what the iCE40 boards build:
the link only serves a 3 Mbaud line, the accelerator's clock sets images/s). Host bytes in, through the :class:`~shiftacc.hw.link.LinkEngine`, to the
:class:`~shiftacc.hw.top.Accelerator`, replies back. With ``uart=True`` the bytes come from
and go to the 8N1 PHY of :mod:`shiftacc.hw.uart` (two pins); with ``uart=False`` they are byte
streams, which is what the simulator server bridges to a TCP socket. The boards issue adds
what a real board needs around it (PLL, reset synchroniser, pin constraints); nothing here is
board specific.
"""

from amaranth.hdl import DomainRenamer, Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .cdc import IMAGE_FIFO_DEPTH, AsyncStreamFIFO, ParamCrossing, StreamHandshake
from .link import LinkEngine
from .resources import Cost
from .stream import to_verilog

__all__ = ["LinkTop", "STATUS_LED", "link_top_verilog"]

#: The LED outputs: parameters loaded, work in progress, the last answered frame dropped.
STATUS_LED = data.StructLayout({"params_ready": 1, "busy": 1, "error": 1})


class LinkTop(wiring.Component):
    """Link engine + accelerator (+ UART PHY): the device the host driver talks to.

    Parameters
    ----------
    model : models.artifact.Model
    plan : hw.plan.Plan
    clock_hz : int
        Frequency of the link's clock (``sync``, or ``link_domain`` when given): what the
        UART divides, what IDENTIFY reports and what the STATUS ``cycles`` counter counts.
    baud : int
        Line rate of the UART (reported by IDENTIFY; 0 allowed only with ``uart=False``).
    uart : bool
        Include the UART PHY (pins ``uart_rx``/``uart_tx``) instead of byte streams.
    slots : int
        Receive slots of the link engine.
    link_domain : str, optional
        Run the UART PHY and the link engine in this clock domain (the accelerator stays in
        ``sync``): parameters through :class:`~shiftacc.hw.cdc.ParamCrossing`, images through
        :class:`~shiftacc.hw.cdc.AsyncStreamFIFO` (``image_fifo_depth`` entries), logits
        through :class:`~shiftacc.hw.cdc.StreamHandshake`. The two clocks need no relation.
        None (default): one domain, ``sync``.
    image_fifo_depth : int
        Entries of the image crossing's FIFO (``link_domain`` only).
    accelerator : wiring.Component, optional
        A component with the Accelerator's ``params``/``images``/``logits`` members (tests
        plug a small stub); default ``hw.top.Accelerator(model, plan)``, or
        ``hw.overlay.OverlayEngine(plan.config)`` for an overlay plan (``plan.engine ==
        "overlay"``, from ``hw.overlay_program.compile_overlay``).
    **engine_kw
        ``max_payload``, ``watchdog_cycles``, ``block_ram_fifos``, ``serial_crc`` (default:
        ``uart``) for :class:`~shiftacc.hw.link.LinkEngine`.

    Attributes
    ----------
    uart_rx : In(1)
        Serial input (``uart=True``; idle high).
    uart_tx : Out(1)
        Serial output (``uart=True``; idle high).
    rx : In(stream.Signature(8, always_ready=True))
        Host bytes (``uart=False``), at most one per cycle, never stalled.
    tx : Out(stream.Signature(8))
        Reply bytes (``uart=False``).
    status_led : Out(STATUS_LED)
    """

    def __init__(self, model, plan, *, clock_hz, baud, uart=True, slots=4, accelerator=None,
                 link_domain=None, image_fifo_depth=IMAGE_FIFO_DEPTH, **engine_kw):
        self.link_domain = link_domain
        self.image_fifo_depth = int(image_fifo_depth)
        if link_domain is not None:
            if link_domain == "sync":
                raise ValueError("LinkTop: link_domain must be another domain than 'sync'")
            engine_kw["param_handshake"] = True
        # A UART delivers a byte per 10 bit times (at least 40 cycles): the engine's CRCs
        # can then be bit-serial (a byte in 8 cycles), far smaller than byte-parallel ones.
        engine_kw.setdefault("serial_crc", bool(uart))
        self.engine = LinkEngine(model, plan, clock_hz=clock_hz, baud=baud, slots=slots,
                                 **engine_kw)
        if accelerator is None:
            if getattr(plan, "engine", "dataflow") == "overlay":
                # One program-driven engine for every model of this I/O (OVERLAY.md §6);
                # the layer program arrives with the parameters.
                from .overlay import OverlayEngine
                accelerator = OverlayEngine(plan.config)
            else:
                from .top import Accelerator
                accelerator = Accelerator(model, plan)
        self.accelerator = accelerator
        self.uart = bool(uart)
        self.phy_rx = self.phy_tx = None
        if self.uart:
            from .uart import UARTRx, UARTTx
            self.phy_rx = UARTRx(clock_hz, baud)
            self.phy_tx = UARTTx(clock_hz, baud)
            members = {"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1)}
        else:
            members = {"rx": In(stream.Signature(8, always_ready=True)),
                       "tx": Out(stream.Signature(8))}
        members["status_led"] = Out(STATUS_LED)
        super().__init__(members)

    def cost(self):
        """The link engine's memories (the accelerator's are in its plan's cost; the UART
        has none)."""
        return Cost(memories=list(self.engine.cost().memories))

    def elaborate(self, platform):
        m = Module()
        eng, acc = self.engine, self.accelerator
        ld = self.link_domain

        def in_link(block):
            return block if ld is None else DomainRenamer({"sync": ld})(block)

        m.submodules.link = in_link(eng)
        m.submodules.accel = acc
        if ld is None:
            wiring.connect(m, eng.params, acc.params)
            _connect_images(m, eng.images, acc.images)
            wiring.connect(m, acc.logits, eng.logits)
        else:
            m.submodules.params_cdc = px = ParamCrossing(i_domain=ld, o_domain="sync")
            wiring.connect(m, eng.params, px.i)
            wiring.connect(m, px.o, acc.params)
            m.d.comb += eng.params_busy.eq(px.busy)
            m.submodules.images_cdc = ix = AsyncStreamFIFO(
                eng.images.payload.shape(), self.image_fifo_depth, w_domain=ld,
                r_domain="sync")
            wiring.connect(m, eng.images, ix.i)
            _connect_images(m, ix.o, acc.images)
            m.submodules.logits_cdc = lx = StreamHandshake(
                acc.logits.payload.shape(), i_domain="sync", o_domain=ld)
            wiring.connect(m, acc.logits, lx.i)
            wiring.connect(m, lx.o, eng.logits)
        if self.uart:
            m.submodules.uart_rx = in_link(self.phy_rx)
            m.submodules.uart_tx = in_link(self.phy_tx)
            rxp, txp = self.phy_rx, self.phy_tx     # (their ports, renamed or not)
            # The engine takes every byte the PHY delivers (a line cannot be paused), so the
            # PHY's stream is always ready; its error pulses are counted in STATUS.
            m.d.comb += [rxp.rx.eq(self.uart_rx),
                         eng.rx.valid.eq(rxp.o.valid), eng.rx.payload.eq(rxp.o.payload),
                         rxp.o.ready.eq(1),
                         eng.line_error.eq(rxp.overrun | rxp.framing_error
                                           | rxp.break_detected),
                         self.uart_tx.eq(txp.tx)]
            wiring.connect(m, eng.tx, txp.i)
        else:
            m.d.comb += [eng.rx.valid.eq(self.rx.valid), eng.rx.payload.eq(self.rx.payload)]
            wiring.connect(m, eng.tx, wiring.flipped(self.tx))
        m.d.comb += [self.status_led.params_ready.eq(eng.params_ready),
                     self.status_led.busy.eq(eng.busy),
                     self.status_led.error.eq(eng.error)]
        return m


def _connect_images(m, src, dst):
    """Connect the link engine's image stream to the accelerator's.

    The dataflow accelerator's port is exactly the engine's (``input_lanes`` ×
    ``input_bits``); the overlay engine takes one 8-bit value per beat whatever the model's
    input bits (its feature-map banks are 8 bits wide), so narrower pixels are zero-extended
    lane by lane (unsigned pixels: zero extension keeps the value).
    """
    sw, dw = src.payload.data.shape().elem_shape, dst.payload.data.shape().elem_shape
    if sw == dw and len(src.payload.data) == len(dst.payload.data):
        wiring.connect(m, src, dst)
        return
    if len(src.payload.data) != len(dst.payload.data) or sw.width > dw.width:
        raise ValueError(f"LinkTop: the link's image stream ({len(src.payload.data)} x "
                         f"{sw.width} bits) does not fit the accelerator's "
                         f"({len(dst.payload.data)} x {dw.width} bits)")
    m.d.comb += [dst.valid.eq(src.valid), src.ready.eq(dst.ready),
                 dst.payload.last.eq(src.payload.last)]
    m.d.comb += [dst.payload.data[k].eq(src.payload.data[k])
                 for k in range(len(src.payload.data))]


def link_top_verilog(model, plan, *, clock_hz, baud, uart, name="shiftacc_link", **kw):
    """Verilog of a :class:`LinkTop` (constant ports of always-ready streams left out, see
    :func:`hw.stream.to_verilog`).

    Parameters
    ----------
    model, plan, clock_hz, baud, uart
        As for :class:`LinkTop`.
    name : str
        Verilog module name.
    **kw
        Further :class:`LinkTop` keywords (``slots``, ``max_payload``, ``watchdog_cycles``).

    Returns
    -------
    str
    """
    return to_verilog(LinkTop(model, plan, clock_hz=clock_hz, baud=baud, uart=uart, **kw),
                      name=name)
