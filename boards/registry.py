"""The boards ``shiftacc build`` knows: one :class:`Board` entry per board, in one table.

A board is an amaranth-boards platform class plus what the board top needs that the class
does not say: the target clock, the UART resource and a baud rate its USB bridge supports,
and, where the board has no USB-UART, the extra resource that places one on its header pins.
Everything else (device, family, oscillator) is read from the platform class itself.

Adding a board is one :class:`Board` entry in :data:`BOARDS` (or, without editing anything,
``shiftacc build --platform module:Class``: :func:`board_from_platform` derives an entry from
any amaranth-boards platform class that has a ``uart`` resource).

Only Lattice iCE40 and ECP5 boards get a bitstream here (Yosys + nextpnr + icepack/ecppack,
all from PyPI as ``yowasp-*``); every other family gets the files its vendor tool needs
(``--no-bitstream``: Verilog, constraints, the build script Amaranth would run).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

__all__ = ["Board", "BOARDS", "Programmer", "PROGRAMMERS", "BITSTREAM_FAMILIES", "DSP_BLOCKS", "find_board",
           "board_from_platform", "board_names", "family_of", "UnknownBoard"]

#: Families whose bitstream the open tools installed from PyPI can build.
BITSTREAM_FAMILIES = ("ice40", "ecp5")

#: Hard multiplier blocks per device (SB_MAC16 on iCE40, MULT18X18D on ECP5; datasheets).
#: Devices not listed have none the planner counts (HX/LP iCE40s map multipliers to LUTs).
DSP_BLOCKS = {
    "iCE40UP5K": 8, "iCE40UP3K": 4,
    "LFE5U-12F": 28, "LFE5U-25F": 28, "LFE5U-45F": 72, "LFE5U-85F": 156,
    "LFE5UM-25F": 28, "LFE5UM-45F": 72, "LFE5UM-85F": 156,
    "LFE5UM5G-25F": 28, "LFE5UM5G-45F": 72, "LFE5UM5G-85F": 156,
}

#: The USB-UART bridges' rates used below (all support far more than the PHY's minimum).
FT2232H_BAUD = 3_000_000   # FT2232H: up to 12 Mbaud; 3 Mbaud is what every host driver does
FT231X_BAUD = 3_000_000    # FT231X: 3 Mbaud maximum
ADAPTER_BAUD = 1_000_000   # an external 3.3 V USB-UART adapter (FT232R/CP2102N/CH340: >= 1 Mbaud)


@dataclass(frozen=True)
class Programmer:
    """How a board's bitstream gets onto it (``shiftacc program``).

    Attributes
    ----------
    tool : str
        Program run (``$env`` overrides it, as amaranth-boards' own ``toolchain_program``).
    env : str
        Environment variable naming another executable for ``tool``.
    sram, flash : tuple of str or None
        Arguments that load the bitstream into configuration RAM (lost at power-off) or
        write it to the board's SPI flash (kept); ``{bin}``/``{bit}`` stand for the file.
        None: the board cannot be programmed that way with this tool.
    default : str
        ``"sram"`` or ``"flash"``: what ``shiftacc program`` does without ``--memory``.
    install : str
        How to get ``tool`` (the exit-3 message).
    """

    tool: str
    env: str
    sram: tuple | None
    flash: tuple | None
    default: str
    install: str


#: The programmers the boards use. The iCEBreaker's FT2232H interface A is wired to its SPI
#: flash, so iceprog writes the flash (``-S``: the FPGA's configuration RAM instead); the
#: ULX3S (FT231X bit-banged JTAG) and ECPIX-5 (FT2232 JTAG) load over JTAG with openFPGALoader;
#: the OrangeCrab's bootloader takes the bitstream over USB DFU into its flash; the
#: Colorlight has no on-board programmer (an external JTAG cable, openFPGALoader's default
#: is a CMSIS-DAP probe).
PROGRAMMERS = {
    "iceprog": Programmer("iceprog", "ICEPROG", ("-S", "{bin}"), ("{bin}",), "flash",
                          "apt-get install fpga-icestorm"),
    "ulx3s": Programmer("openFPGALoader", "OPENFPGALOADER", ("-b", "ulx3s", "-m", "{bit}"),
                        ("-b", "ulx3s", "-f", "{bit}"), "sram",
                        "apt-get install openfpgaloader"),
    "ecpix5": Programmer("openFPGALoader", "OPENFPGALOADER", ("-c", "ft2232", "-m", "{bit}"),
                         ("-c", "ft2232", "-f", "{bit}"), "sram",
                         "apt-get install openfpgaloader"),
    "colorlight": Programmer("openFPGALoader", "OPENFPGALOADER",
                             ("-c", "cmsisdap", "-m", "{bit}"),
                             ("-c", "cmsisdap", "-f", "{bit}"), "sram",
                             "apt-get install openfpgaloader"),
    "dfu": Programmer("dfu-util", "DFU_UTIL", None, ("-a", "0", "-D", "{bit}"), "flash",
                      "apt-get install dfu-util"),
}


class UnknownBoard(ValueError):
    """A board name that is not in the table (the message lists the known ones)."""


def family_of(platform_cls):
    """``ice40``, ``ecp5``, ``machxo``, ``nexus``, ``xilinx``, ``intel``, ``gowin``,
    ``quicklogic`` (or the vendor base class name, lower case) of a platform class."""
    names = [c.__name__ for c in platform_cls.__mro__]
    device = str(getattr(platform_cls, "device", "") or "") \
        if not isinstance(getattr(platform_cls, "device", None), property) else ""
    if "SiliconBluePlatform" in names or "LatticeICE40Platform" in names:
        return "ice40"
    if "LatticePlatform" in names or "LatticeECP5Platform" in names or \
            "LatticeMachXO2Platform" in names:
        if device.startswith("LFE5"):
            return "ecp5"
        if device.startswith("LCMXO"):
            return "machxo"
        return "nexus"
    for base, fam in (("XilinxPlatform", "xilinx"), ("AlteraPlatform", "intel"),
                      ("IntelPlatform", "intel"), ("GowinPlatform", "gowin"),
                      ("QuicklogicPlatform", "quicklogic")):
        if base in names:
            return fam
    return names[1].lower() if len(names) > 1 else "unknown"


@dataclass(frozen=True)
class Board:
    """One supported board.

    Attributes
    ----------
    name : str
        What ``--board`` takes.
    platform : str
        ``module:Class`` of its amaranth-boards platform (module relative to
        ``amaranth_boards`` unless it contains a dot).
    target_mhz : float
        Default accelerator (``sync``) clock (``--freq`` overrides); a PLL makes it from the
        oscillator.
    baud : int
        UART line rate (the bridge must support it; the PHY needs >= 4 clocks per bit).
    uart : str
        Name of the platform's UART resource (``rx``/``tx`` subsignals).
    bridge : str
        What carries the UART to the host (shown by ``shiftacc boards``).
    extra_resources : str, optional
        ``module:function`` returning resources to add to the platform first (a UART on
        header pins of a board without a USB-UART).
    ice40_pll_pad : bool
        iCE40: the oscillator pin is the PLL's package pin (``SB_PLL40_PAD``); otherwise the
        buffered clock feeds ``SB_PLL40_CORE``.
    programmer : str, optional
        Key of :data:`PROGRAMMERS` (``shiftacc program``); None: program it with the
        vendor's tools.
    slots, max_payload : int
        The link engine's receive slots and largest frame payload (IDENTIFY reports both, the
        host adapts); small devices take fewer block RAMs for them. ``max_payload`` None:
        the engine's default; it is raised to one image when an image is larger.
    block_ram_fifos : bool
        The link engine's reply queue and in-flight FIFO in block RAM (3 iCE40 EBR for
        about 130 logic cells fewer): for a device short of logic cells, not of RAM blocks
        (the iCEBreaker's UP5K).
    link_clock_ratio : int
        1: the UART PHY and link engine share the accelerator's ``sync`` clock; 2 (iCE40
        only): they run in a ``link`` domain at half of it, from the same PLL's second
        output (``GENCLK_HALF``), with clock-domain crossings between
        (:class:`~shiftacc.hw.board.LinkTop` ``link_domain``). The link's clock is what
        the UART divides and IDENTIFY reports.
    single_clock_mhz : float, optional
        With ``link_clock_ratio`` 2: the default clock of the one-clock top
        (``--link-clock-ratio 1``, or the build's fallback for a design that fills the
        logic), where the link's paths share the accelerator's clock.
    note : str
    """

    name: str
    platform: str
    target_mhz: float
    baud: int
    uart: str = "uart"
    bridge: str = ""
    extra_resources: str | None = None
    ice40_pll_pad: bool = False
    slots: int = 4
    max_payload: int | None = None
    block_ram_fifos: bool = False
    programmer: str | None = None
    link_clock_ratio: int = 1
    single_clock_mhz: float | None = None
    note: str = ""
    _cls: object = field(default=None, compare=False, repr=False)

    def platform_class(self):
        """The platform class (imported now)."""
        if self._cls is not None:
            return self._cls
        mod, _, cls = self.platform.partition(":")
        if "." not in mod:
            mod = f"amaranth_boards.{mod}"
        try:
            return getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError) as e:
            raise UnknownBoard(f"board {self.name}: cannot load platform {self.platform}: "
                               f"{e}") from None

    def make_platform(self):
        """An instance of the platform with the extra resources added."""
        plat = self.platform_class()()
        if self.extra_resources:
            mod, _, fn = self.extra_resources.partition(":")
            plat.add_resources(getattr(importlib.import_module(mod), fn)())
        return plat

    @property
    def device(self):
        cls = self.platform_class()
        return str(getattr(cls, "device", None) or getattr(cls, "part", "?"))

    @property
    def family(self):
        return family_of(self.platform_class())

    @property
    def bitstream(self):
        """True when this machine's open tools can build its bitstream."""
        return self.family in BITSTREAM_FAMILIES

    @property
    def oscillator_hz(self):
        """Frequency of the platform's default clock (from its ``Clock`` constraint)."""
        cls = self.platform_class()
        name = cls.default_clk
        for res in cls.resources:
            if res.name == name and res.clock is not None:
                return float(res.clock.frequency)
        raise UnknownBoard(f"board {self.name}: its default clock {name!r} has no frequency")

    @property
    def dsp_blocks(self):
        """Hard multipliers of the device (None: not counted for this family)."""
        if self.family not in BITSTREAM_FAMILIES:
            return None
        return DSP_BLOCKS.get(self.device, 0)

    @property
    def link_mhz(self):
        """Default link clock: ``target_mhz / link_clock_ratio``."""
        return self.target_mhz / self.link_clock_ratio

    def link_kw(self, model):
        """The :class:`~shiftacc.hw.board.LinkTop` keywords of this board (``slots``,
        ``max_payload`` raised to one image when an image is larger, and
        ``block_ram_fifos`` when set)."""
        kw = {"slots": self.slots}
        if self.block_ram_fifos:
            kw["block_ram_fifos"] = True
        if self.max_payload is not None:
            h, w, c = model.input_shape
            kw["max_payload"] = max(self.max_payload, int(h) * int(w) * int(c), 16)
        return kw

    def has_uart(self):
        names = {r.name for r in self.platform_class().resources}
        return self.uart in names or self.extra_resources is not None


