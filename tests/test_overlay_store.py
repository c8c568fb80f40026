"""The overlay's weight store (``OverlayConfig.weight_store``, issue #10: ``mnist-s`` on the
UP5K): the weight rows live in the feature-map banks' upper addresses and each group's rows
are copied into the block-RAM weight cache before it runs. Logits == models.golden under
random stalls, and measured cycles per image == hw/overlay_timing.image_cycles (which counts
the copies), on random networks and the digits model."""

import numpy as np
import pytest

from shiftacc.hw.overlay import OverlayEngine
from shiftacc.hw.overlay_program import OverlayConfig, OverlayFitError, compile_overlay
from shiftacc.hw.overlay_timing import image_cycles
from shiftacc.models import golden
from shiftacc.models.netgen import random_model
from shiftacc.sim.streamtb import make_rng

from overlay_tb import check_logits, run_engine  # noqa: E402
from test_overlay_engine import decoys  # noqa: E402


def store_config(r=1, **kw):
    args = dict(lanes=8, requant_units=r, fm_words=2048, weight_rows=32, channel_rows=128,
                gather_rows=128, max_passes=8, weight_store=512)
    args.update(kw)
    return OverlayConfig(**args)


def _run(name, model, cfg, n_img, p_idle, p_stall, seed=None):
    rng, seed = make_rng(name, seed)
    nrng = np.random.default_rng(seed)
    plan = compile_overlay(model, cfg)
    for line in plan.summary():
        print(line)
    images = nrng.integers(0, 256, (n_img,) + model.input_shape)
    want = golden.run(model, images)
    got, first = run_engine(OverlayEngine(cfg), decoys(rng) + plan.param_words() + decoys(rng),
                            images, want.shape[1], rng, p_idle, p_stall)
    check_logits(got, want)
    return plan, first


def _random(name, size, blocks, act_bits):
    rng, seed = make_rng(name)
    nrng = np.random.default_rng(seed)
    return random_model(nrng, size=size, in_channels=int(nrng.integers(1, 3)), blocks=blocks,
                        act_bits=act_bits, max_width=20, classes=int(nrng.integers(2, 11)),
                        calib_images=16)


@pytest.mark.parametrize("case,r", [(0, 1), (1, 2), (2, 1)])
def test_store_random_nets_with_stalls(case, r):
    name = f"test_store_random_nets_with_stalls[{case}-{r}]"
    model = _random(name, ((5, 4), (6, 6), (8, 8))[case], 2, (8, 4, 8)[case])
    print([l.op for l in model.layers])
    _run(name, model, store_config(r), 3, 0.3, 0.5)


@pytest.mark.parametrize("r", [1, 2])
def test_store_cycles_match_the_model(r):
    """No stalls: the cycles between images' first beats == image_cycles (COPY included)."""
    name = f"test_store_cycles_match_the_model[{r}]"
    model = _random(name, (6, 6), 2, 8)
    plan, first = _run(name, model, store_config(r), 3, 0.0, 0.0)
    periods = np.diff(first).tolist()
    print(f"measured periods {periods}, model {image_cycles(plan)}")
    assert periods == [image_cycles(plan)] * len(periods)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits topology (preset digits-s), briefly trained here (no file outside the
    test): the store's copies depend on the topology, exactness on every weight."""
    from shiftacc.sw.cli import main
    path = tmp_path_factory.mktemp("store") / "digits.npz"
    assert main(["train", "--dataset", "digits", "--epochs", "4", "--seed", "3", "--out",
                 str(path), "-q"]) == 0
    return path


def test_store_digits_exact_and_cycles(digits):
    """The iCEBreaker model on a weight-store engine (generic banks of the UP5K's depth):
    golden logits, cycles == the model."""
    from shiftacc.models.artifact import load_artifact as load
    model = load(digits)
    cfg = store_config(fm_words=16384, weight_store=8192, weight_rows=256, channel_rows=256,
                       gather_rows=256)
    plan, first = _run("test_store_digits_exact_and_cycles", model, cfg, 2, 0.0, 0.0)
    assert np.diff(first).tolist() == [image_cycles(plan)]


