"""The overlay engine's attention hardware (``OverlayConfig.attention``, hw/overlay.py
``OverlayEngine._attention``) against models.golden, bit for bit, under random valid/ready
stalls; measured cycles per image == hw/overlay_timing.image_cycles.

The networks come from ``models.netgen.random_model`` with version-2 ops (channel counts the
lanes do not divide, odd sizes, 4- and 8-bit activations, random k, tables and placement);
a draw the overlay refuses (an attention op directly before a maxpool2, which the overlay
cannot fuse) is drawn again. The program and memory images come from
``hw.overlay_program.compile_overlay``; the expected logits from ``models.golden.run`` only.
"""

import numpy as np
import pytest

from shiftacc.hw.overlay import OverlayEngine, overlay_engine_cost
from shiftacc.hw.overlay_program import (OverlayConfig, OverlayFitError, compile_overlay,
                                         decode_param_words, run_overlay)
from shiftacc.hw.overlay_timing import image_cycles
from shiftacc.models import golden
from shiftacc.models.netgen import random_model
from shiftacc.sim.streamtb import make_rng

from overlay_tb import check_logits, image_beats, run_engine  # noqa: E402

ECA = ("channel_attention",)


def att_config(lanes, r, attention=ECA, **kw):
    args = dict(lanes=lanes, requant_units=r, fm_words=512, weight_rows=256, channel_rows=64,
                gather_rows=128, max_passes=8, attention=attention, attention_rows=8192)
    args.update(kw)
    return OverlayConfig(**args)


def draw(nrng, cfg, attention, size, max_width=9, need_gap=None, tries=300, want=None):
    """A random network with ``attention`` that compiles for ``cfg`` (with the attention
    op's gap fused when ``need_gap`` is True, not fused when False; ``want(model)`` true
    when given)."""
    for _ in range(tries):
        model = random_model(nrng, size=size, in_channels=int(nrng.integers(1, 3)),
                             blocks=int(nrng.integers(1, 3)), max_width=max_width,
                             classes=int(nrng.integers(2, 7)), calib_images=16,
                             attention=attention)
        try:
            plan = compile_overlay(model, cfg)
        except OverlayFitError:
            continue
        ops = [layer.op for layer in model.layers]
        fused = any(a in attention and b == "gap" for a, b in zip(ops, ops[1:]))
        if (need_gap is None or fused == need_gap) and (want is None or want(model)):
            return model, plan
    raise AssertionError("no compilable network drawn")


def attention_case(name, lanes, r, size, need_gap=None, n_img=2, p_idle=0.3, p_stall=0.5,
                   attention=ECA, max_width=9, want=None, engine=OverlayEngine):
    rng, seed = make_rng(name)
    nrng = np.random.default_rng(seed)
    cfg = att_config(lanes, r, attention)
    model, plan = draw(nrng, cfg, attention, size, max_width, need_gap, want=want)
    print(f"{name}: {[layer.op for layer in model.layers]} act_bits={model.act_bits} "
          f"weight_bits={model.weight_bits}")
    for line in plan.summary():
        print(line)
    h, w, c = model.input_shape
    images = nrng.integers(0, 256, (n_img, h, w, c))
    want = golden.run(model, images)
    got, first = run_engine(engine(plan.config), plan.param_words(), images,
                            want.shape[1], rng, p_idle, p_stall, deadline=400_000)
    check_logits(got, want)
    return plan, first


SAM = ("spatial_attention",)
DYN = ("dynamic_conv1x1",)
BOTH = ("channel_attention", "spatial_attention")
ALL = BOTH + DYN

# (attention ops, lanes, R, size, the attention's gap fused)
CASES = [(ECA, 4, 2, (5, 4), False), (ECA, 2, 1, (4, 5), True), (SAM, 6, 2, (5, 4), False),
         (SAM, 4, 1, (3, 5), True), (BOTH, 6, 2, (5, 5), None), (DYN, 6, 1, (5, 4), None),
         (ALL, 4, 2, (4, 5), None)]


# cases 0 and 4 are covered by the others in the default run (the suite's time budget)
@pytest.mark.parametrize("case", [pytest.param(k, marks=pytest.mark.slow) if k in (0, 4) else k
                                  for k in range(len(CASES))])
def test_attention_random_nets_with_stalls(case):
    attention, lanes, r, size, gap = CASES[case]
    attention_case(f"test_attention_random_nets_with_stalls[{case}]", lanes, r, size, gap,
                   attention=attention)


@pytest.mark.parametrize("attention,gap", [
    pytest.param(ECA, False, marks=pytest.mark.slow), (ECA, True), (SAM, False),
    pytest.param(SAM, True, marks=pytest.mark.slow), (DYN, None)],
    ids=["eca", "eca-gap", "sam", "sam-gap", "dyn"])
