# amaranth: UnusedElaboratable=no
"""The memories each block states (its ``cost``) are exactly the ones its RTL instantiates.

The elaborated design is walked for every memory instance (depth × width as built, FIFO
storage included) and compared with the stated list, for every block kind and for whole
accelerators from random models.
"""

import os
from collections import Counter

import numpy as np
import pytest
from amaranth.hdl import Fragment, Shape
from amaranth.hdl._mem import MemoryInstance

from shiftacc.hw.channel_map import ChannelMap
from shiftacc.hw.gap import GlobalAvgPool
from shiftacc.hw.mac_array import MacArray
from shiftacc.hw.maxpool import MaxPool2
from shiftacc.hw.shift_unit import ShiftUnit
from shiftacc.hw.subsample import Subsample2
from shiftacc.hw.top import Accelerator
from shiftacc.models.netgen import random_model
from shiftacc.sim.streamtb import built_memories, make_rng


def stated(memories):
    return Counter((m.depth, m.width) for m in memories)


@pytest.mark.parametrize("case", range(6))
def test_block_memories_as_built(case):
    rng, _ = make_rng(f"test_block_memories_as_built[{case}]")
    cin, cout = rng.randint(1, 12), rng.randint(1, 12)
    blocks = [
        MacArray(cin=cin, cout=cout, p_in=rng.randint(1, cin), p_out=rng.randint(1, cout),
                 in_bits=8, weight_bits=rng.randint(2, 8), act_bits=rng.choice([4, 8]),
                 requant=rng.random() < 0.7),
        GlobalAvgPool(width=rng.randint(1, 5), height=rng.randint(1, 5), channels=cin,
                      lanes=rng.randint(1, cin), in_bits=8, act_bits=8),
        ShiftUnit(width=rng.randint(1, 6), height=rng.randint(1, 6), channels=cin,
                  lanes=rng.randint(1, cin), bits=8, radius=rng.randint(1, 3)),
        MaxPool2(width=rng.randint(2, 7), height=rng.randint(2, 7), channels=cin,
                 lanes=rng.randint(1, cin), bits=8),
    ]
    for dut in blocks:
        assert built_memories(dut) == stated(dut.resources().memories), type(dut).__name__
    for dut, cost in [(Subsample2(width=3, height=3, channels=cin, lanes=1, bits=8),
                       Subsample2.cost(width=3, height=3, channels=cin, lanes=1, bits=8)),
                      (ChannelMap(cin=cin, cout=cin, lanes_in=1, lanes_out=cin, bits=8),
                       ChannelMap.cost(cin=cin, cout=cin, lanes_in=1, lanes_out=cin, bits=8))]:
        assert built_memories(dut) == stated(cost.memories) == Counter()


@pytest.mark.parametrize("case", range(3))
def test_accelerator_memories_as_built(case, plan_within):
    rng, seed = make_rng(f"test_accelerator_memories_as_built[{case}]")
    model = random_model(np.random.default_rng(seed), size=(rng.randint(3, 8),
                                                             rng.randint(3, 8)))
    plan = plan_within(model, rng.randint(8, 100))
    assert built_memories(Accelerator(model, plan)) == stated(plan.memories())
    assert plan.memory_bits == sum(m.bits for m in plan.memories())


def test_undefined_collisions_marks_only_collision_free_sync_reads():
    """hw.synth.undefined_collisions sets COLLISION_X_MASK on the synchronous read ports of
    the memories marked COLLISION_FREE, and on nothing else (an unmarked memory, an
    asynchronous read port, a ROM without write port)."""
    import re
    from amaranth.back import rtlil
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.memory import Memory
    from amaranth.lib.wiring import In, Out
    from shiftacc.hw.synth import COLLISION_FREE, undefined_collisions

    class Top(wiring.Component):
        a: In(4)
        o: Out(32)

        def elaborate(self, platform):
            m = Module()
            outs = []
            for name, attrs, domain, writable in (("free", COLLISION_FREE, "sync", True),
                                                  ("kept", None, "sync", True),
                                                  ("free_comb", COLLISION_FREE, "comb", True),
                                                  ("free_rom", COLLISION_FREE, "sync", False)):
                mem = Memory(shape=8, depth=16, init=list(range(16)), attrs=attrs)
                m.submodules[name] = mem
                if writable:
                    w = mem.write_port()
                    m.d.comb += [w.addr.eq(self.a), w.data.eq(self.a), w.en.eq(1)]
                r = mem.read_port(domain=domain)
                m.d.comb += r.addr.eq(~self.a)
                outs.append(r.data)
            m.d.comb += self.o.eq(Cat(*outs))
            return m

    from amaranth.hdl import Cat
    text = rtlil.convert(Top(), name="top")
    out, marked = undefined_collisions(text)
    assert marked == 1
    masks = dict(re.findall(r'MEMID "\\\\(\w+)".*?COLLISION_X_MASK (\S+)', out, flags=re.S))
    assert masks == {"free": "1'1", "kept": "1'0", "free_comb": "1'0", "free_rom": "0'0"}
    assert undefined_collisions(out)[0] == out          # idempotent


def test_serve_simulates_collisions_as_an_ice40_build_places_them(monkeypatch):
    """``serve``/``sim --board <iCE40 board>`` elaborate with colliding reads poisoned
    (hw.synth.poisoned_collisions): the served Verilog has the poison registers only then,
    and the environment is as it was afterwards (unset, or a value it had)."""
    from shiftacc.hw.overlay_program import OverlayConfig, compile_overlay
    from shiftacc.hw.synth import POISON_ENV, poisoned_collisions
    from shiftacc.sim.serve import serve_verilog
    model = random_model(np.random.default_rng(5), size=(6, 6), blocks=1, max_width=5)
    plan = compile_overlay(model, OverlayConfig(lanes=4, requant_units=1, fm_words=512,
                                                weight_rows=64, channel_rows=64,
                                                gather_rows=64, max_passes=8))
    monkeypatch.delenv(POISON_ENV, raising=False)
    plain, _ = serve_verilog(model, plan, uart=False)
    placed, _ = serve_verilog(model, plan, uart=False, undefined_collisions=True)
    assert POISON_ENV not in os.environ
    # One poison register per collision-free read port (overlay tables, link slot RAM...).
    assert "collided" not in plain
    import re
    poison = set(re.findall(r"reg \\?(collided\S*)", placed))
    assert len(poison) >= 5, poison
    monkeypatch.setenv(POISON_ENV, "0")
    with poisoned_collisions():
        assert os.environ[POISON_ENV] == "1"
    assert os.environ[POISON_ENV] == "0"
    with poisoned_collisions(False):
        assert os.environ[POISON_ENV] == "0"
