"""``shiftacc generate`` and ``shiftacc sim`` as a user runs them."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from shiftacc.models import golden
from shiftacc.models.artifact import save_artifact
from shiftacc.sw.cli import main
from shiftacc.sim.lint import verilator_bin
from shiftacc.sim.resources import verilator_waivers
from shiftacc.models.netgen import random_model

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("SHIFTACC_CACHE", str(ROOT / "build" / "sim-cache"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("cli") / "net.npz"
    model = save_artifact(path, random_model(rng, size=(7, 6), in_channels=2, blocks=2))
    return model, path


def test_generate_writes_verilog_and_summary(artifact, tmp_path, capsys):
    model, path = artifact
    out = tmp_path / "hw"
    assert main(["generate", str(path), "--out", str(out)]) == 0
    summ = json.loads((out / "summary.json").read_text())
    for key in ("layers", "parallelism", "memories", "multipliers",
                "predicted_cycles_per_image", "ideal_cycles_per_image",
                "predicted_mac_efficiency", "stages"):
        assert key in summ, key
    assert summ["macs_per_image"] == model.macs_per_image()
    assert len(summ["layers"]) == len(model.layers)
    assert "predicted" in (out / "summary.txt").read_text()
    params = (out / "params.bin").read_bytes()
    assert len(params) % 10 == 0 and len(params) > 0
    # The emitted top is clean Verilog for Verilator's linter (waivers in one place).
    import subprocess
    proc = subprocess.run([verilator_bin(), "--lint-only", "-Wall",
                           str(verilator_waivers()), str(out / "shiftacc_top.v"),
                           "--top-module", "shiftacc_top"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_generate_refuses_unbuildable(artifact, tmp_path, capsys):
    model, path = artifact
    cfg = tmp_path / "par.json"
    cfg.write_text(json.dumps({"max_multipliers": 1}))
    assert main(["generate", str(path), "--out", str(tmp_path / "x"), "--config", str(cfg)]) == 2
    assert "max_multipliers" in capsys.readouterr().err


def test_sim_cli_json_contract(artifact, tmp_path, capsys):
    model, path = artifact
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (12,) + model.input_shape).astype(np.uint8)
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "out.json"
    status = main(["sim", str(path), "--images", str(tmp_path / "x.npy"), "--json", str(out),
                   "--seed", "3"])
    assert status == 0, capsys.readouterr()
    res = json.loads(out.read_text())
    for key in ("logits", "golden_mismatches", "cycles_per_image", "predicted_cycles_per_image",
                "ideal_cycles_per_image", "sim_cycles", "sim_wall_seconds"):
        assert key in res, key
    assert res["golden_mismatches"] == 0
    assert res["logits"] == golden.run(model, images).tolist()
    assert "accuracy" not in res  # no labels for --images
    text = capsys.readouterr().out
    assert "cycles/image measured" in text
    assert res["cycles_per_image"] == res["predicted_cycles_per_image"]


def test_sim_cli_under_stalls_reports_honest_cycles(artifact, tmp_path, capsys):
    """--stall-level 128: no steady-state claim; the figure is >= the stall-free one."""
    model, path = artifact
    rng = np.random.default_rng(6)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (12,) + model.input_shape).astype(np.uint8))
    out = tmp_path / "out.json"
    assert main(["sim", str(path), "--images", str(tmp_path / "x.npy"), "--json", str(out),
                 "--stall-level", "128", "--seed", "4"]) == 0
    res = json.loads(out.read_text())
    assert res["cycles_per_image"] is None and "mac_efficiency" not in res
    assert res["cycles_per_image_stalled"] >= res["predicted_cycles_per_image"]
    text = capsys.readouterr().out
    assert "under stalls" in text and "cycles/image measured" not in text


def test_sim_cli_bad_inputs(artifact, tmp_path, capsys):
    model, path = artifact
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 3, 1), np.uint8))
    assert main(["sim", str(path), "--images", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert "shape" in err
    assert main(["sim", str(tmp_path / "missing.npz"), "--dataset", "digits"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("simulator,suffix", [("verilator", ".fst"), ("icarus", ".vcd")])
def test_sim_waves_on_demand(tmp_path, simulator, suffix, capsys):
    """--waves leaves a waveform (FST from Verilator, VCD from Icarus) and says where."""
    rng = np.random.default_rng(21)
    path = tmp_path / "tiny.npz"
    model = save_artifact(path, random_model(rng, size=(4, 4), blocks=1, max_width=5))
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (2,) + model.input_shape).astype(np.uint8))
    out = tmp_path / "out.json"
    assert main(["sim", str(path), "--images", str(tmp_path / "x.npy"), "--simulator", simulator,
                 "--waves", "--json", str(out), "--workdir", str(tmp_path / "w")]) == 0
    wave = Path(json.loads(out.read_text())["waveform"])
    assert wave.suffix == suffix and wave.stat().st_size > 1000
    assert str(wave) in capsys.readouterr().out
