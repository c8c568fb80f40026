"""ECP5 DSP blocks instantiated with their own registers (shared by MacArray and Requant).

Yosys infers a ``MULT18X18D`` from ``a * b`` but packs no register into it, so every
inferred product is a path fabric -> DSP -> fabric: in a full ECP5-85F that is ~8 ns of
routing on each side of the block plus the multiplier itself, the critical path of the whole
design (47 MHz, issue #9). Instantiating the block with its A/B input registers and its output
register clocked makes each side a register-to-register hop that nextpnr times on its own.
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, ResetSignal, Signal, signed

__all__ = ["mult18x18d_registered", "fits_mult18x18d", "ecp5_ff_copy"]


def fits_mult18x18d(a_shape, b_shape):
    """True when ``a * b`` fits one ``MULT18X18D`` as :func:`mult18x18d_registered` drives it:
    ``a`` signed of at most 18 bits or unsigned of at most 17, ``b`` unsigned of at most 17
    (both go in as 18-bit signed values), so the product is exact in its 36 bits."""
    a_ok = a_shape.width <= (18 if a_shape.signed else 17)
    return a_ok and not b_shape.signed and b_shape.width <= 17


def mult18x18d_registered(a, b, product, *, input_registers=True):
    """An ECP5 ``MULT18X18D`` computing ``product = a * b`` (``a`` signed or unsigned, ``b``
    unsigned, widths as :func:`fits_mult18x18d` allows) two cycles after its inputs: the
    input registers A and B and the output register clocked by ``sync`` (``CLK0``, always enabled, never reset), the
    pipeline register bypassed. nextpnr times such a block as ``MULT18X18D_REGS_ALL``: its
    ports are register setup / clock-to-out, no path runs through it.

    Both operands go in as 18-bit signed values (``b`` zero-extended, so positive); the
    product's low bits are the exact result (``len(product) <= 36``).

    ``input_registers=False``: A and B go straight into the multiplier, only the output
    register is clocked, so ``product`` follows its inputs by *one* cycle (nextpnr times the
    block as ``MULT18X18D_REGS_OUTPUT``: input pin -> multiplier -> output register setup).
    For operands that come from fabric flip-flops anyway; both inputs are then unregistered
    together, since nextpnr times a block with only one input register as if it had none."""
    a18 = Signal(signed(18))
    b18 = Signal(signed(18))
    p36 = Signal(signed(36))
    ports = {}
    for n in range(18):
        ports[f"i_A{n}"] = a18[n]
        ports[f"i_B{n}"] = b18[n]
        ports[f"i_C{n}"] = Const(0, 1)
    for n in range(36):
        ports[f"o_P{n}"] = p36[n]
    in_clk = "CLK0" if input_registers else "NONE"
    inst = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK=in_clk, p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
        p_REG_INPUTB_CLK=in_clk, p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
        p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
        p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
        p_GSR="DISABLED", p_RESETMODE="SYNC", p_SOURCEB_MODE="B_SHIFT",
        p_MULT_BYPASS="DISABLED", p_CAS_MATCH_REG="FALSE",
        i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1),
        i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
        i_CLK0=ClockSignal("sync"), i_CE0=Const(1, 1), i_RST0=Const(0, 1),
        **ports)
    m = Module()
    m.submodules.dsp = inst
    m.d.comb += [a18.eq(a), b18.eq(b), product.eq(p36)]
    return m


def ecp5_ff_copy(d, q):
    """An ECP5 flip-flop (``FD1S3AX``, clocked by ``sync``) loading ``d`` into ``q``, reset
    to 0 with the ``sync`` domain: the same as ``m.d.sync += q.eq(d)`` for a 1-bit ``q`` of
    reset value 0, but an instantiated cell, which Yosys' ``opt_merge`` never merges with
    another copy of the same ``d`` (it merges identical inferred flip-flops, ``keep`` or
    not). For deliberate duplicates that split a high fan-out. The domain's reset goes in
    through ``d`` (one LUT input), not the flip-flop's LSR: powered up at 0 (GSR disabled:
    the cell's init value)."""
    m = Module()
    d_rst = Signal(name="d")
    m.d.comb += d_rst.eq(Mux(ResetSignal("sync", allow_reset_less=True), 0, d))
    m.submodules.ff = Instance("FD1S3AX", p_GSR="DISABLED",
                               i_CK=ClockSignal("sync"), i_D=d_rst, o_Q=q)
    return m
