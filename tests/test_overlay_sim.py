"""The overlay engine verified whole behind the host link on Verilator (issue #10).

The device is the board top ``shiftacc serve`` simulates (link engine + ``OverlayEngine``,
:func:`shiftacc.sim.linksim.simulate_link`), loaded and driven by the host driver over a
socket; the expected logits come from ``models.golden`` (written separately), never from the
engine's compiler or executor. Cycles: every clean period between consecutive images at the
engine's own ports must equal ``hw/overlay_timing``'s prediction.

The default tests share one small Verilator build (one overlay config, one I/O: 6x5x2 images,
4 classes); the networks behind it are drawn per seed (widths the lanes do not divide, shifts,
stride 2, maxpool, 4- and 8-bit). The iCEBreaker (UP5K) config on Yosys's iCE40 cell models
and the ``regress --engine overlay`` command are ``slow``.
"""

import json
import time

import numpy as np
import pytest

from shiftacc.hw.overlay_program import OverlayConfig, OverlayFitError, compile_overlay
from shiftacc.hw.overlay_timing import image_cycles
from shiftacc.hw.params import ParamKind
from shiftacc.hw.top import param_words
from shiftacc.models import golden
from shiftacc.models.netgen import random_model
from shiftacc.sw.cli import main

#: One config and one I/O for every default test: one cached Verilator build.
SMALL = dict(lanes=4, requant_units=1, fm_words=512, weight_rows=256, channel_rows=64,
             gather_rows=64, max_passes=8)
SIZE, IN_CHANNELS, CLASSES = (6, 5), 2, 4
#: Seconds the simulator may take to build and start listening (the first test builds it,
#: ~30-60 s); every reply then comes within ``linksim.REPLY_TIMEOUT``.
DEADLINE_S = 400


def _tools_or_skip():
    from shiftacc.sim.runner import SimulatorMissing, tool_env
    try:
        tool_env("verilator")
    except SimulatorMissing as e:
        pytest.skip(str(e))


def draw(seed, config=SMALL):
    """A random version-1 network of the shared I/O that the overlay accepts (drawn again
    while it refuses one), its plan and a generator for images and stalls."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        model = random_model(rng, size=SIZE, in_channels=IN_CHANNELS,
                             blocks=int(rng.integers(1, 3)), max_width=9, classes=CLASSES,
                             calib_images=16)
        try:
            return model, compile_overlay(model, OverlayConfig(**config)), rng
        except OverlayFitError:
            continue
    raise AssertionError("no network the overlay accepts in 100 draws")


def run(model, plan, images, **kw):
    from shiftacc.sim.linksim import simulate_link
    _tools_or_skip()
    t0 = time.monotonic()
    res = simulate_link(model, plan, images, log=lambda *a, **k: None,
                        start_timeout=DEADLINE_S, **kw)
    assert time.monotonic() - t0 < DEADLINE_S
    print(f"layers {[l.op for l in model.layers]} act_bits {model.act_bits}; probes "
          f"{res['probes']}; link cycles {res['link_cycles']}")
    return res


def bad_images(got, want):
    return np.nonzero(np.any(np.asarray(got) != want, axis=1))[0].tolist()


def test_overlay_behind_the_link_is_exact_and_on_time(seed):
    """Back to back: logits == golden, every clean period == the predicted cycles/image."""
    model, plan, rng = draw(seed)
    images = rng.integers(0, 256, (5,) + model.input_shape)
    res = run(model, plan, images)
    want = golden.run(model, images)
    assert bad_images(res["logits"], want) == []
    p = res["probes"]
    assert p["images_started"] == len(images)
    assert p["logit_waits"] == 0 and p["rx_stalls"] == p["tx_stalls"] == 0
    # Between the first and the last image's first beat, the cycles the engine did not wait
    # for image bytes are exactly (images - 1) x the timing model's cycles per image; every
    # clean period (the host was ahead of the engine) is exactly one.
    predicted = image_cycles(plan)
    assert p["window"] - p["starved"] == (len(images) - 1) * predicted
    if p["clean_count"]:
        assert p["clean_min"] == p["clean_max"] == predicted


def test_overlay_under_link_stalls_is_exact(seed):
    """Random gaps on the host -> device bytes and backpressure on the replies (level and
    seed drawn and printed): the engine is starved (the probes prove the stalls reached it)
    and the logits stay exact."""
    model, plan, rng = draw(seed)
    images = rng.integers(0, 256, (4,) + model.input_shape)
    level = int(rng.integers(160, 250))
    stall_seed = int(rng.integers(1, 1 << 31))
    print(f"stall level {level}/256, stall seed {stall_seed}")
    res = run(model, plan, images, stall_level=level, seed=stall_seed)
    assert bad_images(res["logits"], golden.run(model, images)) == []
    p = res["probes"]
    assert p["images_started"] == len(images)
    assert p["rx_stalls"] > 0 and p["tx_stalls"] > 0, "the stalls never held a byte back"
    # The timing model still holds for the compute (unless a logit had to wait).
    if p["logit_waits"] == 0:
        assert p["window"] - p["starved"] == (len(images) - 1) * image_cycles(plan)


def test_corrupted_parameter_word_is_a_mismatch(seed):
    """A planted fault must show: the classifier's first bias word XOR 2^16 (through the same
    hook ``regress`` uses) changes class 0's logit of every image."""
    model, plan, rng = draw(seed)
    images = rng.integers(0, 256, (3,) + model.input_shape)
    words = param_words(model, plan)     # the words the driver sends
    cbase = int(plan.passes[-1]["cbase"])
    # Word fields (hw.params.PARAM_LAYOUT): layer 8, kind 8, row 16, lane 16, data 32 bits.
    index = next(i for i, w in enumerate(words)
                 if (w >> 8) & 0xFF == ParamKind.BIAS.value and (w >> 16) & 0xFFFF == cbase)
    res = run(model, plan, images, corrupt_param=(index, 1 << (48 + 16)))
    want = golden.run(model, images)
    assert bad_images(res["logits"], want) == list(range(len(images)))
    assert all(abs(int(g) - int(w)) == 1 << 16
               for g, w in zip(np.asarray(res["logits"])[:, 0], want[:, 0]))