_FEATHER = "shiftacc.boards.resources:orangecrab_feather_uart"

#: The boards with a tested entry. Bitstream boards first, then files-only ones.
BOARDS = [
    Board("icebreaker", "icebreaker:ICEBreakerPlatform", 39, FT2232H_BAUD,
          bridge="FT2232H (interface B)", ice40_pll_pad=True, slots=2, max_payload=256,
          block_ram_fifos=True, programmer="iceprog", link_clock_ratio=2,
          single_clock_mhz=24,
          note="iCE40UP5K: 8 SB_MAC16, 30 EBR, 4 SPRAM"),
    Board("ulx3s-12f", "ulx3s:ULX3S_12F_Platform", 50, FT231X_BAUD, bridge="FT231X",
          programmer="ulx3s"),
    Board("ulx3s-25f", "ulx3s:ULX3S_25F_Platform", 50, FT231X_BAUD, bridge="FT231X",
          programmer="ulx3s"),
    Board("ulx3s-45f", "ulx3s:ULX3S_45F_Platform", 50, FT231X_BAUD, bridge="FT231X",
          programmer="ulx3s"),
    Board("ulx3s-85f", "ulx3s:ULX3S_85F_Platform", 50, FT231X_BAUD, bridge="FT231X",
          programmer="ulx3s"),
    Board("orangecrab-25f", "orangecrab_r0_2:OrangeCrabR0_2_25FPlatform", 48, ADAPTER_BAUD,
          bridge="external USB-UART on Feather pins 0 (RX) / 1 (TX)",
          extra_resources=_FEATHER, programmer="dfu",
          note="its USB is the FPGA's own (DFU): the link needs a 3.3 V UART adapter"),
    Board("orangecrab-85f", "orangecrab_r0_2:OrangeCrabR0_2_85FPlatform", 48, ADAPTER_BAUD,
          bridge="external USB-UART on Feather pins 0 (RX) / 1 (TX)",
          extra_resources=_FEATHER, programmer="dfu",
          note="its USB is the FPGA's own (DFU): the link needs a 3.3 V UART adapter"),
    Board("ecpix5-45", "ecpix5:ECPIX545Platform", 100, FT2232H_BAUD, bridge="FT2232H",
          programmer="ecpix5"),
    Board("ecpix5-85", "ecpix5:ECPIX585Platform", 100, FT2232H_BAUD, bridge="FT2232H",
          programmer="ecpix5"),
    Board("colorlight-5a75b", "colorlight_5a75b_r7_0:Colorlight_5A75B_R70Platform", 50,
          ADAPTER_BAUD, bridge="external USB-UART (the platform's uart: rx M13 / tx P11 on J19)",
          programmer="colorlight",
          note="no USB on the board: a 3.3 V UART adapter and a JTAG cable"),
    Board("arty-a7-35", "arty_a7:ArtyA7_35Platform", 100, FT2232H_BAUD, bridge="FT2232HQ"),
    Board("arty-a7-100", "arty_a7:ArtyA7_100Platform", 100, FT2232H_BAUD, bridge="FT2232HQ"),
    Board("nexys4ddr", "nexys4ddr:Nexys4DDRPlatform", 100, FT2232H_BAUD, bridge="FT2232HQ"),
    Board("de10-nano", "de10_nano:DE10NanoPlatform", 50, ADAPTER_BAUD,
          bridge="external USB-UART on the Arduino header (AG13 RX / AF13 TX)"),
    Board("de10-lite", "de10_lite:DE10LitePlatform", 50, ADAPTER_BAUD,
          bridge="external USB-UART on the Arduino header"),
    Board("tang-nano-9k", "tang_nano_9k:TangNano9kPlatform", 27, ADAPTER_BAUD,
          bridge="BL702 USB-UART (rates above 1 Mbaud unreliable)"),
]


