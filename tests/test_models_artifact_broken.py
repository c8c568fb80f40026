"""models.artifact.load_artifact on broken artifacts: every message names the problem."""

import copy
import re
import io
import json

import numpy as np
import pytest

from shiftacc.models.artifact import ArtifactError, load_artifact


def good():
    """A small valid manifest + arrays (stem 3x3 as replicate/shift/conv, gap, classifier)."""
    rng = np.random.default_rng(0)
    manifest = {
        "format": "shiftacc-model", "version": 1, "name": "t",
        "input": {"height": 4, "width": 4, "channels": 1, "bits": 8},
        "act_bits": 8, "weight_bits": 8, "classes": ["a", "b", "c"],
        "layers": [
            {"op": "replicate", "factor": 9},
            {"op": "shift", "shifts": "l1.shifts"},
            {"op": "conv1x1", "stride": 1, "cin": 9, "cout": 5, "weight": "l2.weight",
             "bias": "l2.bias", "m": "l2.m", "sh": "l2.sh"},
            {"op": "maxpool2"},
            {"op": "gap", "m": 300, "sh": 12},
            {"op": "conv1x1", "stride": 1, "cin": 5, "cout": 3, "weight": "l5.weight",
             "bias": "l5.bias"},
        ]}
    arrays = {
        "l1.shifts": np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.int8),
        "l2.weight": rng.integers(-128, 128, (5, 9)).astype(np.int8),
        "l2.bias": rng.integers(-1000, 1000, 5).astype(np.int32),
        "l2.m": np.full(5, 1000, np.uint16), "l2.sh": np.full(5, 16, np.uint8),
        "l5.weight": rng.integers(-128, 128, (3, 5)).astype(np.int8),
        "l5.bias": np.zeros(3, np.int32),
    }
    return manifest, arrays


def write(path, manifest, arrays, raw_manifest=None):
    blob = raw_manifest if raw_manifest is not None else np.frombuffer(
        json.dumps(manifest).encode(), np.uint8)
    np.savez(path, manifest=blob, **arrays)
    return path


def test_good_artifact_loads(tmp_path):
    m, a = good()
    model = load_artifact(write(tmp_path / "ok.npz", m, a))
    assert [layer.op for layer in model.layers] == [x["op"] for x in m["layers"]]


def _mut(fn):
    m, a = good()
    m, a = copy.deepcopy(m), dict(a)
    fn(m, a)
    return m, a