def test_cli_refuses_what_the_overlay_sim_does_not_do(tmp_path, capsys):
    """Options that do not go together are usage errors (exit 2), before any build."""
    from shiftacc.models.artifact import save_artifact
    model, _, _ = draw(1)
    path = tmp_path / "m.npz"
    save_artifact(path, model)
    assert main(["sim", str(path), "--engine", "overlay", "--protocol", "--limit", "1"]) == 2
    assert main(["sim", str(path), "--board", "icebreaker", "--limit", "1"]) == 2
    assert main(["sim", str(path), "--engine", "overlay", "--board", "no-such-board",
                 "--limit", "1"]) == 2
    assert main(["regress", "--board", "icebreaker", "--count", "1",
                 "--out", str(tmp_path / "r")]) == 2
    assert main(["regress", "--engine", "overlay", "--attention", "--count", "1",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--protocol" in err and "--board" in err and "no-such-board" in err


def test_regress_draws_again_what_the_overlay_refuses(seed):
    """A network the overlay refuses (here maps over a 256-word bank) is drawn again, not a
    failure: the accepted draw compiles; a config nothing fits is refused in words after
    OVERLAY_DRAWS draws."""
    from shiftacc.sw import explore
    tight = {"config": {"fm_words": 256}, "board": None}
    draws = []
    for s in range(seed % 1000, seed % 1000 + 6):
        model, plan, link_kw, _, n = explore.draw_overlay_network(s, tight)
        assert link_kw is None and n >= 1
        # The accepted one really fits: every map of every pass within the 256-word banks.
        assert compile_overlay(model, OverlayConfig(fm_words=256)).config.fm_words == 256
        draws.append(n)
    print(f"draws per seed: {draws}")
    # One pass and the END row (every drawn network has two convs or more): nothing fits.
    none = {"config": {"lanes": 2, "max_passes": 2, "gather_rows": 2}, "board": None}
    with pytest.raises(OverlayFitError, match="refused all"):
        explore.draw_overlay_network(seed, none, max_size=6)


@pytest.mark.slow
def test_icebreaker_config_on_digits(tmp_path, capsys):
    """``sim --engine overlay --board icebreaker``: the UP5K config the iCEBreaker build
    places (8 lanes, R = 1, ice40 primitives on Yosys's SB_MAC16/SB_SPRAM256KA models) on
    digits test images: 0 mismatches, clean periods == predicted, then under stalls."""
    from pathlib import Path
    digits = Path(__file__).resolve().parent.parent / "out" / "digits.npz"
    if not digits.exists():  # the README's main command makes it; else train it here (~15 s)
        digits = tmp_path / "digits.npz"
        assert main(["train", "--dataset", "digits", "--out", str(digits)]) == 0
    _tools_or_skip()
    for level in (0, 200):
        out = tmp_path / f"sim{level}.json"
        assert main(["sim", str(digits), "--engine", "overlay", "--board", "icebreaker",
                     "--dataset", "digits", "--limit", "24", "--stall-level", str(level),
                     "--seed", "11", "--json", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["golden_mismatches"] == 0
        assert res["config"]["primitives"] == "ice40" and res["config"]["lanes"] == 8
        assert res["undefined_collisions"]  # block RAM read as the iCE40 build places it
        assert res["engine_cycles_match_prediction"]
        if level == 0:
            assert res["engine_cycles_per_image"] == res["predicted_cycles_per_image"]
        else:
            assert res["probes"]["rx_stalls"] > 0 and res["probes"]["tx_stalls"] > 0


@pytest.mark.slow
def test_regress_overlay_cli(tmp_path, capsys, monkeypatch):
    """``regress --engine overlay``: two networks exact with measured == predicted cycles;
    then a planted fault (every network's classifier bias word) is reported as a mismatch
    with the failing network kept and a replay command."""
    from shiftacc.sw.explore import draw_overlay_network
    _tools_or_skip()
    out = tmp_path / "reg"
    cfg = json.dumps(SMALL)
    args = ["regress", "--engine", "overlay", "--overlay-config", cfg, "--images", "4",
            "--max-size", "7", "--max-width", "9", "--serial"]
    assert main(args + ["--count", "2", "--seed", "3", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 2
    for r in rows:
        assert r["status"] == "ok" and r["mismatches"] == r["stalled_mismatches"] == 0
        assert r["measured_cycles_per_image"] == r["predicted_cycles_per_image"]
    # The planted fault: network 4000's classifier bias word (drawn as the task draws it).
    model, plan, _, _, _ = draw_overlay_network(4000, {"config": SMALL, "board": None},
                                            max_size=7, max_width=9)
    cbase = int(plan.passes[-1]["cbase"])
    index = next(i for i, w in enumerate(param_words(model, plan))
                 if (w >> 8) & 0xFF == ParamKind.BIAS.value and (w >> 16) & 0xFFFF == cbase)
    monkeypatch.setenv("SHIFTACC_REGRESS_CORRUPT", f"{index},{1 << (48 + 16)}")
    assert main(args + ["--count", "1", "--seed", "4", "--out", str(out)]) == 1
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["status"] == "mismatch", row
    assert (out / "failures" / "4000" / "replay.sh").is_file()
    assert "replay: shiftacc sim" in capsys.readouterr().out
