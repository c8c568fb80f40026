"""Training, QAT, export and integer evaluation (models/{nets,quant,int_eval,train}.py).

Level 1 of the verification pyramid: the NumPy golden model equals the independent PyTorch
integer evaluation, logit for logit, for every selection method.
"""

import numpy as np
import pytest
import torch
from torch import nn

from shiftacc.models import golden
from shiftacc.models.artifact import (ArtifactError, load_artifact, save_artifact,
                                      to_manifest_and_arrays)
from shiftacc.models.data import load_split
from shiftacc.models.int_eval import roll_shift, run_int
from shiftacc.models.nets import PRESETS, ShiftNet, make_net, to_input
from shiftacc.models.quant import ExportError, export, requant_constants, set_observe, set_qat
from shiftacc.models.shift import METHODS, shift_nchw
from shiftacc.models.train import train_model
from shiftacc.sim.streamtb import make_rng


def np_rng(name):
    return np.random.default_rng(make_rng(name)[1])


@pytest.fixture(scope="module", params=METHODS)
def trained(request):
    """Each method trained briefly (the test is about exactness, not accuracy)."""
    torch.set_num_threads(2)
    net, model = train_model(method=request.param, epochs=4, seed=3, progress=False)
    return request.param, net, model


def test_golden_equals_int_eval(trained):
    method, net, model = trained
    x, y = load_split("digits", "test")
    g, i = golden.run(model, x), run_int(model, x)
    assert g.shape == (360, 10)
    assert np.array_equal(g, i), f"{method}: {(g != i).sum()} mismatching logits"
    rng = np_rng(f"random-images-{method}")
    r = rng.integers(0, 256, size=(1000, 8, 8, 1)).astype(np.uint8)
    g, i = golden.run(model, r), run_int(model, r)
    assert np.array_equal(g, i), f"{method}: {(g != i).sum()} mismatching logits (random)"


def test_artifact_roundtrip_and_provenance(trained, tmp_path):
    method, net, model = trained
    p = tmp_path / "m.npz"
    save_artifact(p, model)
    back = load_artifact(p)
    x, _ = load_split("digits", "test")
    assert np.array_equal(golden.run(back, x), golden.run(model, x))
    prov = back.provenance
    assert prov["dataset"] == "digits" and prov["method"] == method
    assert 0 <= prov["int_accuracy"] <= 1 and 0 <= prov["float_accuracy"] <= 1
    assert ("zero_shift_fraction" in prov) == (method == "sparse")
    # The artifact is what DESIGN.md §1 says: replicate(9) + shift stem, gap, raw classifier.
    ops = [layer.op for layer in back.layers]
    assert ops[:3] == ["replicate", "shift", "conv1x1"] and ops[-2:] == ["gap", "conv1x1"]
    assert back.layers[-1].m is None


def test_int_eval_tracks_qat_network(trained):
    # The exported integers compute what the fake-quantized network computes: top-1
    # predictions agree on (nearly) every test image; only round-off ties may differ.
    method, net, model = trained
    x, _ = load_split("digits", "test")
    set_qat(net, True)
    net.eval()
    with torch.no_grad():
        fq = net(to_input(x)).argmax(1).numpy()
    agree = (fq == run_int(model, x).argmax(1)).mean()
    assert agree >= 0.97, f"{method}: only {agree:.3f} agreement"


@pytest.mark.parametrize("trial", range(3))
def test_random_untrained_nets_export_exactly(trial):
    # Random topology, widths not multiples of anything, odd sizes, stride-2 and pooling.
    rng = np_rng(f"random-net-{trial}")
    torch.manual_seed(int(rng.integers(1 << 30)))
    h, w, c = int(rng.integers(5, 12)), int(rng.integers(5, 12)), int(rng.integers(1, 4))
    blocks = [(int(rng.integers(3, 20)), str(rng.choice(["none", "stride"]))) for _ in range(2)]
    blocks = [(k, None if d == "none" else d) for k, d in blocks]
    cfg = PRESETS["digits-s"].__class__(in_shape=(h, w, c), classes=int(rng.integers(2, 7)),
                                         stem=int(rng.integers(3, 17)), stem_down="pool",
                                         blocks=blocks, radius=int(rng.integers(1, 3)),
                                         act_bits=int(rng.choice([4, 8])),
                                         weight_bits=int(rng.integers(2, 9)))
    net = ShiftNet(cfg, "grouped")
    imgs = rng.integers(0, 256, size=(64, h, w, c)).astype(np.uint8)
    net.train()
    for _ in range(3):  # move BN statistics away from their initial values
        net(to_input(imgs))
    net.eval()
    set_observe(net, True)
    net(to_input(imgs))
    set_observe(net, False)
    set_qat(net, True)
    model = export(net)
    g, i = golden.run(model, imgs), run_int(model, imgs)
    assert np.array_equal(g, i)


def _calibrated(net):
    x, _ = load_split("digits", "test")
    net.eval()
    set_observe(net, True)
    with torch.no_grad():
        net(to_input(x[:64]))
    set_observe(net, False)
    return net


def test_export_refuses_residual():
    net = _calibrated(make_net("digits-s", "grouped", residual=True,
                               blocks=[(16, None), (16, "pool"), (48, None)]))
    with pytest.raises(ExportError, match=r"layer \d+ \(block0.residual\): residual add"):
        export(net)


