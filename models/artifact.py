"""The shiftacc integer artifact (``*.npz``): loading, validation and writing.

This module implements DESIGN.md §2. An artifact is a NumPy ``.npz`` file whose key
``manifest`` holds UTF-8 JSON (as a ``uint8`` array) and whose other keys are the integer
arrays the manifest names. Every reader of artifacts in this project (golden model,
hardware generator, host driver) goes through :func:`load_artifact`, so the checks live in
one place and every problem is reported in words, naming the layer and the field.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "ArtifactError", "Layer", "Model", "load_artifact", "save_artifact", "validate",
    "FORMAT", "VERSION", "SUPPORTED_VERSIONS", "OPS",
]

FORMAT = "shiftacc-model"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
OPS = ("replicate", "shift", "conv1x1", "maxpool2", "gap")

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


class ArtifactError(ValueError):
    """An artifact breaks the DESIGN.md §2 contract; the message says where and how."""


@dataclass
class Layer:
    """One layer of an integer shift network.

    Parameters
    ----------
    op : str
        One of :data:`OPS`.
    factor : int, optional
        ``replicate`` only: the replication factor E.
    shifts : ndarray of int8 [C, 2], optional
        ``shift`` only: per-channel (dy, dx).
    stride : int
        ``conv1x1`` only: 1 or 2.
    weight : ndarray of int8 [cout, cin], optional
    bias : ndarray of int32 [cout], optional
    m : ndarray of uint16 [cout] or int, optional
        Requant multiplier, per output channel for ``conv1x1``, a single int for ``gap``.
        ``None`` for the last ``conv1x1`` (raw int32 logits).
    sh : ndarray of uint8 [cout] or int, optional
        Requant right shift, same convention as ``m``.
    keys : dict
        Array name in the ``.npz`` for each array field (used when writing).
    """

    op: str
    factor: int | None = None
    shifts: np.ndarray | None = None
    stride: int = 1
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    m: object = None
    sh: object = None
    keys: dict = field(default_factory=dict)

    @property
    def cin(self):
        return None if self.weight is None else int(self.weight.shape[1])

    @property
    def cout(self):
        return None if self.weight is None else int(self.weight.shape[0])

    @property
    def requant(self):
        """True when this layer ends in requant (every conv but the classifier, every gap)."""
        return self.m is not None


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
        The manifest as read (extra keys kept for round trips).
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
        h, w, c = self.input_shape
        out = [(h, w, c)]
        for layer in self.layers:
            h, w, c = _out_shape(layer, h, w, c)
            out.append((h, w, c))
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
            if layer.op in ("conv1x1", "gap") and layer.requant:
                bits = self.act_bits
        return out

    def macs_per_image(self):
        """Multiply-accumulates of every conv1x1 for one image."""
        total = 0
        for layer, (h, w, c) in zip(self.layers, self.shapes()[1:]):
            if layer.op == "conv1x1":
                total += h * w * layer.cin * layer.cout
        return total


def _out_shape(layer, h, w, c):
    if layer.op == "replicate":
        return h, w, c * layer.factor
    if layer.op == "shift":
        return h, w, c
    if layer.op == "conv1x1":
        s = layer.stride
        return -(-h // s), -(-w // s), layer.cout
    if layer.op == "maxpool2":
        return h // 2, w // 2, c
    if layer.op == "gap":
        return 1, 1, c
    raise ArtifactError(f"unknown op {layer.op!r}")


def _require(cond, msg):
    if not cond:
        raise ArtifactError(msg)


def _int_field(d, key, where, lo=None, hi=None, default=None):
    if key not in d:
        if default is not None:
            return default
        raise ArtifactError(f"{where}: missing field {key!r}")
    v = d[key]
    _require(isinstance(v, int) and not isinstance(v, bool),
             f"{where}: field {key!r} must be an integer, got {v!r}")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise ArtifactError(f"{where}: field {key!r} = {v} is outside [{lo}, {hi}]")
    return v


def _array(arrays, manifest_layer, key, where, dtype, shape):
    name = manifest_layer.get(key)
    _require(isinstance(name, str), f"{where}: field {key!r} must name an array in the file")
    _require(name in arrays, f"{where}: array {name!r} (field {key!r}) is not in the file")
    a = arrays[name]
    _require(a.dtype == np.dtype(dtype),
             f"{where}: array {name!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
    _require(tuple(a.shape) == tuple(shape),
             f"{where}: array {name!r} has shape {list(a.shape)}, expected {list(shape)}")
    return a, name


def validate(manifest, arrays):
    """Check a manifest and its arrays against DESIGN.md §1–2 and build a :class:`Model`.

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
        On the first problem found, with a message naming the layer and field.
    """
    _require(isinstance(manifest, dict), "manifest: must be a JSON object")
    _require(manifest.get("format") == FORMAT,
             f"manifest: 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("version")
    _require(version in SUPPORTED_VERSIONS,
             f"manifest: 'version' {version!r} is not supported by this shiftacc "
             f"(supported: {list(SUPPORTED_VERSIONS)}); upgrade shiftacc or re-export")
    inp = manifest.get("input")
    _require(isinstance(inp, dict), "manifest: missing object 'input'")
    h = _int_field(inp, "height", "input", 1, 4096)
    w = _int_field(inp, "width", "input", 1, 4096)
    c = _int_field(inp, "channels", "input", 1, 4096)
    input_bits = _int_field(inp, "bits", "input", 1, 8, default=8)
    act_bits = _int_field(manifest, "act_bits", "manifest", default=8)
    _require(act_bits in (4, 8), f"manifest: 'act_bits' = {act_bits}; supported are 4 and 8")
    weight_bits = _int_field(manifest, "weight_bits", "manifest", 2, 8, default=8)
    classes = manifest.get("classes")
    _require(isinstance(classes, list) and classes and all(isinstance(x, str) for x in classes),
             "manifest: 'classes' must be a non-empty list of strings")
    mlayers = manifest.get("layers")
    _require(isinstance(mlayers, list) and mlayers, "manifest: 'layers' must be a non-empty list")

    wlo, whi = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
    layers = []
    bits = input_bits
    for i, ml in enumerate(mlayers):
        where = f"layer {i}"
        _require(isinstance(ml, dict), f"{where}: must be a JSON object")
        op = ml.get("op")
        where = f"layer {i} ({op})"
        _require(op in OPS, f"layer {i}: unknown op {op!r} (known: {', '.join(OPS)})")
        last = i == len(mlayers) - 1
        if op == "replicate":
            factor = _int_field(ml, "factor", where, 1, 1024)
            layer = Layer(op, factor=factor)
        elif op == "shift":
            shifts, key = _array(arrays, ml, "shifts", where, np.int8, (c, 2))
            layer = Layer(op, shifts=shifts, keys={"shifts": key})
        elif op == "conv1x1":
            stride = _int_field(ml, "stride", where, default=1)
            _require(stride in (1, 2), f"{where}: stride {stride} not supported (1 or 2)")
            cin = _int_field(ml, "cin", where, 1)
            cout = _int_field(ml, "cout", where, 1)
            _require(cin == c, f"{where}: cin = {cin} but the previous layer outputs {c} channels")
            weight, kw = _array(arrays, ml, "weight", where, np.int8, (cout, cin))
            _require(weight.min() >= wlo and weight.max() <= whi,
                     f"{where}: weights span [{weight.min()}, {weight.max()}], outside the "
                     f"{weight_bits}-bit range [{wlo}, {whi}]")
            bias, kb = _array(arrays, ml, "bias", where, np.int32, (cout,))
            keys = {"weight": kw, "bias": kb}
            m = sh = None
            if last:
                _require("m" not in ml and "sh" not in ml,
                         f"{where}: the last layer outputs raw int32 logits and takes no 'm'/'sh'")
            else:
                m, keys["m"] = _array(arrays, ml, "m", where, np.uint16, (cout,))
                sh, keys["sh"] = _array(arrays, ml, "sh", where, np.uint8, (cout,))
                _require(m.min() >= 1, f"{where}: m must be in [1, 65535], found {m.min()}")
                _require(sh.min() >= 1 and sh.max() <= 47,
                         f"{where}: sh must be in [1, 47], found [{sh.min()}, {sh.max()}]")
            # The accumulator must fit int32 for every input (DESIGN.md §1): bound it exactly.
            xmax = (1 << bits) - 1
            w64 = weight.astype(np.int64)
            hi_acc = bias.astype(np.int64) + np.clip(w64, 0, None).sum(1) * xmax
            lo_acc = bias.astype(np.int64) + np.clip(w64, None, 0).sum(1) * xmax
            _require(hi_acc.max() <= INT32_MAX and lo_acc.min() >= INT32_MIN,
                     f"{where}: accumulator can reach [{lo_acc.min()}, {hi_acc.max()}], "
                     f"which does not fit int32")
            layer = Layer(op, stride=stride, weight=weight, bias=bias, m=m, sh=sh, keys=keys)
            if not last:
                bits = act_bits
        elif op == "maxpool2":
            _require(h >= 2 and w >= 2, f"{where}: needs an input of at least 2x2, got {h}x{w}")
            layer = Layer(op)
        else:  # gap
            m = _int_field(ml, "m", where, 1, 65535)
            sh = _int_field(ml, "sh", where, 1, 47)
            _require(((1 << bits) - 1) * h * w <= INT32_MAX,
                     f"{where}: the pooled sum of a {h}x{w} map does not fit int32")
            layer = Layer(op, m=m, sh=sh)
            bits = act_bits
        if last:
            _require(op == "conv1x1",
                     f"{where}: the last layer must be a conv1x1 (the classifier), not {op}")
        layers.append(layer)
        h, w, c = _out_shape(layer, h, w, c)
    _require(h == 1 and w == 1,
             f"layer {len(mlayers) - 1}: the classifier must see a 1x1 map (add a gap), "
             f"it sees {h}x{w}")
    _require(c == len(classes), f"manifest: {len(classes)} classes but the classifier has {c} "
             f"outputs")
    prov = manifest.get("provenance", {})
    _require(isinstance(prov, dict), "manifest: 'provenance' must be an object")
    return Model(name=str(manifest.get("name", "unnamed")), input_shape=(inp["height"],
                 inp["width"], inp["channels"]), input_bits=input_bits, act_bits=act_bits,
                 weight_bits=weight_bits, classes=list(classes), layers=layers,
                 provenance=dict(prov), manifest=manifest)


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
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: manifest is not valid UTF-8 JSON ({e})") from None
    try:
        return validate(manifest, arrays)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None


def to_manifest_and_arrays(model):
    """Turn a :class:`Model` back into (manifest dict, arrays dict), naming arrays ``l{i}.*``."""
    arrays, mlayers = {}, []
    c = model.input_shape[2]
    for i, layer in enumerate(model.layers):
        if layer.op == "replicate":
            ml = {"op": "replicate", "factor": int(layer.factor)}
        elif layer.op == "shift":
            arrays[f"l{i}.shifts"] = np.asarray(layer.shifts, np.int8)
            ml = {"op": "shift", "shifts": f"l{i}.shifts"}
        elif layer.op == "conv1x1":
            ml = {"op": "conv1x1", "stride": int(layer.stride), "cin": layer.cin,
                  "cout": layer.cout, "weight": f"l{i}.weight", "bias": f"l{i}.bias"}
            arrays[f"l{i}.weight"] = np.asarray(layer.weight, np.int8)
            arrays[f"l{i}.bias"] = np.asarray(layer.bias, np.int32)
            if layer.m is not None:
                ml["m"], ml["sh"] = f"l{i}.m", f"l{i}.sh"
                arrays[f"l{i}.m"] = np.asarray(layer.m, np.uint16)
                arrays[f"l{i}.sh"] = np.asarray(layer.sh, np.uint8)
        elif layer.op == "maxpool2":
            ml = {"op": "maxpool2"}
        elif layer.op == "gap":
            ml = {"op": "gap", "m": int(layer.m), "sh": int(layer.sh)}
        else:
            raise ArtifactError(f"layer {i}: unknown op {layer.op!r}")
        mlayers.append(ml)
    h, w, c = model.input_shape
    manifest = dict(model.manifest)
    manifest.update({
        "format": FORMAT, "version": VERSION, "name": model.name,
        "input": {"height": h, "width": w, "channels": c, "bits": model.input_bits},
        "act_bits": model.act_bits, "weight_bits": model.weight_bits,
        "classes": list(model.classes), "layers": mlayers, "provenance": model.provenance,
    })
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)  # atomic: a crash never leaves half an artifact behind
    return checked