CASES = {
    "missing weight array": (lambda m, a: a.pop("l2.weight"), r"layer 2.*'l2.weight'.*not in"),
    "missing field cout": (lambda m, a: m["layers"][2].pop("cout"), r"layer 2.*'cout'"),
    "missing layers": (lambda m, a: m.pop("layers"), r"'layers'"),
    "missing input": (lambda m, a: m.pop("input"), r"'input'"),
    "weight dtype": (lambda m, a: a.update({"l2.weight": a["l2.weight"].astype(np.int16)}),
                     r"layer 2.*dtype int16.*int8"),
    "bias dtype": (lambda m, a: a.update({"l2.bias": a["l2.bias"].astype(np.int64)}),
                   r"l2.bias.*dtype int64"),
    "shift shape": (lambda m, a: a.update({"l1.shifts": np.zeros((8, 2), np.int8)}),
                    r"layer 1.*shape \[8, 2\].*\[9, 2\]"),
    "m out of range": (lambda m, a: a.update({"l2.m": np.zeros(5, np.uint16)}),
                       r"layer 2.*m must be in \[1, 65535\]"),
    "sh out of range": (lambda m, a: a.update({"l2.sh": np.full(5, 48, np.uint8)}),
                        r"layer 2.*sh must be in \[1, 47\]"),
    "gap sh": (lambda m, a: m["layers"][4].update({"sh": 0}), r"layer 4 \(gap\).*'sh'"),
    "weight range": (lambda m, a: m.update({"weight_bits": 4}), r"layer 2.*4-bit range"),
    "act bits": (lambda m, a: m.update({"act_bits": 6}), r"act_bits"),
    "chaining": (lambda m, a: m["layers"][5].update({"cin": 4}),
                 r"layer 5.*cin = 4 but the previous layer outputs 5"),
    "classes": (lambda m, a: m.update({"classes": ["a", "b"]}), r"2 classes.*3 outputs"),
    "unknown op": (lambda m, a: m["layers"].insert(3, {"op": "add"}), r"layer 3.*unknown op 'add'"),
    "version": (lambda m, a: m.update({"version": 3}), r"'version' 3"),
    "format": (lambda m, a: m.update({"format": "other"}), r"'format'"),
    "last has m": (lambda m, a: m["layers"][5].update({"m": "l2.m", "sh": "l2.sh"}),
                   r"layer 5.*raw int32"),
    "m without sh": (lambda m, a: m["layers"][5].update({"m": "l2.m"}),
                     r"layer 5 \(conv1x1\): missing key 'sh'"),
    "hidden conv without requant": (lambda m, a: [m["layers"][2].pop(k) for k in ("m", "sh")],
                                    r"layer 2 \(conv1x1\).*'m'.*requant"),
    "no gap": (lambda m, a: m["layers"].pop(4), r"1x1 map"),
    "stride": (lambda m, a: m["layers"][2].update({"stride": 3}),
               r"layer 2 \(conv1x1\): 'stride' is 3, must be one of 1, 2"),
    "int32 overflow": (lambda m, a: a.update({"l2.bias": np.full(5, 2**31 - 100, np.int32)}),
                       r"layer 2.*does not fit int32"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_artifact_message_names_problem(tmp_path, case):
    fn, pattern = CASES[case]
    m, a = _mut(fn)
    p = write(tmp_path / "bad.npz", m, a)
    with pytest.raises(ArtifactError, match=pattern):
        load_artifact(p)


def test_bad_json_not_zip_missing(tmp_path):
    m, a = good()
    p = write(tmp_path / "json.npz", m, a, raw_manifest=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(ArtifactError, match="not valid UTF-8 JSON"):
        load_artifact(p)
    p = write(tmp_path / "dt.npz", m, a, raw_manifest=np.zeros(4, np.int32))
    with pytest.raises(ArtifactError, match="uint8 array"):
        load_artifact(p)
    nz = tmp_path / "nozip.npz"
    nz.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ArtifactError, match="not a readable .npz"):
        load_artifact(nz)
    with pytest.raises(ArtifactError, match="no such file"):
        load_artifact(tmp_path / "missing.npz")
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros(3))
    (tmp_path / "nomani.npz").write_bytes(buf.getvalue())
    with pytest.raises(ArtifactError, match="no 'manifest'"):
        load_artifact(tmp_path / "nomani.npz")


# Strictness (DESIGN.md §2): JSON types, unknown keys at every level, no silent defaults.
# Each case: (mutation, the exact message after "<path>: ", the key the message must name).
STRICT = {
    "version true": (lambda m, a: m.update({"version": True}),
                     "manifest: 'version' must be a JSON integer, got true", "version"),
    "version 1.0": (lambda m, a: m.update({"version": 1.0}),
                    "manifest: 'version' must be a JSON integer, got 1.0", "version"),
    "version string": (lambda m, a: m.update({"version": "1"}),
                       "manifest: 'version' must be a JSON integer, got \"1\"", "version"),
    "misspelt top-level key": (
        lambda m, a: m.update({"act_bit": m.pop("act_bits")}),
        "manifest: unknown key 'act_bit' (did you mean 'act_bits'?)", "act_bit"),
    "extra top-level key": (
        lambda m, a: m.update({"comment": "hi"}),
        "manifest: unknown key 'comment' (allowed: format, version, name, input, act_bits, "
        "weight_bits, classes, layers, provenance)", "comment"),
    "misspelt layer key": (
        lambda m, a: m["layers"][2].update({"strde": m["layers"][2].pop("stride")}),
        "manifest: layer 2 (conv1x1): unknown key 'strde' (did you mean 'stride'?)", "strde"),
    "misspelt input key": (
        lambda m, a: m["input"].update({"hieght": m["input"].pop("height")}),
        "manifest: input: unknown key 'hieght' (did you mean 'height'?)", "hieght"),
    "missing act_bits": (lambda m, a: m.pop("act_bits"),
                         "manifest: missing key 'act_bits' (required, no default)", "act_bits"),
    "missing weight_bits": (
        lambda m, a: m.pop("weight_bits"),
        "manifest: missing key 'weight_bits' (required, no default)", "weight_bits"),
    "missing name": (lambda m, a: m.pop("name"),
                     "manifest: missing key 'name' (required, no default)", "name"),
    "missing input bits": (lambda m, a: m["input"].pop("bits"),
                           "manifest: input: missing key 'bits' (required, no default)", "bits"),
    "missing stride": (
        lambda m, a: m["layers"][2].pop("stride"),
        "manifest: layer 2 (conv1x1): missing key 'stride' (required, no default)", "stride"),
    "key on the wrong op": (
        lambda m, a: m["layers"][2].update({"factor": 2}),
        "manifest: layer 2 (conv1x1): unknown key 'factor' (op conv1x1 takes stride, cin, "
        "cout, weight, bias, m, sh; 'factor' belongs to replicate)", "factor"),
    "key on an op without keys": (
        lambda m, a: m["layers"][3].update({"stride": 2}),
        "manifest: layer 3 (maxpool2): unknown key 'stride' (op maxpool2 takes no other key; "
        "'stride' belongs to conv1x1, dynamic_conv1x1)", "stride"),
    "stride 1.0": (lambda m, a: m["layers"][2].update({"stride": 1.0}),
                   "manifest: layer 2 (conv1x1): 'stride' must be a JSON integer, got 1.0",
                   "stride"),
    "stride true": (lambda m, a: m["layers"][2].update({"stride": True}),
                    "manifest: layer 2 (conv1x1): 'stride' must be a JSON integer, got true",
                    "stride"),
    "gap m 300.0": (lambda m, a: m["layers"][4].update({"m": 300.0}),
                    "manifest: layer 4 (gap): 'm' must be a JSON integer, got 300.0", "m"),
    "act_bits 8.0": (lambda m, a: m.update({"act_bits": 8.0}),
                     "manifest: 'act_bits' must be a JSON integer, got 8.0", "act_bits"),
    "input bits 8.0": (lambda m, a: m["input"].update({"bits": 8.0}),
                       "manifest: input: 'bits' must be a JSON integer, got 8.0", "bits"),
    "cout 0": (lambda m, a: m["layers"][5].update({"cout": 0}),
               "manifest: layer 5 (conv1x1): 'cout' = 0 must be at least 1", "cout"),
    "op null": (lambda m, a: m["layers"][3].update({"op": None}),
                "manifest: layer 3: unknown op null (known: replicate, shift, conv1x1, "
                "maxpool2, gap, channel_attention, dynamic_conv1x1, spatial_attention)", "op"),
    "input bits 9": (lambda m, a: m["input"].update({"bits": 9}),
                     "manifest: input: 'bits' = 9 is outside [1, 8]", "bits"),
    "layer not an object": (lambda m, a: m["layers"].insert(3, 5),
                            "manifest: layer 3 must be a JSON object, got 5", "layer 3"),
    "layer without op": (lambda m, a: m["layers"][3].pop("op"),
                         "manifest: layer 3: missing key 'op' (required, no default)", "op"),
    "class not a string": (lambda m, a: m["classes"].insert(1, 3),
                           "manifest: 'classes'[1] must be a string, got 3", "classes"),
    "array name not a string": (
        lambda m, a: m["layers"][2].update({"weight": 7}),
        "manifest: layer 2 (conv1x1): 'weight' must be a string naming an array in the file, "
        "got 7", "weight"),
    "provenance not an object": (
        lambda m, a: m.update({"provenance": [1]}),
        "manifest: 'provenance' must be a JSON object, got [1]", "provenance"),
    "stray array": (lambda m, a: a.update({"l9.extra": np.zeros(3, np.int8)}),
                    "file: array 'l9.extra' is named by no layer of the manifest (every array "
                    "but 'manifest' must be; remove it)", "l9.extra"),
}


@pytest.mark.parametrize("case", sorted(STRICT))
def test_strict_manifest(tmp_path, case):
    fn, message, _ = STRICT[case]
    m, a = _mut(fn)
    p = write(tmp_path / "bad.npz", m, a)
    with pytest.raises(ArtifactError) as info:
        load_artifact(p)
    assert str(info.value) == f"{p}: {message}"


@pytest.mark.parametrize("case", ["version true", "version 1.0", "misspelt top-level key",
                                  "misspelt layer key", "missing act_bits",
                                  "key on the wrong op", "stride 1.0"])
def test_cli_info_refuses_broken_manifest(tmp_path, capsys, case):
    from shiftacc.sw.cli import main
    fn, message, key = STRICT[case]
    m, a = _mut(fn)
    p = write(tmp_path / "bad.npz", m, a)
    assert main(["info", str(p)]) == 2
    err = capsys.readouterr().err
    assert message in err and repr(key) in err


def test_provenance_is_free_form(tmp_path):
    m, a = good()
    m["provenance"] = {"float_accuracy": 0.98, "anything": [1.5, True, None, {"x": "y"}]}
    model = load_artifact(write(tmp_path / "ok.npz", m, a))
    assert model.provenance == m["provenance"]


def test_duplicate_key_and_nan_refused(tmp_path):
    m, a = good()
    text = json.dumps(m)
    dup = text.replace('"act_bits": 8', '"act_bits": 8, "act_bits": 4')
    p = write(tmp_path / "dup.npz", m, a, raw_manifest=np.frombuffer(dup.encode(), np.uint8))
    with pytest.raises(ArtifactError, match=r"key 'act_bits' appears twice"):
        load_artifact(p)
    nan = text.replace('"act_bits": 8', '"act_bits": NaN')
    p = write(tmp_path / "nan.npz", m, a, raw_manifest=np.frombuffer(nan.encode(), np.uint8))
    with pytest.raises(ArtifactError, match=r"NaN is not JSON"):
        load_artifact(p)


def _paths(node, path=()):
    """Every (container, key) pair of a JSON tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        yield node, k
        if isinstance(v, (dict, list)):
            yield from _paths(v, path + (k,))


def test_random_corruption_always_reported_in_words(np_rng):
    """Random edits of a valid manifest: an ArtifactError naming a place, never a crash."""
    from shiftacc.models.artifact import validate
    values = [True, False, None, 1.0, -1, 0, 3, 2**40, "x", "", [], {}, [1], {"a": 1}, 0.5]
    for _ in range(300):
        m, a = good()
        m = copy.deepcopy(m)
        for _ in range(int(np_rng.integers(1, 3))):
            pairs = list(_paths(m))
            node, k = pairs[int(np_rng.integers(len(pairs)))]
            kind = int(np_rng.integers(3))
            if kind == 0 and isinstance(node, dict):
                node.pop(k)
            elif kind == 1 and isinstance(node, dict):
                node[k + "x"] = values[int(np_rng.integers(len(values)))]
            else:
                node[k] = copy.deepcopy(values[int(np_rng.integers(len(values)))])
        try:
            validate(m, a)
        except ArtifactError as e:
            assert re.match(r"^(manifest|layer \d+|file)\b", str(e)), str(e)
            assert "does not match the schema" not in str(e), str(e)