def test_export_refuses_non_relu():
    net = _calibrated(make_net("digits-s", "grouped", act="gelu"))
    with pytest.raises(ExportError, match=r"\(stem.conv\): hidden activation 'gelu' is not ReLU"):
        export(net)
    assert isinstance(ExportError("x"), ArtifactError)


def test_export_refuses_soft_attention():
    net = _calibrated(make_net("digits-s", "sal"))
    with pytest.raises(ExportError,
                       match=r"\(block0.shift\): shift attention \(sal\) is still soft"):
        export(net)
    for sl in net.shift_layers():
        sl.harden()
    export(net)  # fine once hardened


def test_export_refuses_odd_op_and_uncalibrated():
    net = make_net("digits-s", "grouped")
    with pytest.raises(ExportError, match=r"\(stem.conv\): activation scale never calibrated"):
        export(net)
    net = _calibrated(make_net("digits-s", "grouped"))
    odd = nn.Identity()
    odd.label = "block0.dropout"
    net.body.insert(4, odd)
    with pytest.raises(ExportError, match=r"layer 4 \(block0.dropout\): module Identity has no "
                                          r"equivalent op"):
        export(net)


def test_requant_constants():
    rng = np_rng("requant")
    mult = np.exp(rng.uniform(np.log(1e-9), np.log(3e4), size=2000))
    m, sh = requant_constants(mult, "t")
    assert m.min() >= 1 and m.max() <= 65535 and sh.min() >= 1 and sh.max() <= 47
    big = mult > 2.0 ** -31  # enough precision: 16-bit m, error below half an LSB of m
    rel = np.abs(m * np.exp2(-sh.astype(float)) - mult) / mult
    assert rel[big].max() <= 2.0 ** -15
    with pytest.raises(ExportError, match="too large"):
        requant_constants(np.array([40000.0]), "layer 9 (x)")


def test_requant_constants_saturating_multiplier_is_exact():
    # A dead layer's collapsed output scale gives a multiplier beyond 16 bits; into a clamp
    # at out_max every multiplier >= out_max + 0.5 computes the same integers.
    rng = np_rng("requant-saturating")
    for out_max in (15, 255):
        mult = np.concatenate([np.exp(rng.uniform(np.log(out_max + 0.5), np.log(1e9), 50)),
                               [out_max + 0.5, 32767.75, 2.0e5]])
        m, sh = requant_constants(mult, "layer 5 (x)", out_max=out_max)
        assert m.max() <= 65535 and sh.min() >= 1
        acc = np.arange(-1000, 1001, dtype=np.int64)[:, None]
        ideal = np.clip(np.floor(acc * mult + 0.5), 0, out_max)
        assert np.array_equal(golden.requant(acc, m, sh, out_max.bit_length()), ideal)
    # Below the saturation point nothing changes, and a large multiplier still refuses there.
    assert np.array_equal(requant_constants(np.array([0.3]), "t", out_max=255),
                          requant_constants(np.array([0.3]), "t"))
    with pytest.raises(ExportError, match="too large"):
        requant_constants(np.array([40000.0]), "t", out_max=40000)


def test_int_eval_shift_is_design_convention():
    x = torch.arange(12).view(1, 1, 3, 4)
    for s in ([1, 0], [0, -1], [-1, 1], [0, 0]):
        assert torch.equal(roll_shift(x, [s]), shift_nchw(x, [s]))


def test_dropout_is_skipped_at_export():
    net = make_net("digits-s", "grouped", dropout=0.3)
    assert any(isinstance(m, nn.Dropout) for m in net.body)
    net = _calibrated(net)
    set_qat(net, True)
    model = export(net)
    assert [layer.op for layer in model.layers][-2:] == ["gap", "conv1x1"]
    x, _ = load_split("digits", "test")
    with torch.no_grad():
        fq = net(to_input(x)).argmax(1).numpy()
    assert (fq == run_int(model, x).argmax(1)).mean() >= 0.97


def _train_threads(threads, method):
    """Train briefly with ``threads`` torch CPU threads (restored after); float state + artifact."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        net, model = train_model(method=method, epochs=4, seed=5, batch=128, progress=False)
        assert torch.get_num_threads() == threads, "train_model must restore the thread count"
    finally:
        torch.set_num_threads(old)
    manifest, arrays = to_manifest_and_arrays(model)
    for key in ("train_seconds", "wall_seconds", "images_per_second"):
        manifest["provenance"].pop(key)  # timings: the one legitimate difference
    manifest["provenance"]["history"].pop("images_per_second")  # per-epoch timings too
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return manifest, arrays, state


@pytest.mark.parametrize("method", METHODS)
def test_training_independent_of_thread_count(method):
    # The foundation issue: 2 threads gave other weights (and accuracy) than 1. The float
    # network and every exported array must be bit for bit the same for any thread count.
    m1, a1, s1 = _train_threads(1, method)
    m2, a2, s2 = _train_threads(2, method)
    assert s1.keys() == s2.keys()
    differ = [k for k in s1 if not torch.equal(s1[k], s2[k])]
    assert not differ, f"{method}: float tensors differ between 1 and 2 threads: {differ}"
    assert a1.keys() == a2.keys()
    differ = [k for k in a1 if not np.array_equal(a1[k], a2[k])]
    assert not differ, f"{method}: artifact arrays differ between 1 and 2 threads: {differ}"
    assert m1 == m2
