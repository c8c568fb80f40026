"""Artifact version 2 (attention at inference): the three ops' arithmetic, files and checks.

The reference here is a third implementation, plain Python loops over ints written from the
format document's formulas (docs/format.md), against which both the NumPy golden model and
the PyTorch integer evaluation are checked on small random cases; then golden == int_eval on
random whole networks with every v2 op at random positions.
"""

import json

import numpy as np
import pytest

from shiftacc.models import golden
from shiftacc.models.artifact import (ArtifactError, Layer, Model, load_artifact,
                                      save_artifact, to_manifest_and_arrays, validate)
from shiftacc.models.int_eval import run_int
from shiftacc.models.netgen import (ATTENTION_OPS, channel_attention_layer,
                                    dynamic_conv_layer, random_model, spatial_attention_layer)
from shiftacc.models.ops import OPS


# --- the reference: loops over Python ints, one formula line per line of the format ----------

def rq(v, m, sh):
    return (v * m + (1 << (sh - 1))) >> sh


def clamp(v, lo, hi):
    return min(max(v, lo), hi)


def pool_ref(x, m, sh, act_bits, step=1):
    h, w, c = len(x), len(x[0]), len(x[0][0])
    return [clamp(rq(sum(x[y][xx][ch] for y in range(0, h, step) for xx in range(0, w, step)),
                     m, sh), 0, (1 << act_bits) - 1) for ch in range(c)]


def eca_ref(x, L, act_bits):
    c = len(x[0][0])
    p = pool_ref(x, L.pool_m, L.pool_sh, act_bits)
    k = len(L.kernel)
    a = []
    for ch in range(c):
        z = L.bias
        for j in range(k):
            src = ch + j - (k - 1) // 2
            z += int(L.kernel[j]) * (p[src] if 0 <= src < c else 0)
        a.append(int(L.lut[clamp(rq(z, L.z_m, L.z_sh), -128, 127) + 128]))
    return [[[(v * a[ch] + 128) >> 8 for ch, v in enumerate(px)] for px in row] for row in x]


def sam_ref(x, L, act_bits):
    c = len(x[0][0])
    p = pool_ref(x, L.pool_m, L.pool_sh, act_bits)
    u = [clamp(rq(int(L.ctx_bias[r]) + sum(int(L.ctx_weight[r][j]) * p[j] for j in range(c)),
                  L.ctx_m, L.ctx_sh), -128, 127) for r in range(c)]
    out = []
    for row in x:
        orow = []
        for px in row:
            z = L.bias + sum(u[ch] * v for ch, v in enumerate(px))
            s = int(L.lut[clamp(rq(z, L.z_m, L.z_sh), -128, 127) + 128])
            orow.append([(v * s + 128) >> 8 for v in px])
        out.append(orow)
    return out


