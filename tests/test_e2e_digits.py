"""The README's main job, end to end on digits: train -> golden -> generate -> sim.

The trained network's exported integers run through the generated accelerator on the whole
digits test split (Verilator) and on a few images on Icarus; every logit must equal golden.
"""

import json
import os
from pathlib import Path

import pytest

from shiftacc.models import golden
from shiftacc.models.artifact import load_artifact
from shiftacc.models.data import load_split
from shiftacc.sw.cli import main

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("SHIFTACC_CACHE", str(ROOT / "build" / "sim-cache"))


@pytest.fixture(scope="module", params=[("sal", 8, 8), ("grouped", 4, 4)],
                ids=["sal-a8w8", "grouped-a4w4"])
def trained(request, tmp_path_factory):
    method, act, wb = request.param
    out = tmp_path_factory.mktemp("e2e") / f"{method}.npz"
    # Few epochs: this checks hardware == golden, not accuracy (train's own tests do that).
    assert main(["train", "--dataset", "digits", "--method", method, "--epochs", "6",
                 "--act-bits", str(act), "--weight-bits", str(wb), "--out", str(out),
                 "--quiet", "--seed", "2"]) == 0
    return out


def test_digits_test_split_on_verilator(trained, tmp_path, capsys):
    model = load_artifact(trained)
    hw = tmp_path / "hw"
    assert main(["generate", str(trained), "--out", str(hw)]) == 0
    assert (hw / "shiftacc_top.v").stat().st_size > 0
    out = tmp_path / "sim.json"
    limit = [] if model.act_bits == 8 else ["--limit", "90"]
    status = main(["sim", str(trained), "--dataset", "digits", "--json", str(out), "--seed", "7"]
                  + limit)
    res = json.loads(out.read_text())
    assert status == 0 and res["golden_mismatches"] == 0, res.get("first_mismatch")
    images, labels = load_split("digits", "test")
    n = len(res["logits"])
    assert n == (360 if not limit else 90)
    want = golden.run(model, images[:n])
    assert res["logits"] == want.tolist()
    assert res["accuracy"] == pytest.approx(float((want.argmax(1) == labels[:n]).mean()))
    assert res["cycles_per_image"] >= res["ideal_cycles_per_image"]
    assert res["cycles_per_image"] == res["predicted_cycles_per_image"]  # exact cycle model


def test_digits_on_icarus(trained, tmp_path):
    out = tmp_path / "sim.json"
    assert main(["sim", str(trained), "--dataset", "digits", "--simulator", "icarus",
                 "--limit", "3", "--json", str(out), "--seed", "8"]) == 0
    res = json.loads(out.read_text())
    assert res["golden_mismatches"] == 0
    images, _ = load_split("digits", "test")
    assert res["logits"] == golden.run(load_artifact(trained), images[:3]).tolist()
