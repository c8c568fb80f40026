"""``shiftacc build --engine auto``: the engine (dataflow or overlay) chosen per board.

The expected choices are the numbers of docs/boards.md ("The engine per device"), derived by
hand from the two engines' counts for the digits topology (``digits-s``: 8x8x1, 38,368
MACs/image): on the iCE40 UP5K no dataflow plan fits (11 SB_MAC16 of 8 at its smallest), so
the overlay; on the ECP5-12F the dataflow plan that fits has 11 multipliers (8,192
cycles/image) against the 16-lane overlay's 2,840, so the overlay; from the 25F up the
dataflow plan is the faster (22 multipliers, 2,560 cycles; 57, 896; 116, 384). Nothing here
runs a synthesis tool.
"""

import json

import numpy as np
import pytest

from shiftacc.boards.registry import find_board
from shiftacc.hw.devices import plan_for_device
from shiftacc.hw.overlay_program import OverlayConfig, OverlayFitError, compile_overlay
from shiftacc.models.artifact import load_artifact, save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sw.cli import build_parser, main
from shiftacc.sw.cli_build import choose_engine
from shiftacc.sw.errors import UsageError


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits topology (preset digits-s), briefly trained: the choice depends on the
    topology, not on the accuracy."""
    path = tmp_path_factory.mktemp("engine") / "digits.npz"
    assert main(["train", "--dataset", "digits", "--epochs", "4", "--seed", "3", "--out",
                 str(path), "-q"]) == 0
    return path


# Board -> (engine, dataflow fits?) for the digits topology.
DIGITS_CHOICE = {
    "icebreaker": ("overlay", False),
    "ulx3s-12f": ("overlay", True),
    "ulx3s-25f": ("dataflow", True),
    "ulx3s-45f": ("dataflow", True),
    "ulx3s-85f": ("dataflow", True),
}


@pytest.mark.parametrize("board", sorted(DIGITS_CHOICE))
def test_digits_choice_per_board(digits, board):
    model = load_artifact(digits)
    b = find_board(board)
    choice = choose_engine(model, b)
    engine, df_fits = DIGITS_CHOICE[board]
    print(f"[{board}] {choice.reason}")
    assert choice.engine == engine
    df, ov = choice.candidates["dataflow"], choice.candidates["overlay"]
    assert df["fits"] is df_fits and ov["fits"] is True
    assert getattr(choice.plan, "engine", "dataflow") == engine
    # The candidates are the plans the planner and the overlay compiler give on their own.
    if df_fits:
        plan, _ = plan_for_device(model, b.device, link_kw=b.link_kw(model))
        assert df["cycles_per_image"] == plan.predicted_cycles_per_image
        assert df["dsp"] <= b.dsp_blocks
    else:
        assert "SB_MAC16 of 8" in df["why"]
    if b.family == "ice40":
        # digits fits the block-RAM tables, so no weight store (its copies would cost 724
        # cycles/image: 5,904 instead of 5,180)
        cfg = OverlayConfig(lanes=8, requant_units=1, primitives="ice40", channel_rows=256,
                            gather_rows=256, max_passes=8)
    else:
        # ECP5: the default 16 lanes / 2 requant units; feature-map banks of block RAM, 4096
        # words on the 12F (4 x 2 DP16KD; 16384 would take 32 of its 32), 16384 above.
        cfg = OverlayConfig(fm_words=4096 if board == "ulx3s-12f" else 16384)
    assert ov["fm_words"] == cfg.fm_words and ov["lanes"] == cfg.lanes
    assert ov["cycles_per_image"] == compile_overlay(model, cfg).predicted_cycles_per_image
    assert ov["dsp"] <= b.dsp_blocks
    # Block RAMs of the part (iCE40 EBR, ECP5 DP16KD; the data sheets' counts).
    ram = {"icebreaker": 30, "ulx3s-12f": 32, "ulx3s-25f": 56, "ulx3s-45f": 108,
           "ulx3s-85f": 208}[board]
    assert 0 < ov["ram_blocks"] <= ram
    # The chosen engine is the faster of those that fit.
    fitting = [c["cycles_per_image"] for c in (df, ov) if c["fits"]]
    assert choice.plan.predicted_cycles_per_image == min(fitting)
    assert choice.reason.endswith(f": {engine}")


def test_build_auto_default_on_icebreaker(digits, tmp_path, capsys):
    """``shiftacc build out/digits.npz --board icebreaker`` (no --engine) builds the overlay;
    the report says which engine and why. Files only (no tool run)."""
    out, js = tmp_path / "ice", tmp_path / "ice.json"
    assert main(["build", str(digits), "--board", "icebreaker", "--out", str(out),
                 "--no-bitstream", "--json", str(js)]) == 0
    cap = capsys.readouterr()
    assert "[build] engine: overlay (dataflow needs 11 SB_MAC16 of 8" in cap.err
    assert "  engine overlay: dataflow needs 11 SB_MAC16 of 8" in cap.out  # with -q too
    rep = json.loads(js.read_text())
    assert rep["engine"] == "overlay" and rep["engine_reason"].endswith(": overlay")
    assert rep["engine_candidates"]["dataflow"]["fits"] is False
    # The candidates' cycles are the engine's own; the report's are behind the iCEBreaker's
    # 2:1 link (LOAD at the link's rate: hw/overlay_timing.image_cycles(plan, link_ratio=2)).
    single = rep["engine_candidates"]["overlay"]["cycles_per_image"]
    period = single + int(np.prod(load_artifact(digits).input_shape)) - 1
    assert rep["link_clock_ratio"] == 2 and rep["cycles_per_image"] == period + (period & 1)
    assert rep["dsp_planned"] == 6 and rep["multipliers"] == 10
    assert "SB_SPRAM256KA" in (out / "shiftacc.il").read_text()


def test_build_forced_engines(digits, tmp_path, capsys):
    """``--engine dataflow`` still forces the dataflow engine: refused on the UP5K (exit 2,
    before anything is written); ``--config`` under auto means dataflow too."""
    out = tmp_path / "o"
    assert main(["build", str(digits), "--board", "icebreaker", "--engine", "dataflow",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "iCE40UP5K" in err and "SB_MAC16" in err
    assert not (out / "shiftacc.il").exists()
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"max_multipliers": 6}))
    tiny = tmp_path / "tiny.npz"  # small, so that its dataflow design elaborates quickly
    save_artifact(tiny, random_model(np.random.default_rng(1), size=(4, 4), blocks=1,
                                     max_width=5))
    assert main(["build", str(tiny), "--board", "ulx3s-12f", "--config", str(cfg),
                 "--out", str(tmp_path / "df"), "--no-bitstream", "--json",
                 str(tmp_path / "df.json")]) == 0
    rep = json.loads((tmp_path / "df.json").read_text())
    assert rep["engine"] == "dataflow" and "--config" in rep["engine_reason"]
    assert "engine_candidates" not in rep  # nothing was compared
    assert main(["build", str(digits), "--board", "ulx3s-12f", "--config", str(cfg),
                 "--lanes", "8", "--out", str(tmp_path / "x"), "--no-bitstream"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_engine_defaults():
    """``build`` defaults to auto; generate keeps dataflow; sim and serve leave it open (None:
    the build's choice with --board, else dataflow); none of the three takes auto."""
    parser = build_parser()
    assert parser.parse_args(["build", "m.npz", "--board", "icebreaker"]).engine == "auto"
    assert parser.parse_args(["generate", "m.npz", "--out", "x"]).engine == "dataflow"
    for cmd in ("sim", "serve"):
        assert parser.parse_args([cmd, "m.npz"]).engine is None, cmd
    for cmd in ("generate", "sim", "serve"):
        extra = ["--out", "x"] if cmd == "generate" else []
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "m.npz", "--engine", "auto"] + extra)