def board_names():
    return [b.name for b in BOARDS]


def find_board(name):
    """The :class:`Board` called ``name`` (case-insensitive; ``_`` and ``-`` alike).

    Raises
    ------
    UnknownBoard
        Naming every known board.
    """
    key = name.lower().replace("_", "-")
    for b in BOARDS:
        if b.name == key:
            return b
    raise UnknownBoard(f"unknown board {name!r}; known boards: {', '.join(board_names())} "
                       f"(or pass --platform module:Class for any amaranth-boards platform)")


def board_from_platform(spec, *, target_mhz=None, baud=None, uart="uart"):
    """A :class:`Board` for an arbitrary platform class ``module:Class``.

    The oscillator is the class's default clock; the target clock defaults to it (no PLL);
    the UART is the resource ``uart`` at 1 Mbaud unless ``baud`` says otherwise.

    Raises
    ------
    UnknownBoard
        ``spec`` is not ``module:Class``, cannot be imported, or is not a platform class.
    """
    if ":" not in spec:
        raise UnknownBoard(f"--platform {spec!r}: expected module:Class, e.g. "
                           f"amaranth_boards.icestick:ICEStickPlatform")
    mod, _, cls_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(mod), cls_name)
    except (ImportError, AttributeError) as e:
        raise UnknownBoard(f"--platform {spec}: {e}") from None
    from amaranth.build import Platform
    if not (isinstance(cls, type) and issubclass(cls, Platform)):
        raise UnknownBoard(f"--platform {spec}: {cls_name} is not an Amaranth platform class")
    name = cls_name[:-len("Platform")] if cls_name.endswith("Platform") else cls_name
    probe = Board(name.lower(), spec, 0, 0, _cls=cls)
    osc = probe.oscillator_hz
    return Board(name.lower(), spec, target_mhz or osc / 1e6, baud or ADAPTER_BAUD,
                 uart=uart, bridge="(from --platform)", _cls=cls)