def test_attention_cycles_match_the_model(attention, gap):
    """No stalls: the cycles between consecutive images' first beats equal image_cycles,
    with the attention pass on its own and with a fused gap."""
    plan, first = attention_case(f"test_attention_cycles_match_the_model[{attention[0]}-"
                                 f"{gap}]", 4, 1, (5, 3), gap, n_img=3, p_idle=0.0,
                                 p_stall=0.0, attention=attention)
    periods = np.diff(first).tolist()
    print(f"measured periods {periods}, model {image_cycles(plan)}")
    assert len(periods) == 2 and periods == [image_cycles(plan)] * 2


@pytest.mark.slow
@pytest.mark.parametrize("case", range(4))
def test_attention_random_nets_slow(case):
    """Bigger maps and wider layers (more channels than the per-channel steps' pipeline
    depth, k up to 9), every op in one network; case 0 also checks the cycles."""
    lanes, r = ((8, 1), (4, 2), (6, 1), (2, 2))[case]
    plan, first = attention_case(f"test_attention_random_nets_slow[{case}]", lanes, r, (7, 6),
                                 n_img=3, p_idle=0.0 if case == 0 else 0.3,
                                 p_stall=0.0 if case == 0 else 0.5, max_width=14,
                                 attention=ALL)
    if case == 0:
        assert np.diff(first).tolist() == [image_cycles(plan)] * 2


def test_attention_ecp5_multiplier_is_two_registered_mult18x18d():
    """On an ECP5 the attention unit's 33s x 16u multiplier is two MULT18X18D (the operand's
    low 17 bits and its high 16 bits, times the 16-bit factor) with their A/B input and
    output registers: the operand select's RAM reads and priority mux end in the DSP's
    input register, the product leaves from its output register (the ULX3S build's critical
    path was the unregistered path through both). The generic RTL has no MULT18X18D."""
    from ecp5_dsp import registered_mult18x18d
    from shiftacc.hw.stream import to_verilog
    from test_overlay_engine import _ECP5
    # the 4 MAC lanes register their output only (fed by fabric registers, test_overlay_engine)
    base = registered_mult18x18d(to_verilog(OverlayEngine(att_config(4, 2, ())),
                                            platform=_ECP5()), output_only=4)
    text = to_verilog(OverlayEngine(att_config(4, 2, ALL)), platform=_ECP5())
    assert registered_mult18x18d(text, output_only=4) == base + 2
    assert "MULT18X18D" not in to_verilog(OverlayEngine(att_config(4, 2, ALL)))


@pytest.mark.parametrize("attention,gap", [(BOTH, None), pytest.param(ALL, None,
                                                                       marks=pytest.mark.slow)],
                         ids=["eca-sam", "all"])
def test_attention_ecp5_matches_golden_and_cycles(monkeypatch, attention, gap):
    """The ECP5 netlist (its MULT18X18D blocks as test_requant's behavioural model: the
    attention multiplier's partial products and their sum) computes golden logits under
    stalls, and without stalls its cycles per image equal the cycle model: the same
    latency as the generic RTL's operand and partial-product registers."""
    import shiftacc.hw.overlay as ov_mod
    from test_overlay_engine import _OverlayOnECP5
    from test_requant import _mult18x18d_model
    calls = []
    monkeypatch.setattr(ov_mod, "mult18x18d_registered", _mult18x18d_model(calls))
    name = f"test_attention_ecp5_matches_golden_and_cycles[{attention[-1]}]"
    attention_case(name, 4, 2, (5, 4), gap, attention=attention, engine=_OverlayOnECP5)
    att = [c for c in calls if c[2].width > 16]          # the MAC lanes' products are 16 bits
    assert len(att) == 2, calls
    plan, first = attention_case(name + "-cycles", 4, 1, (5, 3), gap, n_img=3, p_idle=0.0,
                                 p_stall=0.0, attention=attention, engine=_OverlayOnECP5)
    assert np.diff(first).tolist() == [image_cycles(plan)] * 2


def _dyn_in_a_block(stride):
    """A network whose dynamic conv is a block's (after a shift: its pool reads through the
    gather entries), with the given stride and an attention step t > 1."""
    def want(model):
        layers = model.layers
        return any(layer.op == "dynamic_conv1x1" and k < len(layers) - 1
                   and layer.stride == stride and layer.att_step > 1
                   for k, layer in enumerate(layers))
    return want


