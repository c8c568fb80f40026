"""``shiftacc explore`` / ``shiftacc regress`` on Ray: rows, files, resuming, faults, addresses.

The default run uses one embedded Ray instance of 2 CPUs for the whole module (starting Ray
costs ~20 s here) and ``--no-bitstream`` points; a real iCE40 + ECP5 place-and-route sweep is
``slow``. Expected figures come from the planner run here independently of the code under
test (the row must equal what ``hw.plan`` says) or from the golden model (the simulator's
comparison); the refusal reasons are checked by their words.
"""

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from shiftacc.hw.plan import PlanError, load_config, plan_network
from shiftacc.models.artifact import save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sw import explore as ex
from shiftacc.sw.cli import main

ray = pytest.importorskip("ray", reason="the 'explore' extra (Ray) is not installed")

#: Deadline of a whole command in a test (a Ray or simulator hang must fail, not block; the
#: simulator runs have their own, tighter wall-clock deadlines). Generous: 2 cores shared.
DEADLINE_S = 900


@pytest.fixture(scope="module")
def ray_local():
    """One embedded Ray of 2 CPUs for the module; the commands reuse it (and leave it up)."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random network (widths no lane count divides) and its budgets by outcome."""
    seed = int(os.environ.get("SHIFTACC_SEED", "5")) * 7919 % (1 << 31)
    print(f"[seed] tiny model: {seed}")
    rng = np.random.default_rng(seed)
    model = random_model(rng, size=(6, 6), in_channels=1, blocks=1, max_width=6,
                         classes=3)
    path = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    model = save_artifact(path, model)
    return path, model


