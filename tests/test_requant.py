"""Requant pipeline == ``models.golden.requant``: random and edge-case operands, bit-exact."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from shiftacc.hw.requant import Requant
from shiftacc.models.golden import requant as golden_requant
from shiftacc.sim.lint import lint_component
from shiftacc.sim.streamtb import assert_value_error, make_rng, run_sim

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _edge_cases(rng, n):
    """Operand triples hitting the int32 bounds, m = 1 / 65535, sh = 1 / 47, and the clamp."""
    accs = [INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX]
    ms = [1, 2, 65534, 65535]
    shs = [1, 2, 16, 31, 32, 46, 47]
    cases = [(a, mm, s) for a in accs for mm in ms for s in shs]
    # Values that land right on the rounding boundary and the clamp edges.
    for _ in range(n):
        s = rng.randint(1, 47)
        mm = rng.randint(1, 65535)
        target = rng.choice([-1, 0, 1, 254, 255, 256, 15, 16, 1 << 20])
        a = ((target << s) - (1 << (s - 1))) // mm + rng.randint(-2, 2)
        cases.append((max(INT32_MIN, min(INT32_MAX, a)), mm, s))
    return cases


def _random_cases(rng, n):
    out = []
    for _ in range(n):
        a = rng.choice([rng.randint(INT32_MIN, INT32_MAX), rng.randint(-(1 << 16), 1 << 16),
                        rng.randint(-300, 300)])
        out.append((a, rng.randint(1, 65535), rng.randint(1, 47)))
    return out


def _run_requant(dut, cases, rng):
    """Feed ``cases`` (lists of per-lane triples) with random gaps; collect results."""
    lanes = dut.lanes
    got = []

    async def producer(ctx):
        for idx, vec in enumerate(cases):
            while rng.random() < 0.3:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload, {"acc": [c[0] for c in vec], "m": [c[1] for c in vec],
                                    "sh": [c[2] for c in vec], "tag": idx & 1})
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        cycles = 0
        while len(got) < len(cases):
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            cycles += 1
            assert cycles < 10 * len(cases) + 100, "requant produced too few results"
            if valid:
                got.append(([int(payload.q[k]) for k in range(lanes)], int(payload.tag)))

    run_sim(dut, producer, consumer, deadline_cycles=20 * len(cases) + 200)
    return got


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("lanes,act_bits", [(1, 8), (3, 8), (4, 4)])
def test_requant_matches_golden(lanes, act_bits, pipelined):
    rng, _ = make_rng(f"test_requant_matches_golden[{lanes},{act_bits},{pipelined}]")
    triples = _edge_cases(rng, 200) + _random_cases(rng, 600)
    rng.shuffle(triples)
    triples += [triples[0]] * (-len(triples) % lanes)
    cases = [triples[k:k + lanes] for k in range(0, len(triples), lanes)]
    dut = Requant(lanes=lanes, act_bits=act_bits, pipelined=pipelined)
    got = _run_requant(dut, cases, rng)
    assert len(got) == len(cases)
    for idx, (vec, (q, tag)) in enumerate(zip(cases, got)):
        a, mm, s = (np.array(col) for col in zip(*vec))
        want = golden_requant(a, mm, s, act_bits).tolist()
        assert q == want, f"vector {idx}: operands {vec}: got {q}, want {want}"
        assert tag == idx & 1, f"vector {idx}: tag out of order"


@pytest.mark.parametrize("acc_bits,pipelined", [(14, False), (14, True), (16, True),
                                               (17, True), (21, True)])
def test_requant_narrow_acc(acc_bits, pipelined):
    """A narrow accumulator (GlobalAvgPool's sums) uses the same exact arithmetic; the
    pipelined variant splits the product above 16 bits (17 and 21: a 1- and 5-bit high part)."""
    rng, _ = make_rng(f"test_requant_narrow_acc[{acc_bits},{pipelined}]")
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    cases = [[(rng.choice([rng.randint(lo, hi), lo, hi, -1, 0]), rng.randint(1, 65535),
               rng.randint(1, 47)) for _ in range(2)] for _ in range(300)]
    dut = Requant(lanes=2, act_bits=8, acc_bits=acc_bits, pipelined=pipelined)
    got = _run_requant(dut, cases, rng)
    for vec, (q, _) in zip(cases, got):
        a, mm, s = (np.array(col) for col in zip(*vec))
        assert q == golden_requant(a, mm, s, 8).tolist(), vec


def first_result(dut):
    """Feed one item (acc 1000, m 3, sh 2) and return ``(cycle, q)`` of the first valid
    output, cycles counted from the tick that takes the item (None if none in 11 cycles)."""
    first = []

    async def tb(ctx):
        ctx.set(dut.i.payload, {"acc": [1000], "m": [3], "sh": [2], "tag": 1})
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for cycle in range(1, 12):
            if ctx.get(dut.o.valid) and not first:
                first.append((cycle, ctx.get(dut.o.payload.q[0])))
            await ctx.tick()

    run_sim(dut, tb, deadline_cycles=100)
    return first[0] if first else None


@pytest.mark.parametrize("pipelined,latency", [(False, 3), (True, 8)])
def test_requant_latency(pipelined, latency):
    """The result appears exactly 3 (compact) or 8 (pipelined) cycles after its operands."""
    dut = Requant(lanes=1, act_bits=8, pipelined=pipelined)
    assert dut.latency == latency
    assert first_result(dut) == (latency, min(255, (1000 * 3 + 2) >> 2))



@pytest.mark.parametrize("kwargs", [dict(lanes=0, act_bits=8), dict(lanes=2, act_bits=0),
                                    dict(lanes=2, act_bits=8, acc_bits=1)])
def test_requant_bad_parameters(kwargs):
    assert_value_error(Requant, **kwargs)


class _RequantTop(wiring.Component):
    """Lint wrapper: an ``always_ready`` stream has a constant ``ready``, which Verilog
    conversion cannot expose as a top-level port, so the top re-exports plain signals."""

    def __init__(self, **kwargs):
        self.core = Requant(**kwargs)
        super().__init__({
            "i_valid": In(1), "i_payload": In(self.core.i.payload.shape()),
            "o_valid": Out(1), "o_payload": Out(self.core.o.payload.shape()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = self.core
        m.d.comb += [self.core.i.valid.eq(self.i_valid), self.core.i.payload.eq(self.i_payload),
                     self.o_valid.eq(self.core.o.valid), self.o_payload.eq(self.core.o.payload)]
        return m


@pytest.mark.parametrize("pipelined", [False, True])
def test_requant_lint(tmp_path, pipelined):
    ok, msg = lint_component(_RequantTop(lanes=2, act_bits=8, pipelined=pipelined),
                             "requant", tmp_path)
    assert ok, msg


# ---- ECP5: the partial products in instantiated MULT18X18D blocks with their registers ----

class _ECP5:
    """What ``elaborate`` sees of an ECP5 board platform."""
    family = "ecp5"


class _RequantOnECP5(Requant):
    """A Requant elaborated as on an ECP5 board (same ports, ECP5 netlist)."""

    def elaborate(self, platform):
        return super().elaborate(_ECP5())


@pytest.mark.parametrize("acc_bits,per_lane", [(32, 2), (21, 2), (17, 1), (16, 1), (14, 1)])
def test_requant_ecp5_registered_dsp(acc_bits, per_lane):
    """On an ECP5 the pipelined Requant's partial products are MULT18X18D blocks with their
    A/B input registers and output register clocked by CLK0 (pipeline register bypassed),
    always enabled, never reset, both operands signed 18-bit: nextpnr then times no path
    through a DSP block. A partial product Yosys would leave to LUTs (the 1-bit high part of a
    17-bit accumulator) stays there. The compact Requant and the generic RTL instantiate
    none."""
    from ecp5_dsp import registered_mult18x18d
    from shiftacc.hw.stream import to_verilog
    kw = dict(lanes=3, act_bits=8, acc_bits=acc_bits)
    text = to_verilog(Requant(pipelined=True, **kw), platform=_ECP5())
    assert registered_mult18x18d(text) == 3 * per_lane
    assert "MULT18X18D" not in to_verilog(Requant(pipelined=True, **kw))
    assert "MULT18X18D" not in to_verilog(Requant(pipelined=False, **kw), platform=_ECP5())


def _mult18x18d_model(calls):
    """A behavioural stand-in for :func:`hw.dsp.mult18x18d_registered` in Amaranth, written
    from Lattice's sysDSP description (TN1267) for the registered configuration: both
    operands extended to 18-bit signed values into the A/B input registers, their 36-bit
    signed product into the output register. (The instantiated block's port wiring is
    proven equal to this by the Yosys SAT check test_mac_array_ecp5_dsp_product_is_exact.)"""
    from amaranth.hdl import Signal, signed

    def model(a, b, product, *, input_registers=True):
        assert len(product) <= 36
        calls.append((a.shape(), b.shape(), product.shape()))
        mm = Module()
        ar, br = Signal(signed(18)), Signal(signed(18))
        pr = Signal(signed(36))
        # without input registers A and B reach the multiplier directly (one cycle)
        dom = mm.d.sync if input_registers else mm.d.comb
        dom += [ar.eq(a), br.eq(b)]
        mm.d.sync += pr.eq(ar * br)
        mm.d.comb += product.eq(pr)
        return mm
    return model


@pytest.mark.parametrize("lanes,acc_bits", [(2, 32), (1, 17), (1, 18), (2, 14)])
def test_requant_ecp5_matches_golden(monkeypatch, lanes, acc_bits):
    """The ECP5 netlist of the pipelined Requant (each partial product through a registered
    MULT18X18D, here its behavioural model) is bit-exact against the golden requant under
    random input gaps, with the same latency: operand slicing and sign/zero extension into
    the 18-bit ports, the product widths, the delay of ``sh`` and valid/tag."""
    import shiftacc.hw.requant as rq_mod
    calls = []
    monkeypatch.setattr(rq_mod, "mult18x18d_registered", _mult18x18d_model(calls))
    rng, _ = make_rng(f"test_requant_ecp5_matches_golden[{lanes},{acc_bits}]")
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    triples = [(rng.choice([rng.randint(lo, hi), lo, hi, lo + 1, hi - 1, -1, 0, 1]),
                rng.choice([rng.randint(1, 65535), 1, 65535]), rng.randint(1, 47))
               for _ in range(400 * lanes)]
    cases = [triples[k:k + lanes] for k in range(0, len(triples), lanes)]
    dut = _RequantOnECP5(lanes=lanes, act_bits=8, acc_bits=acc_bits, pipelined=True)
    got = _run_requant(dut, cases, rng)
    assert len(calls) == lanes * (2 if acc_bits > 17 else 1), calls
    assert len(got) == len(cases)
    for idx, (vec, (q, tag)) in enumerate(zip(cases, got)):
        a, mm, s = (np.array(col) for col in zip(*vec))
        want = golden_requant(a, mm, s, 8).tolist()
        assert q == want, f"vector {idx}: operands {vec}: got {q}, want {want}"
        assert tag == idx & 1, f"vector {idx}: tag out of order"


def test_requant_ecp5_latency(monkeypatch):
    """The ECP5 netlist has the generic RTL's latency (8), which the consumers' credit and
    cycle models are built from."""
    import shiftacc.hw.requant as rq_mod
    monkeypatch.setattr(rq_mod, "mult18x18d_registered", _mult18x18d_model([]))
    dut = _RequantOnECP5(lanes=1, act_bits=8, pipelined=True)
    assert first_result(dut) == (Requant.LATENCY_PIPELINED, min(255, (1000 * 3 + 2) >> 2))
