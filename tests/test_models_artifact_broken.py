"""models.artifact.load_artifact on broken artifacts: every message names the problem."""

import copy
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
    "version": (lambda m, a: m.update({"version": 2}), r"'version' 2"),
    "format": (lambda m, a: m.update({"format": "other"}), r"'format'"),
    "last has m": (lambda m, a: m["layers"][5].update({"m": "l2.m"}), r"layer 5.*raw int32"),
    "no gap": (lambda m, a: m["layers"].pop(4), r"1x1 map"),
    "stride": (lambda m, a: m["layers"][2].update({"stride": 3}), r"layer 2.*stride 3"),
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