def _plan(model, budget):
    try:
        return plan_network(model, load_config(overrides={"max_multipliers": budget}))
    except PlanError:
        return None


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        by_csv = {r["key"]: r for r in csv.DictReader(f)}
    by_json = {r["key"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert by_csv.keys() == by_json.keys()
    return by_json, by_csv


def test_point_direct(tiny, tmp_path):
    """run_point without Ray: an ok row equal to the planner's figures, and refusal rows."""
    path, model = tiny
    data = path.read_bytes()
    plan = _plan(model, 16)
    row = ex.run_point(ex.Point("ulx3s-12f", "dataflow", 16), data, tmp_path,
                       bitstream=False)
    assert row["status"] == "ok", row["message"]
    assert row["key"] == "ulx3s-12f-dataflow-m16-s1" and row["device"] == "LFE5U-12F"
    assert row["multipliers"] == plan.multipliers <= 16
    assert row["cycles_per_image"] == plan.predicted_cycles_per_image
    assert row["mac_efficiency"] == pytest.approx(
        plan.macs_per_image / (plan.multipliers * plan.predicted_cycles_per_image))
    build = Path(row["out"]) / "build"
    for name in ("shiftacc.il", "shiftacc.lpf", "build_shiftacc.sh", "build_report.json"):
        assert (build / name).is_file(), name
    # Refusals: no plan within the budget, the DSP overflow of a small device, no overlay.
    small = next(b for b in range(1, 16) if _plan(model, b) is not None) - 1
    r = ex.run_point(ex.Point("ulx3s-12f", "dataflow", small), data, tmp_path,
                     bitstream=False)
    assert r["status"] == "refused" and f"max_multipliers {small}" in r["message"]
    big = _plan(model, 1 << 20)
    r = ex.run_point(ex.Point("icebreaker", "dataflow", 1 << 20), data, tmp_path,
                     bitstream=False)
    assert r["status"] == "refused" and "DSP overflow" in r["message"], r["message"]
    assert r["multipliers"] == big.multipliers
    r = ex.run_point(ex.Point("ulx3s-12f", "overlay", 16), data, tmp_path, bitstream=False)
    if not ex.overlay_available():
        assert r["status"] == "refused" and "overlay" in r["message"]
    else:  # the overlay engine of `shiftacc build --engine overlay`, within the budget
        assert r["status"] == "ok", r["message"]
        assert r["plan"].startswith("overlay") and r["multipliers"] <= 16
        assert (Path(r["out"]) / "build" / "build_shiftacc.sh").is_file()


def test_explore_rows_resume(tiny, tmp_path, capsys, ray_local):
    """4 points on Ray -> CSV/JSON rows; the second run rebuilds nothing."""
    path, model = tiny
    out = tmp_path / "ex"
    argv = ["explore", str(path), "--boards", "ulx3s-12f,icebreaker", "--budgets", "8,16",
            "--no-bitstream", "--out", str(out)]
    t0 = time.monotonic()
    assert main(argv) == 0
    assert time.monotonic() - t0 < DEADLINE_S
    rows, by_csv = _rows(out)
    assert len(rows) == 4
    for board in ("ulx3s-12f", "icebreaker"):
        for budget in (8, 16):
            r = rows[f"{board}-dataflow-m{budget}-s1"]
            plan = _plan(model, budget)
            # The iCE40UP5K has 8 SB_MAC16: a plan needing more is refused, in words. One
            # within them may still be refused on the 30 EBRs it shares with the link
            # engine's block-RAM FIFOs (the message names the RAM cell); the 12F holds both.
            fits = plan.dsp("ice40") <= 8 if board == "icebreaker" else \
                plan.dsp("ecp5") <= 28
            assert r["multipliers"] == plan.multipliers
            assert int(by_csv[r["key"]]["multipliers"]) == plan.multipliers
            if not fits:
                assert r["status"] == "refused" and "DSP overflow" in r["message"], r
            elif board == "icebreaker" and r["status"] == "refused":
                assert "SB_RAM40_4K where 30 exist" in r["message"], r
            else:
                assert r["status"] == "ok", r
    ok = [k for k, r in rows.items() if r["status"] == "ok"]
    assert ok
    stamps = {k: (out / "points" / k / "build" / "shiftacc.il").stat().st_mtime_ns for k in ok}
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"{len(ok)} of 4 points reused" in err, err
    for k in ok:
        assert (out / "points" / k / "build" / "shiftacc.il").stat().st_mtime_ns == stamps[k]
    # Another model's results are never mixed in.
    other = tmp_path / "other.npz"
    save_artifact(other, random_model(np.random.default_rng(1), size=(5, 5), blocks=1,
                                      max_width=4, classes=2))
    assert main(["explore", str(other), "--boards", "ulx3s-12f", "--budgets", "16",
                 "--no-bitstream", "--out", str(out)]) == 2


def test_interrupt_and_failure_keep_rows(tiny, tmp_path, monkeypatch):
    """A failed point is a row (exit 4); Ctrl-C keeps every row finished before it (130)."""
    path, _ = tiny
    out = tmp_path / "ex"
    real = ex.run_point
    seen = []

    def flaky(point, *a, **k):
        seen.append(point["budget"])
        if point["budget"] == 17:
            monkeypatch.setattr(ex, "_check_device", _broken)
        if point["budget"] == 18:
            raise KeyboardInterrupt
        return real(point, *a, **k)

    def _broken(*a, **k):
        raise RuntimeError("planted build fault")
    monkeypatch.setattr(ex, "run_point", flaky)
    argv = ["explore", str(path), "--boards", "ulx3s-12f", "--budgets", "16,17,18,19",
            "--no-bitstream", "--out", str(out), "--serial"]
    assert main(argv) == 130
    assert seen == [16, 17, 18]
    rows, _ = _rows(out)
    assert rows["ulx3s-12f-dataflow-m16-s1"]["status"] == "ok"
    bad = rows["ulx3s-12f-dataflow-m17-s1"]
    assert bad["status"] == "failed" and "planted build fault" in bad["message"]
    assert "ulx3s-12f-dataflow-m18-s1" not in rows
    monkeypatch.setattr(ex, "run_point", real)
    monkeypatch.undo()
    # Run again without the fault: the failed point reruns, the ok one is reused, exit 0.
    assert main(argv) == 0
    rows, _ = _rows(out)
    assert all(r["status"] == "ok" for r in rows.values()) and len(rows) == 4


def test_bad_address_quick(tiny, tmp_path):
    """Nothing listening -> exit 5 within seconds (no Ray retry loop); garbage -> exit 2."""
    path, _ = tiny
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    for addr, status in ((f"127.0.0.1:{port}", 5), (f"ray://127.0.0.1:{port}", 5),
                         ("not-an-address", 2)):
        assert main(["explore", str(path), "--boards", "ulx3s-12f", "--budgets", "16",
                     "--no-bitstream", "--out", str(tmp_path / "o"),
                     "--address", addr]) == status, addr
        assert main(["regress", "--count", "1", "--out", str(tmp_path / "r"),
                     "--address", addr]) == status, addr
    assert time.monotonic() - t0 < 30


REGRESS_TINY = ["--max-size", "5", "--max-width", "4", "--max-blocks", "1", "--images", "3"]


def test_regress_and_planted_fault(tmp_path, monkeypatch, capsys, ray_local):
    """Two tiny networks on Ray match golden; a corrupted parameter word fails them (exit 1)
    with the failure folder and the replay command kept."""
    out = tmp_path / "reg"
    t0 = time.monotonic()
    assert main(["regress", "--count", "2", "--seed", "7", "--out", str(out)]
                + REGRESS_TINY) == 0
    rows = sorted(json.loads((out / "results.json").read_text())["rows"],
                  key=lambda r: r["seed"])
    assert [r["seed"] for r in rows] == [7000, 7001]
    for r in rows:
        assert r["status"] == "ok" and r["mismatches"] == 0 and r["stalled_mismatches"] == 0
        assert r["measured_cycles_per_image"] > 0 and r["predicted_cycles_per_image"] > 0
    assert not (out / "failures").exists()
    # The planted fault: parameter word 0 XOR 0x5 in both runs of every network.
    monkeypatch.setenv("SHIFTACC_REGRESS_CORRUPT", "0,0x5")
    capsys.readouterr()
    assert main(["regress", "--count", "1", "--seed", "7", "--out", str(out)]
                + REGRESS_TINY) == 1
    text = capsys.readouterr().out
    fail = out / "failures" / "7000"
    assert fail.is_dir() and "replay: shiftacc sim" in text
    for name in ("model.npz", "images.npy", "config.json", "replay.sh"):
        assert (fail / name).is_file(), name
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["status"] == "mismatch"
    assert row["mismatches"] + row["stalled_mismatches"] > 0
    assert time.monotonic() - t0 < DEADLINE_S


@pytest.mark.slow
def test_real_builds(tiny, tmp_path, ray_local):
    """A real 3-point sweep: iCE40 (native nextpnr when on PATH) and ECP5 place-and-route."""
    path, model = tiny
    out = tmp_path / "ex"
    assert main(["explore", str(path), "--boards", "icebreaker,ulx3s-12f", "--budgets", "8",
                 "--seeds", "1", "--out", str(out)]) in (0, 4)
    assert main(["explore", str(path), "--boards", "ulx3s-12f", "--budgets", "16",
                 "--out", str(out)]) == 0
    rows, _ = _rows(out)
    for r in rows.values():
        if r["status"] != "ok":
            continue
        assert r["bitstream"] and r["fmax_mhz"] > 0 and r["LUT_used"] > 0
        assert r["images_per_second"] == pytest.approx(r["fmax_mhz"] * 1e6
                                                       / r["cycles_per_image"])
    assert sum(r["status"] == "ok" for r in rows.values()) >= 2


def test_pareto_front():
    """The front keeps exactly the rows no other row beats (hand-made rows)."""
    def row(key, lut, dsp, ips, status="ok"):
        return {"key": key, "status": status, "LUT_used": lut, "DSP_used": dsp,
                "images_per_second": ips}
    rows = [row("a", 100, 4, 10.0), row("b", 200, 8, 20.0), row("c", 150, 2, 5.0),
            row("d", 100, 9, 8.0), row("e", 50, 1, 99.0, "refused"), row("f", 300, 8, 20.0),
            row("g", 90, 3, None)]
    assert [r["key"] for r in ex.pareto(rows, "LUT")] == ["a", "b"]
    # b and f tie (same DSP, same images/s): neither beats the other, both stay.
    assert [r["key"] for r in ex.pareto(rows, "DSP")] == ["c", "a", "b", "f"]