@pytest.mark.parametrize("stride", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_dynamic_conv_in_a_block(stride):
    """The dynamic conv after a shift (pool through the gather, t-grid), with stalls."""
    attention_case(f"test_dynamic_conv_in_a_block[{stride}]", 4, 1, (6, 5), None,
                   attention=DYN, want=_dyn_in_a_block(stride))


def test_attention_executor_and_words_match_golden():
    """The NumPy executor, from the plan and from the decoded parameter words (what the
    device model runs), equals the golden model on many random attention networks."""
    rng, seed = make_rng("test_attention_executor_and_words_match_golden")
    nrng = np.random.default_rng(seed)
    cfg = att_config(4, 2, ALL, attention_rows=16384)
    for _ in range(20):
        size = (int(nrng.integers(3, 9)), int(nrng.integers(3, 9)))
        model, plan = draw(nrng, cfg, ALL, size, max_width=12)
        images = nrng.integers(0, 256, (6,) + model.input_shape)
        want = golden.run(model, images)
        assert np.array_equal(run_overlay(plan, images), want)
        mem = decode_param_words(plan.param_words(), cfg)
        assert np.array_equal(run_overlay(mem, images), want)


@pytest.mark.parametrize("op", ALL)
def test_attention_refused_without_the_option(op):
    """A config without that op's attention hardware refuses the model and names the
    option (with the ops it has already)."""
    rng, seed = make_rng(f"test_attention_refused_without_the_option[{op}]")
    nrng = np.random.default_rng(seed)
    model, _ = draw(nrng, att_config(4, 2, (op,)), (op,), (5, 5))
    i = next(k for k, layer in enumerate(model.layers) if layer.op == op)
    with pytest.raises(OverlayFitError) as e:
        compile_overlay(model, att_config(4, 2, attention=()))
    msg = str(e.value)
    assert msg.startswith(f"layer {i} ({op}): ")
    assert f'"attention": ["{op}"]' in msg and "--engine dataflow" in msg
    other = next(o for o in ALL if o != op)
    with pytest.raises(OverlayFitError) as e:
        compile_overlay(model, att_config(4, 2, attention=(other,)))
    assert f'"attention": ["{other}", "{op}"]' in str(e.value)


def test_eca_refused_before_a_maxpool():
    """An attention op directly before a maxpool2: refused in words (the overlay fuses a
    maxpool only into the conv before it)."""
    rng, seed = make_rng("test_eca_refused_before_a_maxpool")
    nrng = np.random.default_rng(seed)
    for _ in range(400):
        model = random_model(nrng, size=(6, 6), blocks=2, max_width=6, calib_images=8,
                             attention=ECA)
        ops = [layer.op for layer in model.layers]
        if ("channel_attention", "maxpool2") in zip(ops, ops[1:]):
            break
    else:
        pytest.skip("no such network drawn")
    with pytest.raises(OverlayFitError, match=r"\(maxpool2\): the overlay fuses a maxpool2 "
                                              r"into the conv1x1 directly before it, here it "
                                              r"follows channel_attention"):
        compile_overlay(model, att_config(4, 2))


def test_attention_option_off_keeps_the_engine_and_its_json():
    """Without ``attention`` the config's JSON (the device descriptor's design id) and the
    engine's resources are what they were; with it, one multiplier and three memories
    more."""
    base = OverlayConfig(lanes=8, requant_units=1, primitives="ice40")
    assert "attention" not in base.to_json() and "attention_rows" not in base.to_json()
    on = OverlayConfig.from_json(dict(base.to_json(), attention=["channel_attention"]))
    assert on.attention == ECA and on.to_json()["attention"] == ["channel_attention"]
    assert OverlayConfig.from_json(on.to_json()) == on
    off_cost, on_cost = overlay_engine_cost(base), overlay_engine_cost(on)
    assert on_cost.multiplier_count == off_cost.multiplier_count + 1
    extra = {mem.name for mem in on_cost.memories} - {mem.name for mem in off_cost.memories}
    assert extra == {"attention", "att_p", "att_a"}
    with pytest.raises(ValueError, match="attention"):
        OverlayConfig(attention=("softmax",))
    with pytest.raises(ValueError, match="attention"):
        OverlayConfig(attention=("channel_attention", "channel_attention"))


@pytest.mark.parametrize("lanes,r", [(8, 1), (6, 2)])
def test_attention_cost_counts_every_memory(lanes, r):
    """Every block RAM of the engine with attention hardware is in its cost, with its
    depth and width (the feature-map banks are SPRAMs)."""
    from amaranth.hdl import Fragment
    cfg = OverlayConfig(lanes=lanes, requant_units=r, primitives="ice40", channel_rows=256,
                        attention=ALL, attention_rows=2048)
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
        mem = inst.origins[0]
        assert (mem.depth, mem.shape.width) == (cost[name].depth, cost[name].width), name


@pytest.mark.slow
def test_attention_lint(tmp_path):
    """Verilator -Wall lint of the generic engine with every attention op (the project's
    waivers only). Six lanes, R = 1: the gap sums' address then uses every bit of its index
    (with 4 lanes, R = 2, the engine without attention has an UNUSEDSIGNAL on it too)."""
    from shiftacc.sim.lint import lint_component
    ok, msg = lint_component(OverlayEngine(att_config(6, 1, ALL)), "overlay", tmp_path)
    assert ok, msg


@pytest.mark.slow
def test_attention_ice40_primitives_under_icarus(tmp_path):
    """The iCE40 variant (SB_MAC16 lane pairs and requant halves, SB_SPRAM256KA banks: the
    attention unit reads the maps through the SPRAM's latency) with every attention op,
    simulated by Icarus with Yosys' cell models, computes golden logits exactly (random
    stalls on every stream; the testbench of test_overlay_engine)."""
    import shutil
    import subprocess
    from shiftacc.hw.stream import to_verilog
    from test_overlay_engine import _TB, _cells_sim
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        pytest.skip("Icarus Verilog is not installed")
    rng, seed = make_rng("test_attention_ice40_primitives_under_icarus")
    nrng = np.random.default_rng(seed)
    cfg = OverlayConfig(lanes=4, requant_units=1, fm_words=16384, weight_rows=256,
                        channel_rows=64, gather_rows=64, max_passes=8, primitives="ice40",
                        attention=ALL, attention_rows=4096)
    model, plan = draw(nrng, cfg, ALL, (5, 4), max_width=7)
    print([layer.op for layer in model.layers])
    h, w, c = model.input_shape
    images = nrng.integers(0, 256, (2, h, w, c))
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
                                   .replace("{deadline}", str(300_000)))
    subprocess.run(["iverilog", "-g2005", "-DNO_ICE40_DEFAULT_ASSIGNMENTS", "-o", "sim.vvp",
                    "-s", "tb", "tb.v", "overlay.v", _cells_sim()],
                   cwd=tmp_path, check=True, timeout=300)
    out = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    print(out.stdout[-2000:])
    assert "DONE" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    got = [tuple(int(v) for v in line.split())
           for line in (tmp_path / "logits.txt").read_text().splitlines()]
    check_logits(got, want)