def test_sim_and_serve_take_the_build_choice_with_board(digits):
    """``sim``/``serve --board B`` without --engine simulate the engine ``build --board B``
    places (digits: the overlay on the iCEBreaker and the 12F, dataflow on the 85F); without
    --board, dataflow; a given --engine stays."""
    from shiftacc.sw.cli_hw import resolve_engine
    parser = build_parser()
    for cmd in ("sim", "serve"):
        for board in ("icebreaker", "ulx3s-12f", "ulx3s-85f"):
            args = parser.parse_args([cmd, str(digits), "--board", board])
            assert resolve_engine(args) == DIGITS_CHOICE[board][0] == args.engine, (cmd, board)
        assert resolve_engine(parser.parse_args([cmd, str(digits)])) == "dataflow"
        args = parser.parse_args([cmd, str(digits), "--board", "icebreaker", "--engine",
                                  "dataflow"])
        assert resolve_engine(args) == "dataflow"
        args = parser.parse_args([cmd, str(digits), "--board", "ulx3s-85f", "--lanes", "8"])
        assert resolve_engine(args) == "overlay"


def test_large_maps_dataflow_only_or_neither(seed):
    """Feature maps beyond every overlay config (128x128 maps of >= 3 channels: 128*128*3/2
    words in each of a buffer's two banks, more than 16384) leave the dataflow engine on a
    large part, and neither engine on the UP5K (refused in words naming both)."""
    rng = np.random.default_rng(seed)
    width = int(rng.integers(3, 9))
    model = random_model(rng, size=(128, 128), blocks=1, max_width=width, act_bits=8,
                         weight_bits=8)
    with pytest.raises(OverlayFitError):  # the largest overlay config does not take it
        compile_overlay(model, OverlayConfig(fm_words=16384))
    choice = choose_engine(model, find_board("ulx3s-85f"))
    assert choice.engine == "dataflow"
    assert choice.candidates["overlay"]["fits"] is False
    assert "does not fit the overlay engine" in choice.candidates["overlay"]["why"]
    assert choice.reason.startswith("overlay: the model does not fit")
    with pytest.raises(UsageError) as e:
        choose_engine(model, find_board("icebreaker"))
    msg = str(e.value)
    assert "fits neither engine on icebreaker (iCE40UP5K)" in msg
    assert "dataflow needs" in msg and "overlay: the model does not fit" in msg


