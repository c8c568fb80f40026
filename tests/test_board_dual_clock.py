"""The dual-clock LinkTop (``link_domain="link"``, what the iCE40 boards build): the link engine
in ``link``, the accelerator in ``sync``, the streams through hw/cdc.py, in amaranth.sim
with two clocks (2:1 in phase as the boards' PLL makes them, and unrelated ratios).

* the stub accelerator of tests/test_link.py: a full load and INFER batches, logits equal
  to its reference (every parameter word arrived once, in order; no parameter beat while an
  image is inside);
* the overlay engine on a small random network: its own parameter words and images through
  the link's byte stream, logits bit-exact against the golden model;
* fault: the link without the parameter word's hold (``param_handshake`` off) loads wrong
  parameters, which these runs detect.
"""

import random
import time

import numpy as np
import pytest
from amaranth.sim import Simulator

from shiftacc.hw.board import LinkTop
from shiftacc.sw import protocol as P

from test_link import (Host, StubAccel, StubRef, full_load, load_and_infer,  # noqa: E402
                       logits_of, reason, random_words, tiny_model)

#: (sync period, link period) in ns
RATIOS = {"2to1": (10.0, 20.0), "1to2.37": (10.0, 23.7), "1to0.6": (10.0, 6.0)}


def _run(top, sync_ns, link_ns, *tbs, background=()):
    sim = Simulator(top)
    sim.add_clock(sync_ns * 1e-9, domain="sync")
    sim.add_clock(link_ns * 1e-9, domain="link",
                  phase=0 if link_ns == 2 * sync_ns else 0.37 * link_ns * 1e-9)
    for tb in tbs:
        sim.add_testbench(tb)
    for tb in background:
        sim.add_testbench(tb, background=True)
    t = time.time()
    # No time limit here: every wait of the host (Host.wait_for, request) is bounded in
    # link cycles and raises at its deadline, which ends the run.
    sim.run()
    return time.time() - t


def _stub_case(ratio, seed, *, hold=True):
    sync_ns, link_ns = RATIOS[ratio]
    rng = random.Random(seed)
    model, plan = tiny_model(seed)
    stub = StubAccel(model, plan.input_lanes, seed, hold_valid=True)
    top = LinkTop(model, plan, clock_hz=1_000_000, baud=0, uart=False, link_domain="link",
                  accelerator=stub, watchdog_cycles=2000)
    if not hold:                # fault: the link does not hold its word for the crossing
        top.engine.param_handshake = False
    host = Host(top, rng, p_stall=0.3, domain="link")
    ref = StubRef(model, plan.input_lanes)
    words = random_words(model, plan, rng)
    images = np.random.default_rng(seed).integers(0, 256, (6,) + model.input_shape,
                                                  dtype=np.uint8)
    got, done = [], {}

    async def tb(ctx):
        await full_load(ctx, host, top.engine, words, ref, seq0=0x10, chunk=9)
        for s, part in ((1, images[:2]), (2, images[2:5]), (3, images[5:])):
            await host.send(ctx, P.encode_frame(P.Command.INFER, s, part.tobytes()))
        for s in (1, 2, 3):
            r = await host.wait_for(ctx, lambda ev, s=s: isinstance(ev, P.Frame)
                                    and ev.seq == s and ev.command == 0x84, deadline=20000)
            assert reason(r) is P.Reason.OK, r
            got.extend(logits_of(r, len(model.classes)))
        assert ctx.get(stub.violation) == 0, "a parameter beat while an image was inside"
        done["ok"] = True

    _run(top, sync_ns, link_ns, tb, background=[host.monitor])
    assert done.get("ok"), "the run did not finish"
    want = [ref.logits(img) for img in images]
    return got, want


@pytest.mark.parametrize("ratio", list(RATIOS))
def test_dual_clock_link_top_stub(ratio):
    got, want = _stub_case(ratio, 3)
    assert got == want


def test_dual_clock_fault_no_param_hold_fails():
    """Without the hold the word changes while it crosses: the stub's sums differ."""
    got, want = _stub_case("2to1", 3, hold=False)
    assert got != want


def test_dual_clock_link_top_overlay_golden():
    """The overlay engine behind the dual-clock link (2:1 in phase): a small random
    network's parameter words and images as frames on the link's byte stream; logits equal
    the golden model's."""
    from shiftacc.hw.overlay_program import OverlayConfig, compile_overlay
    from shiftacc.hw.top import param_words
    from shiftacc.models import golden
    from shiftacc.models.netgen import random_model

    nrng = np.random.default_rng(11)
    model = random_model(nrng, size=(4, 4), in_channels=1, blocks=1, max_width=4, classes=3,
                         calib_images=8)
    config = OverlayConfig(lanes=2, requant_units=1, fm_words=64, weight_rows=32,
                           channel_rows=16, gather_rows=16, max_passes=4)
    plan = compile_overlay(model, config)
    top = LinkTop(model, plan, clock_hz=1_000_000, baud=0, uart=False, link_domain="link",
                  watchdog_cycles=4000)
    rng = random.Random(5)
    host = Host(top, rng, p_stall=0.2, domain="link")
    words = param_words(model, plan)
    images = nrng.integers(0, 1 << model.input_bits, (4,) + model.input_shape, dtype=np.uint8)
    got, done = [], {}

    async def tb(ctx):
        got.extend(await load_and_infer(ctx, host, top.engine, words, images, 3,
                                        len(model.classes), seq0=0x20, deadline=100000))
        done["ok"] = True

    secs = _run(top, 10.0, 20.0, tb, background=[host.monitor])
    print(f"{len(words)} words, {secs:.1f} s")
    assert done.get("ok"), "the run did not finish"
    assert np.array_equal(np.array(got), golden.run(model, images))