@pytest.mark.parametrize("op", ALL)
def test_attention_table_overflow_refused(op):
    """A network whose attention tables do not fit attention_rows is refused, naming it."""
    rng, seed = make_rng(f"test_attention_table_overflow_refused[{op}]")
    nrng = np.random.default_rng(seed)
    model, plan = draw(nrng, att_config(4, 2, (op,)), (op,), (5, 5))
    assert len(plan.att) > 16
    with pytest.raises(OverlayFitError, match=rf"\({op}\): the network needs \d+ "
                                              r"attention-table entries .* over "
                                              r"attention_rows = 16; raise attention_rows"):
        compile_overlay(model, att_config(4, 2, (op,), attention_rows=16))


@pytest.mark.parametrize("attention", [ECA, ("spatial_attention",), ALL])
def test_attention_words_go_through_the_link_loader(attention):
    """The link loads an overlay's whole memory space (hw.top.overlay_param_words): with
    attention hardware that space includes the attention table, so every word the compiler
    emits (kernels, LUTs) is loaded, at its own row, and nothing else is in that table."""
    from shiftacc.hw.params import ParamKind
    from shiftacc.hw.top import overlay_param_space, overlay_param_words
    cfg = att_config(6, 1, attention)
    _, seed = make_rng(f"test_attention_words_go_through_the_link_loader{len(attention)}")
    model, plan = draw(np.random.default_rng(seed), cfg, attention, (5, 5))
    space = overlay_param_space(cfg)
    assert space[-1] == (ParamKind.LUT, cfg.attention_rows, 1)
    words = overlay_param_words(plan)
    assert len(words) == sum(rows * lanes for _, rows, lanes in space)
    lut = int(ParamKind.LUT.value)
    from shiftacc.hw.params import PARAM_LAYOUT

    def field(w, name):
        f = PARAM_LAYOUT[name]
        return int(w) >> f.offset & ((1 << f.width) - 1)
    want = {field(w, "row"): field(w, "data") for w in plan.param_words()
            if field(w, "kind") == lut}
    assert want, "the plan has no attention-table words"
    got = {field(w, "row"): field(w, "data") for w in words if field(w, "kind") == lut}
    assert len(got) == cfg.attention_rows
    assert all(got[r] == v for r, v in want.items())
    assert all(v == 0 for r, v in got.items() if r not in want)
