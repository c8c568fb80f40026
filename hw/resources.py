"""Resources of the hardware blocks, counted the way the RTL builds them (DESIGN.md §3).

Every block module states its own cost with a pure function of its elaboration parameters
(``shift_unit_cost``, ``mac_array_cost``, ...); the block's constructor derives its geometry
from the same function, the planner adds the costs up, and the ``generate`` summary prints
them. There is no second copy of any count.

A :class:`Cost` lists

* every hardware **multiplier** (:class:`Multiplier`: operand widths and signedness as the
  emitted Verilog states them, so that the DSP mapping below can be exact),
* every **memory** (:class:`MemorySpec`: depth × width of each ``amaranth.lib.memory.Memory``
  the block instantiates, FIFO storage included),
* the steady-state **cycles** per image (the analytical cycle model).

DSP mapping. :func:`dsp_blocks` reproduces what Yosys' ``mul2dsp`` techmap does in
``synth_ecp5`` (MULT18X18D, 18×18) and ``synth_ice40 -dsp`` (SB_MAC16, 16×16): a product
wider than the DSP is split into DSP-sized partial products along the wider operand, a
partial product narrower than the DSP's minimum width (2 bits, and an 11-bit result on iCE40)
stays in LUTs. ``tests/test_hw_resources.py`` checks the prediction against Yosys' own cell
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Multiplier", "MemorySpec", "Cost", "dsp_blocks", "DSP_FAMILIES", "const_mul", "fifo_memories",
           "FAMILY_CELL"]


#: ``mul2dsp`` parameters of each family (Yosys 0.4x–0.70 ``synth_ecp5`` / ``synth_ice40 -dsp``):
#: (A max width, B max width, A min width, B min width, Y min width).
DSP_FAMILIES = {
    "ecp5": (18, 18, 2, 2, 0),
    "ice40": (16, 16, 2, 2, 11),
}

#: The DSP primitive Yosys instantiates for each family.
FAMILY_CELL = {"ecp5": "MULT18X18D", "ice40": "SB_MAC16"}


def dsp_blocks(family, a_bits, a_signed, b_bits, b_signed, y_bits=None):
    """DSP blocks Yosys maps one ``a_bits`` × ``b_bits`` multiplier to on ``family``.

    Mirrors ``techlibs/common/mul2dsp.v``: operands are ordered wider first; an operand wider
    than the DSP is cut into DSP-wide unsigned chunks (the top chunk keeps the sign) and each
    partial product is mapped again; a product with an operand under the minimum width, or a
    result under the minimum result width, is left to LUTs (0 DSP blocks).

    Parameters
    ----------
    family : str
        ``"ecp5"`` or ``"ice40"``.
    a_bits, b_bits : int
        Operand widths as emitted (an unsigned operand of a mixed product is emitted one bit
        wider and signed, e.g. Amaranth's ``signed(32) * unsigned(16)`` is 32s × 17s).
    a_signed, b_signed : bool
    y_bits : int, optional
        Result width (default ``a_bits + b_bits``).

    Returns
    -------
    int
    """
    amax, bmax, amin, bmin, ymin = DSP_FAMILIES[family]
    # Both families' DSPs are square (amax == bmax): with the wider operand first, only that
    # one can be too wide, so one split rule covers every product.
    assert amax == bmax, family
    if y_bits is None:
        y_bits = a_bits + b_bits
    if a_bits < b_bits:
        a_bits, a_signed, b_bits, b_signed = b_bits, b_signed, a_bits, a_signed
    if a_bits < amin or b_bits < bmin or y_bits < ymin:
        return 0
    if a_bits > amax:
        n = (a_bits - amax + amax - 1) // amax
        last = a_bits - n * amax
        part_y = min(y_bits, b_bits + amax)
        return (n * dsp_blocks(family, amax, False, b_bits, b_signed, part_y)
                + dsp_blocks(family, last, a_signed, b_bits, b_signed, b_bits + last))
    return 1


@dataclass(frozen=True)
class Multiplier:
    """``count`` identical hardware multipliers of one block.

    Attributes
    ----------
    name : str
        What they compute (e.g. ``mac`` or ``requant``).
    count : int
    a_bits, b_bits : int
        Operand widths as emitted in the Verilog.
    a_signed, b_signed : bool
    y_bits : int or None
        Width of the product Yosys keeps after ``wreduce`` (None: ``a_bits + b_bits``).
    """

    name: str
    count: int
    a_bits: int
    a_signed: bool
    b_bits: int
    b_signed: bool
    y_bits: int | None = None

    def dsp(self, family):
        """DSP blocks all ``count`` multipliers take on ``family`` (see :func:`dsp_blocks`)."""
        return self.count * dsp_blocks(family, self.a_bits, self.a_signed, self.b_bits,
                                       self.b_signed, self.y_bits)

    @classmethod
    def amaranth(cls, name, count, a_bits, a_signed, b_bits, b_signed):
        """The multiplier Amaranth emits for ``a * b``: a mixed-sign product is emitted with
        the unsigned operand zero-extended by one bit and both operands signed.

        The product of a signed ``a``-bit and an unsigned ``b``-bit value fits ``a + b``
        signed bits, and Yosys' ``wreduce`` trims the emitted ``a + b + 1``-bit result to
        that before DSP mapping: it decides, e.g., that a 2-bit weight times an 8-bit
        activation (a 10-bit product) stays under iCE40's 11-bit minimum and goes to LUTs.
        """
        y_bits = None
        if a_signed != b_signed:
            y_bits = a_bits + b_bits
            if not a_signed:
                a_bits += 1
            else:
                b_bits += 1
            a_signed = b_signed = True
        return cls(name, count, a_bits, a_signed, b_bits, b_signed, y_bits)


@dataclass(frozen=True)
class MemorySpec:
    """One on-chip memory as the RTL instantiates it.

    Attributes
    ----------
    name : str
    depth : int
        Rows.
    width : int
        Bits per row.
    """

    name: str
    depth: int
    width: int

    @property
    def bits(self):
        return self.depth * self.width


@dataclass
class Cost:
    """What one block costs: multipliers, memories, cycles per image.

    Attributes
    ----------
    cycles : int
        Steady-state cycles per image (images back to back, no stalls).
    multipliers : list of Multiplier
    memories : list of MemorySpec
    """

    cycles: int = 0
    multipliers: list = field(default_factory=list)
    memories: list = field(default_factory=list)

    @property
    def multiplier_count(self):
        """Hardware multipliers instantiated (every one counts, requant included)."""
        return sum(mul.count for mul in self.multipliers)

    def dsp(self, family):
        """DSP blocks on ``family`` (``"ecp5"``: MULT18X18D, ``"ice40"``: SB_MAC16)."""
        return sum(mul.dsp(family) for mul in self.multipliers)

    @property
    def memory_bits(self):
        return sum(mem.bits for mem in self.memories)

    def prefixed(self, prefix):
        """The same cost with every memory and multiplier name prefixed (``L2.conv.weights``)."""
        return Cost(self.cycles,
                    [Multiplier(f"{prefix}.{x.name}", x.count, x.a_bits, x.a_signed, x.b_bits,
                                x.b_signed, x.y_bits) for x in self.multipliers],
                    [MemorySpec(f"{prefix}.{x.name}", x.depth, x.width) for x in self.memories])


def fifo_memories(name, width, depth):
    """Memories of an ``amaranth.lib.fifo.SyncFIFOBuffered(width, depth)``: its storage is a
    ``depth - 1`` row memory (the last entry is the output register); depth 1 is a register."""
    return [MemorySpec(name, depth - 1, width)] if depth > 1 else []


def const_mul(value, k):
    """``value * k`` for a constant ``k >= 0`` as a sum of shifted copies of ``value``.

    Yosys maps a ``$mul`` by a constant that is not a power of two to a DSP block; address
    arithmetic (row × stride) must not spend one, so it is written as shifts and adds (a
    constant stride has few set bits; each costs one adder of the address width).
    """
    from amaranth.hdl import Const
    if k < 0:
        raise ValueError(f"const_mul: k must be >= 0, got {k}")
    terms = [value << i for i in range(k.bit_length()) if (k >> i) & 1]
    if not terms:
        return Const(0, 1)
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total