def dyn_ref(x, L, act_bits):
    kn, cout, cin = L.weight.shape
    p = pool_ref(x, L.att_pool_m, L.att_pool_sh, act_bits, L.att_step)
    r = [int(L.att_bias[k]) + sum(int(L.att_weight[k][c]) * p[c] for c in range(cin))
         for k in range(kn)]
    e = [int(L.exp_lut[clamp(rq(rk - max(r), L.att_m, L.att_sh), -255, 0) + 255]) for rk in r]
    pi = [ek * 256 // sum(e) for ek in e]
    W = [[(sum(pi[k] * int(L.weight[k][o][i]) for k in range(kn)) + 128) >> 8
          for i in range(cin)] for o in range(cout)]
    B = [(sum(pi[k] * int(L.bias[k][o]) for k in range(kn)) + 128) >> 8 for o in range(cout)]
    s = L.stride
    out = []
    for y in range(0, len(x), s):
        orow = []
        for xx in range(0, len(x[0]), s):
            px = x[y][xx]
            accs = [B[o] + sum(W[o][i] * px[i] for i in range(cin)) for o in range(cout)]
            if L.m is not None:
                accs = [clamp(rq(a, int(L.m[o]), int(L.sh[o])), 0, (1 << act_bits) - 1)
                        for o, a in enumerate(accs)]
            orow.append(accs)
        out.append(orow)
    return out


REF = {"channel_attention": eca_ref, "spatial_attention": sam_ref, "dynamic_conv1x1": dyn_ref}


def _random_layer(op, rng, x, act_bits, wmax):
    if op == "channel_attention":
        return channel_attention_layer(rng, x, act_bits, wmax)
    if op == "spatial_attention":
        return spatial_attention_layer(rng, x, act_bits, wmax)
    return dynamic_conv_layer(rng, x, act_bits, wmax, int(rng.integers(1, 9)),
                              stride=int(rng.integers(1, 3)), last=bool(rng.integers(0, 2)))


@pytest.mark.parametrize("op", ATTENTION_OPS)
def test_op_equals_the_formulas(op, np_rng):
    """golden and int_eval equal the loop reference on random layers, shapes and tables."""
    import torch
    for _ in range(12):
        h, w, c = (int(v) for v in np_rng.integers(1, 7, 3))
        act_bits = int(np_rng.choice([4, 8]))
        x = np_rng.integers(0, 1 << act_bits, (3, h, w, c)).astype(np.int64)
        layer = _random_layer(op, np_rng, x, act_bits, int(np_rng.choice([1, 7, 127])))
        want = np.array([REF[op](img.tolist(), layer, act_bits) for img in x])
        got = golden.run_layer(layer, x, act_bits)
        assert np.array_equal(got, want), f"golden {op} differs on {h}x{w}x{c}"
        # The float64 carrier that golden.run uses gives the same integers.
        assert np.array_equal(golden.run_layer(layer, x.astype(np.float64), act_bits), want)
        t = OPS[op].torch(layer, torch.as_tensor(x).permute(0, 3, 1, 2).contiguous(), act_bits)
        assert np.array_equal(t.permute(0, 2, 3, 1).numpy(), want), f"int_eval {op} differs"


def test_hand_computed_eca():
    """One ECA case worked by hand: 1x2 map, 3 channels, k = 3."""
    L = Layer("channel_attention", pool_m=1, pool_sh=1, bias=1, z_m=1, z_sh=1,
              kernel=np.array([1, 2, -1], np.int8), lut=np.arange(256).astype(np.uint16))
    x = np.array([[[[10, 20, 30], [2, 4, 6]]]])
    # S = [12, 24, 36]; p = rq(S, 1, 1) = [6, 12, 18]
    # z = 1 + [0*1 + 6*2 - 12, 6 + 24 - 18, 12 + 36 - 0] = [1, 13, 49]
    # i = rq(z, 1, 1) = [1, 7, 25]; a = lut[i + 128] = [129, 135, 153]
    want = [[[[(10 * 129 + 128) >> 8, (20 * 135 + 128) >> 8, (30 * 153 + 128) >> 8],
              [(2 * 129 + 128) >> 8, (4 * 135 + 128) >> 8, (6 * 153 + 128) >> 8]]]]
    assert golden.run_layer(L, x, 8).tolist() == want == [[[[5, 11, 18], [1, 2, 4]]]]


def test_hand_computed_softmax():
    """The dynamic conv's integer softmax, worked by hand: two kernels."""
    L = Layer("dynamic_conv1x1", stride=1,
              weight=np.array([[[100]], [[-100]]], np.int8), bias=np.array([[0], [512]]),
              att_step=1, att_pool_m=1, att_pool_sh=1, att_m=1, att_sh=1,
              att_weight=np.array([[1], [0]], np.int8), att_bias=np.array([0, 10]),
              exp_lut=np.arange(1, 257).astype(np.uint16))
    x = np.array([[[[4]]]])
    # p = rq(4, 1, 1) = 2; r = [2, 10]; d = [-8, 0]; rq(d, 1, 1) = [-4, 0]
    # e = exp_lut[[251, 255]] = [252, 256]; pi = [64512 // 508, 65536 // 508] = [126, 129]
    # W = (126*100 - 129*100 + 128) >> 8 = (-172) >> 8 = -1; B = (129*512 + 128) >> 8 = 258
    assert golden.dynamic_attention(x, L, 8).tolist() == [[126, 129]]
    assert golden.run_layer(L, x, 8).tolist() == [[[[258 - 4]]]]


def test_random_v2_networks_golden_equals_int_eval(np_rng):
    """Level 1 of the pyramid on random networks with every v2 op at random positions."""
    for n in range(25):
        size = tuple(int(v) for v in np_rng.integers(3, 10, 2))
        ops = tuple(op for op in ATTENTION_OPS if np_rng.random() < 0.7) or ATTENTION_OPS[:1]
        model = random_model(np_rng, size=size, in_channels=int(np_rng.integers(1, 4)),
                             attention=ops)
        assert {layer.op for layer in model.layers} >= set(ops)
        x = np_rng.integers(0, 256, (40,) + model.input_shape)
        assert np.array_equal(golden.run(model, x), run_int(model, x)), f"network {n}"


# --- files ---------------------------------------------------------------------------------

def test_version_written_is_the_lowest_that_holds_the_ops(tmp_path, np_rng):
    v1 = random_model(np_rng)
    v2 = random_model(np_rng, attention=ATTENTION_OPS)
    save_artifact(tmp_path / "v1.npz", v1)
    save_artifact(tmp_path / "v2.npz", v2)
    assert load_artifact(tmp_path / "v1.npz").manifest["version"] == 1
    back = load_artifact(tmp_path / "v2.npz")
    assert back.manifest["version"] == 2
    x = np_rng.integers(0, 256, (20,) + v2.input_shape)
    assert np.array_equal(golden.run(back, x), golden.run(v2, x))
    for a, b in zip(back.layers, v2.layers):
        assert a.op == b.op
        for key in OPS[a.op].keys:
            va, vb = getattr(a, key), getattr(b, key)
            assert np.array_equal(np.asarray(va), np.asarray(vb)), (a.op, key)


def _v2_files(np_rng):
    model = random_model(np_rng, attention=ATTENTION_OPS)
    manifest, arrays = to_manifest_and_arrays(model)
    return model, manifest, arrays


def _index(manifest, op):
    return next(i for i, ml in enumerate(manifest["layers"]) if ml["op"] == op)


def _broken(np_rng, op, edit):
    _, manifest, arrays = _v2_files(np_rng)
    i = _index(manifest, op)
    edit(manifest, manifest["layers"][i], arrays, i)
    with pytest.raises(ArtifactError) as exc:
        validate(json.loads(json.dumps(manifest)), arrays)
    return i, str(exc.value)


def test_version_1_file_with_a_v2_op_is_refused(np_rng):
    _, manifest, arrays = _v2_files(np_rng)
    manifest["version"] = 1
    i, op = next((i, ml["op"]) for i, ml in enumerate(manifest["layers"])
                 if ml["op"] in ATTENTION_OPS)  # the first one is named
    with pytest.raises(ArtifactError) as exc:
        validate(manifest, arrays)
    assert str(exc.value) == (f"layer {i} ({op}): this op needs format version 2, but the "
                              f"file says version 1")


@pytest.mark.parametrize("case", ["even_kernel", "lut_257", "exp_lut_zero", "z_overflow",
                                  "ctx_shape", "kernels_mismatch", "m_on_classifier_missing",
                                  "att_weight_bits", "pool_m_zero", "stray_key"])
def test_bad_v2_layers_are_refused_in_words(case, np_rng):
    def set_array(arrays, ml, key, value):
        arrays[ml[key]] = value

    edits = {
        "even_kernel": ("channel_attention", lambda man, ml, a, i: set_array(
            a, ml, "kernel", np.array([1, 2], np.int8)), "odd number in [1, 9]"),
        "lut_257": ("spatial_attention", lambda man, ml, a, i: a[ml["lut"]].__setitem__(
            7, 257), "lut entries must be in [0, 256]"),
        "exp_lut_zero": ("dynamic_conv1x1", lambda man, ml, a, i: a[ml["exp_lut"]].__setitem__(
            255, 0), "exp_lut[255]"),
        "z_overflow": ("spatial_attention", lambda man, ml, a, i: ml.__setitem__(
            "bias", 2 ** 31 - 1), "z can reach"),
        "ctx_shape": ("spatial_attention", lambda man, ml, a, i: set_array(
            a, ml, "ctx_weight", a[ml["ctx_weight"]][:, :-1].copy()), "[C, C]"),
        "kernels_mismatch": ("dynamic_conv1x1", lambda man, ml, a, i: ml.__setitem__(
            "kernels", ml["kernels"] + 1), "[kernels, cout, cin]"),
        "m_on_classifier_missing": ("dynamic_conv1x1", None, None),
        "att_weight_bits": ("dynamic_conv1x1", lambda man, ml, a, i: (
            man.__setitem__("weight_bits", 2), a[ml["att_weight"]].__setitem__((0, 0), 5)),
            "outside the 2-bit range"),
        "pool_m_zero": ("channel_attention", lambda man, ml, a, i: ml.__setitem__(
            "pool_m", 0), "'pool_m'"),
        "stray_key": ("channel_attention", lambda man, ml, a, i: ml.__setitem__(
            "kernal", "x"), "unknown key 'kernal'"),
    }
    op, edit, want = edits[case]
    if case == "m_on_classifier_missing":
        # A dynamic conv that is not the classifier needs m/sh.
        for _ in range(40):
            model, manifest, arrays = _v2_files(np_rng)
            i = _index(manifest, op)
            if i != len(manifest["layers"]) - 1:
                break
        ml = manifest["layers"][i]
        del arrays[ml.pop("m")], arrays[ml.pop("sh")]
        with pytest.raises(ArtifactError) as exc:
            validate(manifest, arrays)
        assert "'m'" in str(exc.value) or "m/sh" in str(exc.value) or "'sh'" in str(exc.value)
        return
    if case == "att_weight_bits":
        # Every weight must fit 2 bits then; only att_weight is checked to name the field.
        _, manifest, arrays = _v2_files(np_rng)
        i = _index(manifest, op)
        manifest["weight_bits"] = 8
        arrays[manifest["layers"][i]["att_weight"]][0, 0] = 127
        manifest["weight_bits"] = 7
        for ml in manifest["layers"][:i]:
            for key in ("weight", "kernel", "ctx_weight", "att_weight"):
                if key in ml:
                    arrays[ml[key]] = np.clip(arrays[ml[key]], -64, 63).astype(np.int8)
        for key in ("weight",):
            arrays[manifest["layers"][i][key]] = np.clip(
                arrays[manifest["layers"][i][key]], -64, 63).astype(np.int8)
        with pytest.raises(ArtifactError) as exc:
            validate(manifest, arrays)
        assert f"layer {i} (dynamic_conv1x1): att_weight spans" in str(exc.value)
        assert "outside the 7-bit range" in str(exc.value)
        return
    i, msg = _broken(np_rng, op, edit)
    assert want in msg, msg
    assert msg.startswith(f"layer {i} ({op})") or msg.startswith("manifest: layer"), msg


def test_classifier_may_be_dynamic(np_rng):
    rng = np_rng
    for _ in range(60):
        model = random_model(rng, attention=("dynamic_conv1x1",))
        if model.layers[-1].op == "dynamic_conv1x1":
            break
    else:
        pytest.fail("no random network with a dynamic classifier in 60 draws")
    last = model.layers[-1]
    assert last.m is None and not last.requant
    x = rng.integers(0, 256, (30,) + model.input_shape)
    assert golden.run(model, x).shape == (30, len(model.classes))
    assert np.array_equal(golden.run(model, x), run_int(model, x))


def test_info_counts_attention(np_rng):
    model = random_model(np_rng, attention=ATTENTION_OPS)
    shapes = model.shapes()
    for i, layer in enumerate(model.layers):
        op = OPS[layer.op]
        if layer.op == "channel_attention":
            h, w, c = shapes[i + 1]
            assert op.macs(layer, shapes[i + 1]) == c * len(layer.kernel) + h * w * c
            assert op.params(layer) == len(layer.kernel) + 256 + 5
        if layer.op == "spatial_attention":
            c = shapes[i][2]
            assert op.params(layer) == c * c + c + 256 + 7
        if layer.op == "dynamic_conv1x1":
            kn, co, ci = layer.weight.shape
            ho, wo, _ = shapes[i + 1]
            assert op.macs(layer, shapes[i + 1]) == kn * ci + kn * co * (ci + 1) + ho * wo * ci * co


def test_unknown_attention_op_is_refused(np_rng):
    with pytest.raises(ValueError, match="unknown attention op"):
        random_model(np_rng, attention=("squeeze_excite",))


def test_model_class_is_unchanged_for_v1(np_rng):
    """A version-1 network reads and writes exactly as before (version 1)."""
    model = random_model(np_rng)
    manifest, arrays = to_manifest_and_arrays(model)
    assert manifest["version"] == 1
    assert isinstance(validate(manifest, arrays), Model)