def test_overlay_sized_to_ecp5_ram(digits):
    """On the ECP5-12F the forced overlay takes the same block-RAM feature maps as auto
    (4096 words: 16384 would need 4 x 8 of the 32 DP16KD); an explicit fm_words stays."""
    from types import SimpleNamespace

    from shiftacc.sw.cli_build import _overlay_plan
    model = load_artifact(digits)
    b = find_board("ulx3s-12f")
    quiet = lambda *a, **k: None  # noqa: E731
    args = SimpleNamespace(overlay_config=None, lanes=None, requant_units=None)
    assert _overlay_plan(args, model, b, quiet).config.fm_words == 4096
    args = SimpleNamespace(overlay_config='{"fm_words": 8192}', lanes=None, requant_units=None)
    assert _overlay_plan(args, model, b, quiet).config.fm_words == 8192
    b25 = find_board("ulx3s-25f")
    args = SimpleNamespace(overlay_config=None, lanes=None, requant_units=None)
    assert _overlay_plan(args, model, b25, quiet).config.fm_words == 16384


def test_overlay_tables_raised_for_a_wide_model(seed):
    """On a block-RAM part the overlay's tables grow to what the model needs (next power of
    two) when the defaults (512 weight rows, 512 channel and gather entries) are too small;
    the iCE40 config keeps its tables (the weight store holds the network's) and refuses a
    model past the store in words."""
    from types import SimpleNamespace

    from shiftacc.sw.cli_build import _overlay_plan
    rng = np.random.default_rng(seed)
    model = random_model(rng, size=(8, 8), blocks=4, max_width=96, width_multiple=32,
                         act_bits=8, weight_bits=8)
    # What the model needs, from the compiler with tables larger than any need.
    need = compile_overlay(model, OverlayConfig(weight_rows=1 << 14, channel_rows=1 << 14,
                                                gather_rows=1 << 14)).memories_used()
    rows = need["weights"][0]
    print(f"[wide] needs {need}")
    quiet = lambda *a, **k: None  # noqa: E731
    args = SimpleNamespace(overlay_config=None, lanes=None, requant_units=None)
    plan = _overlay_plan(args, model, find_board("ulx3s-85f"), quiet)
    want = 512
    while want < rows:
        want *= 2
    assert plan.config.weight_rows == want
    assert plan.config.channel_rows == max(512, 1 << (need["channels"][0] - 1).bit_length())
    # The iCE40 config keeps its tables (caches of a group's or pass's entries) and holds
    # the network's in the SPRAMs' weight store: 2048 weight rows, 1024 channel entries.
    need8 = compile_overlay(model, OverlayConfig(lanes=8, weight_rows=1 << 14,
                                                 channel_rows=1 << 14, gather_rows=1 << 14)
                            ).memories_used()
    if need8["weights"][0] > 2048:
        with pytest.raises(UsageError, match="weight rows .* over weight_store // 2 = 2048"):
            _overlay_plan(args, model, find_board("icebreaker"), quiet)
    elif need8["channels"][0] <= 1024:
        # The store only when the block-RAM tables (512 weight rows, 256 channel and gather
        # entries) do not hold the model: the copies cost cycles.
        tables = (need8["weights"][0] <= 512 and need8["channels"][0] <= 256
                  and need8["gather"][0] <= 256)
        ice = _overlay_plan(args, model, find_board("icebreaker"), quiet).config
        assert (ice.weight_store, ice.weight_rows, ice.channel_rows) == (
            (0, 512, 256) if tables else (4096, 256, 256))
    # Named in --overlay-config: kept (and refused when too small).
    args = SimpleNamespace(overlay_config='{"weight_rows": 256}', lanes=None,
                           requant_units=None)
    if rows > 256:
        with pytest.raises(UsageError, match="weight_rows = 256"):
            _overlay_plan(args, model, find_board("ulx3s-85f"), quiet)


def test_no_spram_no_overlay(digits):
    """An iCE40 without SPRAM (the iCEstick's HX1K, through --platform) cannot hold the
    overlay's feature maps: refused for both engines, the SPRAM named."""
    from shiftacc.boards.registry import board_from_platform
    board = board_from_platform("amaranth_boards.icestick:ICEStickPlatform")
    with pytest.raises(UsageError) as e:
        choose_engine(load_artifact(digits), board)
    msg = str(e.value)
    assert "fits neither engine on icestick (iCE40HX1K)" in msg
    assert "4 SB_SPRAM256KA of 0" in msg and "SB_MAC16 of 0" in msg