def _one_channel_convs(name):
    """A network whose first conv and classifier each read ONE input channel (``cin = 1``:
    a COPY phase of one weight row and one gather entry, whose end is its first cycle),
    which random_model never draws (its stem replicates the image to 3+ channels): a random
    model with the replicate dropped, the block conv cut to one output channel."""
    from shiftacc.models.artifact import to_manifest_and_arrays, validate
    rng, seed = make_rng(name)
    nrng = np.random.default_rng(seed)
    base = random_model(nrng, size=(6, 5), in_channels=1, blocks=1, act_bits=8, max_width=9,
                        classes=int(nrng.integers(2, 6)), calib_images=16)
    ops = [l.op for l in base.layers]
    assert ops[:3] == ["replicate", "shift", "conv1x1"] and ops[-1] == "conv1x1", ops
    layers = list(base.layers[1:])                 # shift -> conv(cin = 1) -> ...
    layers[0].shifts = layers[0].shifts[:1]
    layers[1].weight = layers[1].weight[:, :1]
    convs = [i for i, l in enumerate(layers) if l.op == "conv1x1"]
    mid = layers[convs[1]]                         # the block's conv: one output channel
    mid.weight, mid.bias = mid.weight[:1], mid.bias[:1]
    mid.m, mid.sh = mid.m[:1], mid.sh[:1]
    for l in layers[convs[1] + 1:]:
        if l.op == "shift":
            l.shifts = l.shifts[:1]
    layers[-1].weight = layers[-1].weight[:, :1]   # the classifier reads one channel
    base.layers = layers
    manifest, arrays = to_manifest_and_arrays(base)
    return validate(manifest, arrays), seed


@pytest.mark.parametrize("stalls", [(0.0, 0.0), (0.3, 0.5)])
def test_store_one_input_channel(stalls):
    """``cin = 1`` passes on a store engine: golden logits (under stalls too) and, without
    stalls, cycles == the model."""
    name = f"test_store_one_input_channel[{stalls[0]}]"
    model, seed = _one_channel_convs(name)
    plan = compile_overlay(model, store_config())
    cins = [p["cin"] for p in plan.passes]
    print(f"pass cin {cins}")
    assert cins[0] == 1 and cins[-1] == 1, cins
    plan, first = _run(name, model, store_config(), 3, *stalls, seed=seed)
    if stalls == (0.0, 0.0):
        assert np.diff(first).tolist() == [image_cycles(plan)] * 2


def test_store_config_and_fit_errors():
    with pytest.raises(ValueError, match="weight_store needs lanes = 8"):
        OverlayConfig(lanes=4, fm_words=1024, weight_store=512)
    with pytest.raises(ValueError, match="power of two"):
        OverlayConfig(lanes=8, fm_words=1024, weight_store=768, channel_rows=128)
    with pytest.raises(ValueError, match="power of two"):
        OverlayConfig(lanes=8, fm_words=1024, weight_store=1024, channel_rows=128)
    assert "weight_store" not in OverlayConfig().to_json()
    assert OverlayConfig.from_json(store_config().to_json()) == store_config()
    model = _random("test_store_config_and_fit_errors", (6, 6), 2, 8)
    cin = max(p["cin"] for p in compile_overlay(model, store_config()).passes)
    with pytest.raises(OverlayFitError, match="copy's table, weight_rows"):
        compile_overlay(model, store_config(weight_rows=cin - 1))
    with pytest.raises(OverlayFitError, match="copy's table, gather_rows"):
        compile_overlay(model, store_config(gather_rows=cin - 1))
    with pytest.raises(ValueError, match="channel_rows must be a power of two"):
        store_config(channel_rows=96)


@pytest.mark.parametrize("kind", ["WEIGHT", "BIAS"])
def test_store_word_just_before_the_image(kind):
    """A store parameter word (WEIGHT, or a channel entry's BIAS) given in the last
    parameter beat, with the image's first beat in the very next cycle: it reaches its bank
    through two register stages and the write request's, so it holds the image back
    (``st_busy``) until written; the image must run with it."""
    from shiftacc.hw.params import ParamKind, decode_word
    from overlay_tb import run_with_word_moved_last
    name = f"test_store_word_just_before_the_image[{kind}]"
    rng, seed = make_rng(name)
    nrng = np.random.default_rng(seed)
    cfg = store_config()
    nets = []
    for size in ((5, 4), (4, 6)):
        model = random_model(nrng, size=size, in_channels=1, blocks=1, act_bits=8,
                             max_width=9, classes=4, calib_images=16)
        images = nrng.integers(0, 256, (2,) + model.input_shape)
        nets.append((compile_overlay(model, cfg).param_words(), images,
                     golden.run(model, images)))
    k = getattr(ParamKind, kind)
    first = {decode_word(w)[1:4]: decode_word(w)[4] for w in nets[0][0]}
    words = nets[1][0]
    late = [w for w in words if decode_word(w)[1] == k
            and first.get(decode_word(w)[1:4]) != decode_word(w)[4]]
    assert late, f"the two networks' {kind} words are equal"
    run_with_word_moved_last(OverlayEngine(cfg), nets, late[-1], decoys(rng, 40), rng)
