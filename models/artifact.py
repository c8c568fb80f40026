"""The shiftacc integer artifact (``*.npz``): loading, validation and writing.

This module implements DESIGN.md §2. An artifact is a NumPy ``.npz`` file whose key
``manifest`` holds UTF-8 JSON (as a ``uint8`` array) and whose other keys are the integer
arrays the manifest names. Every reader of artifacts in this project (golden model,
hardware generator, host driver) goes through :func:`load_artifact` or :func:`validate`, so
the checks live in one place and every problem is reported in words, naming the layer and
the key. What each op's keys and arrays are, and how they are checked, is defined once in
the op table (:mod:`models.ops`); keys and JSON types are checked against the shipped JSON
Schema (:mod:`models.schema`). The user-facing description is ``docs/format.md``.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..sw.outputs import write_atomic
from . import schema
from .layer import ArtifactError, Layer
from .ops import INT32_MAX, INT32_MIN, OPS, Context, get as get_op  # noqa: F401 (INT32_*: kept)
from .ops import OPS_OF_VERSION

__all__ = [
    "ArtifactError", "Layer", "Model", "load_artifact", "save_artifact", "validate",
    "to_manifest_and_arrays", "FORMAT", "VERSION", "SUPPORTED_VERSIONS", "OPS",
]

FORMAT = schema.FORMAT
#: The newest version this shiftacc writes; a file is written with the lowest version that
#: holds its ops (a network without attention stays version 1, readable by older tools).
VERSION = max(schema.VERSIONS)
SUPPORTED_VERSIONS = schema.VERSIONS  # (1, 2)


@dataclass
class Model:
    """A validated integer shift network (an artifact in memory).

    Attributes
    ----------
    name : str
    input_shape : tuple of int
        (H, W, C) of the input image.
    input_bits : int
        Bits per input pixel (unsigned).
    act_bits : int
        Bits per activation after any requant (unsigned).
    weight_bits : int
        Bits per weight (signed).
    classes : list of str
    layers : list of Layer
    provenance : dict
    manifest : dict
        The manifest as read (empty for a model built in memory); writing regenerates it
        from the attributes above (:func:`to_manifest_and_arrays`).
    """

    name: str
    input_shape: tuple
    input_bits: int
    act_bits: int
    weight_bits: int
    classes: list
    layers: list
    provenance: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    def shapes(self):
        """Shapes (H, W, C) of the input and of every layer's output.

        Returns
        -------
        list of tuple
            ``shapes()[i]`` is the input of layer i; ``shapes()[-1]`` is the logits shape.
        """
        shape = tuple(self.input_shape)
        out = [shape]
        for layer in self.layers:
            shape = tuple(OPS[layer.op].out_shape(layer, shape))
            out.append(shape)
        return out

    def value_bits(self):
        """Bits of the unsigned values entering each layer (input bits before the first requant).

        Returns
        -------
        list of int
            One entry per layer: the width of the activations that layer reads.
        """
        bits, out = self.input_bits, []
        for layer in self.layers:
            out.append(bits)
            bits = OPS[layer.op].out_bits(layer, bits, self.act_bits)
        return out

    def macs_per_image(self):
        """Multiply-accumulates of every layer (the conv1x1s) for one image."""
        return sum(OPS[layer.op].macs(layer, shape)
                   for layer, shape in zip(self.layers, self.shapes()[1:]))


def _require(cond, msg):
    if not cond:
        raise ArtifactError(msg)


def _json(value):
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _check_header(manifest):
    """'format' and 'version' first: a newer file must say so, not fail on its new keys."""
    _require(isinstance(manifest, dict),
             f"manifest: must be a JSON object, got {type(manifest).__name__}")
    _require("format" in manifest, f"manifest: missing key 'format' (must be {FORMAT!r})")
    _require(manifest["format"] == FORMAT,
             f"manifest: 'format' is {_json(manifest['format'])}, expected {FORMAT!r}")
    _require("version" in manifest, "manifest: missing key 'version' (required, no default)")
    version = manifest["version"]
    _require(type(version) is int,
             f"manifest: 'version' must be a JSON integer, got {_json(version)}")
    _require(version in SUPPORTED_VERSIONS,
             f"manifest: 'version' {version} is not supported by this shiftacc "
             f"(supported: {list(SUPPORTED_VERSIONS)}); upgrade shiftacc or re-export")


def validate(manifest, arrays):
    """Check a manifest and its arrays against DESIGN.md §1–2 and build a :class:`Model`.

    The checks run in this order, and the first problem raises: ``format`` and ``version``;
    the JSON Schema (:mod:`models.schema`: keys, JSON types, scalar ranges); then, layer by
    layer, the semantic checks of the op table (:mod:`models.ops`: arrays' presence, dtypes,
    shapes and ranges, channel chaining, accumulator bounds); then the network as a whole
    (a conv1x1 classifier on a 1x1 map, one output per class, no unnamed arrays).

    Parameters
    ----------
    manifest : dict
        The parsed JSON manifest.
    arrays : dict of str to ndarray
        Every array of the file except ``manifest``.

    Returns
    -------
    Model

    Raises
    ------
    ArtifactError
        On the first problem found, with a message naming the layer and key.
    """
    _check_header(manifest)
    _check_ops_of_version(manifest)
    schema.check(manifest)
    inp = manifest["input"]
    act_bits, weight_bits = manifest["act_bits"], manifest["weight_bits"]
    mlayers = manifest["layers"]
    input_shape = shape = (inp["height"], inp["width"], inp["channels"])
    bits = inp["bits"]
    layers, named = [], set()
    for i, ml in enumerate(mlayers):
        op = get_op(ml.get("op"), f"layer {i}")
        last = i == len(mlayers) - 1
        ctx = Context(index=i, op=op.name, shape=shape, bits=bits, act_bits=act_bits,
                      weight_bits=weight_bits, last=last, arrays=arrays)
        layer = op.parse(ml, ctx)
        if last:
            ctx.require(op.classifier, f"the last layer must be a conv1x1 or dynamic_conv1x1 "
                        f"(the classifier), not {op.name}")
        named.update(layer.keys.values())
        layers.append(layer)
        shape = tuple(op.out_shape(layer, shape))
        bits = op.out_bits(layer, bits, act_bits)
    h, w, c = shape
    _require(h == 1 and w == 1,
             f"layer {len(mlayers) - 1}: the classifier must see a 1x1 map (add a gap), "
             f"it sees {h}x{w}")
    classes = manifest["classes"]
    _require(c == len(classes), f"manifest: {len(classes)} classes but the classifier has {c} "
             f"outputs")
    stray = sorted(set(arrays) - named)
    if stray:
        raise ArtifactError(f"file: array {stray[0]!r} is named by no layer of the manifest "
                            f"(every array but 'manifest' must be; remove it)")
    return Model(name=manifest["name"], input_shape=input_shape, input_bits=inp["bits"],
                 act_bits=act_bits, weight_bits=weight_bits, classes=list(classes),
                 layers=layers, provenance=dict(manifest.get("provenance", {})),
                 manifest=manifest)


def _check_ops_of_version(manifest):
    """An op newer than the file's ``version`` is refused in words (before the schema, whose
    message would only list the allowed names)."""
    version, layers = manifest["version"], manifest.get("layers")
    if not isinstance(layers, list):
        return
    for i, ml in enumerate(layers):
        op = ml.get("op") if isinstance(ml, dict) else None
        if isinstance(op, str) and op in OPS and op not in OPS_OF_VERSION[version]:
            raise ArtifactError(f"layer {i} ({op}): this op needs format version "
                                f"{OPS[op].version}, but the file says version {version}")


def file_version(layers):
    """The lowest format version that holds every op of ``layers``."""
    return max([1] + [OPS[layer.op].version for layer in layers if layer.op in OPS])


def _no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ArtifactError(f"manifest: key {k!r} appears twice in one object")
        obj[k] = v
    return obj


def _no_constant(name):
    raise ArtifactError(f"manifest: {name} is not JSON (numbers must be finite)")


def parse_manifest(data):
    """Parse manifest bytes: UTF-8 JSON, no duplicate keys, no NaN/Infinity.

    Parameters
    ----------
    data : bytes

    Returns
    -------
    object
        The parsed JSON (validated later by :func:`validate`).

    Raises
    ------
    ArtifactError
    """
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"manifest is not valid UTF-8 JSON ({e})") from None


def load_artifact(path):
    """Load and validate an artifact.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Model

    Raises
    ------
    ArtifactError
        If the file is missing, not an ``.npz``, or breaks the contract.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such file (train one with 'shiftacc train')")
    if not zipfile.is_zipfile(path):
        raise ArtifactError(f"{path}: not a readable .npz artifact (not a zip archive; "
                            f"artifacts are written by 'shiftacc train' or np.savez)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ArtifactError(f"{path}: not a readable .npz artifact ({e})") from None
    if "manifest" not in arrays:
        raise ArtifactError(f"{path}: no 'manifest' key; not a shiftacc artifact")
    raw = arrays.pop("manifest")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ArtifactError(f"{path}: 'manifest' must be a 1-D uint8 array of UTF-8 JSON")
    try:
        manifest = parse_manifest(raw.tobytes())
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None
    try:
        return validate(manifest, arrays)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None


def to_manifest_and_arrays(model):
    """Turn a :class:`Model` into (manifest dict, arrays dict), naming arrays ``l{i}.*``.

    Every key the schema requires is written from the model's attributes; ``provenance`` is
    written when the model has one.

    Raises
    ------
    ArtifactError
        An unknown op, a missing required field, or array values their dtype cannot hold.
    """
    arrays, mlayers = {}, []
    for i, layer in enumerate(model.layers):
        mlayers.append(get_op(layer.op, f"layer {i}").to_manifest(layer, i, arrays))
    h, w, c = (int(v) for v in model.input_shape)
    manifest = {
        "format": FORMAT, "version": file_version(model.layers), "name": model.name,
        "input": {"height": h, "width": w, "channels": c, "bits": int(model.input_bits)},
        "act_bits": int(model.act_bits), "weight_bits": int(model.weight_bits),
        "classes": list(model.classes), "layers": mlayers,
    }
    if model.provenance:
        manifest["provenance"] = copy.deepcopy(model.provenance)
    return manifest, arrays


def save_artifact(path, model):
    """Validate and write a :class:`Model` as an artifact.

    Parameters
    ----------
    path : str or Path
    model : Model

    Returns
    -------
    Model
        The model as re-read from its own manifest and arrays (validated).

    Raises
    ------
    ArtifactError
        If the model breaks the contract; nothing is written then.
    """
    manifest, arrays = to_manifest_and_arrays(model)
    checked = validate(manifest, arrays)
    blob = np.frombuffer(json.dumps(manifest, indent=1).encode("utf-8"), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, manifest=blob, **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic (the project's one writer, shared with the CLI's outputs): a crash never leaves
    # half an artifact behind.
    write_atomic(path, buf.getvalue())
    return checked
