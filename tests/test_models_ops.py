"""The op table (models/ops.py) and the shipped manifest schema agree, and everything the
project writes validates against them."""

import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from shiftacc.models import golden, netgen, schema
from shiftacc.models.artifact import (ArtifactError, Layer, Model, load_artifact, save_artifact,
                                      to_manifest_and_arrays, validate)
from shiftacc.models.ops import OPS, Array, Scalar


def test_shipped_schema_is_generated_from_op_table():
    shipped = json.loads(resources.files("shiftacc.models").joinpath("manifest.schema.json")
                         .read_text("utf-8"))
    assert shipped == schema.generate(), \
        "models/manifest.schema.json is stale: run python -m shiftacc.models.schema --write"


def test_schema_ops_equal_table():
    s = schema.load()
    layer = s["$defs"]["layer"]
    assert layer["properties"]["op"]["enum"] == list(OPS)
    assert [b["if"]["properties"]["op"]["const"] for b in layer["allOf"]] == list(OPS)
    assert sorted(k[3:] for k in s["$defs"] if k.startswith("op.")) == sorted(OPS)
    for name, op in OPS.items():
        d = s["$defs"][f"op.{name}"]
        assert list(d["properties"]) == ["op"] + list(op.keys)
        assert d["additionalProperties"] is False
        assert d["required"] == ["op"] + [k for k, v in op.keys.items() if v.required]
        for key, spec in op.keys.items():
            prop = d["properties"][key]
            if isinstance(spec, Scalar):
                assert prop["type"] == "integer"
            else:
                assert isinstance(spec, Array) and prop["$ref"] == "#/$defs/array_name"
                assert spec.dtype in prop["description"]


def test_schema_is_valid_2020_12():
    import warnings

    import jschon
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        catalog = jschon.create_catalog("2020-12", name="test-ops")
        result = jschon.JSONSchema(schema.load(), catalog=catalog).validate()
    assert result.valid, result.output("basic")


def test_no_torch_for_golden_and_info():
    code = ("import sys\n"
            "import shiftacc.models.golden, shiftacc.models.artifact, shiftacc.models.ops\n"
            "import shiftacc.models.schema, shiftacc.models.netgen\n"
            "from shiftacc.models.netgen import random_model\n"
            "from shiftacc.sw.cli_model import describe\n"
            "import numpy as np\n"
            "m = random_model(np.random.default_rng(0))\n"
            "shiftacc.models.golden.run(m, np.zeros((2,) + m.input_shape, np.uint8))\n"
            "describe(m)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_random_models_written_validate(np_rng, tmp_path):
    for k in range(8):
        model = netgen.random_model(np_rng, blocks=int(np_rng.integers(1, 4)))
        manifest, arrays = to_manifest_and_arrays(model)
        schema.check(manifest)
        required = set(schema.load()["required"])
        assert required <= set(manifest)
        back = save_artifact(tmp_path / f"r{k}.npz", model)
        again = load_artifact(tmp_path / f"r{k}.npz")
        imgs = np_rng.integers(0, 256, (5,) + model.input_shape).astype(np.uint8)
        assert np.array_equal(golden.run(again, imgs), golden.run(model, imgs))
        assert np.array_equal(golden.run(back, imgs), golden.run(model, imgs))
        assert again.shapes() == model.shapes()
        assert again.macs_per_image() == model.macs_per_image()


def _tiny(layers, classes=2, shape=(2, 2, 1), act_bits=8):
    return Model(name="tiny", input_shape=shape, input_bits=8, act_bits=act_bits, weight_bits=8,
                 classes=[str(i) for i in range(classes)], layers=layers)


def test_writing_refuses_values_the_dtype_cannot_hold():
    gap = Layer("gap", m=1, sh=1)
    head = Layer("conv1x1", stride=1, weight=np.array([[200], [1]]), bias=np.zeros(2, np.int32))
    with pytest.raises(ArtifactError, match=r"layer 1 \(conv1x1\): 'weight' \(int64\) does not "
                                            r"fit int8"):
        to_manifest_and_arrays(_tiny([gap, head]))


def test_writing_refuses_missing_required_field():
    with pytest.raises(ArtifactError, match=r"layer 0 \(replicate\): 'factor' is required"):
        to_manifest_and_arrays(_tiny([Layer("replicate")]))


def test_model_helpers_follow_op_table():
    w = np.ones((3, 2), np.int8)
    layers = [Layer("replicate", factor=2),
              Layer("shift", shifts=np.zeros((2, 2), np.int8)),
              Layer("conv1x1", stride=2, weight=w, bias=np.zeros(3, np.int32),
                    m=np.ones(3, np.uint16), sh=np.ones(3, np.uint8)),
              Layer("maxpool2"),
              Layer("gap", m=1, sh=1),
              Layer("conv1x1", stride=1, weight=np.ones((2, 3), np.int8),
                    bias=np.zeros(2, np.int32))]
    manifest, arrays = to_manifest_and_arrays(_tiny(layers, shape=(5, 5, 1), act_bits=4))
    model = validate(manifest, arrays)
    # 5x5x1 -> 5x5x2 -> 5x5x2 -> ceil(5/2)=3x3x3 -> floor(3/2)=1x1x3 -> 1x1x3 -> 1x1x2
    assert model.shapes() == [(5, 5, 1), (5, 5, 2), (5, 5, 2), (3, 3, 3), (1, 1, 3),
                              (1, 1, 3), (1, 1, 2)]
    assert model.value_bits() == [8, 8, 8, 4, 4, 4]
    assert model.macs_per_image() == 3 * 3 * 2 * 3 + 1 * 1 * 3 * 2
