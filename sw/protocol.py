"""The host link protocol (DESIGN.md §4), defined once for the gateware and the driver.

Everything both ends must agree on lives here: the frame layout, the commands, the reason
codes, the CRCs (``amaranth.lib.crc`` algorithms: the gateware instantiates their
``Processor``, the host computes the same algorithm in software), the layouts of the fixed
reply bodies, and the design identity. :mod:`shiftacc.hw.link` (gateware),
:mod:`shiftacc.sw.device` (driver) and :mod:`shiftacc.sw.devmodel` (a pure-Python model of
the device) import it; nothing else defines a byte of the link.

Frame (both directions, multi-byte fields little-endian)::

    SYNC0 SYNC1 | command seq length(2) | header_crc | payload (length bytes) | crc(4)

- ``SYNC`` = ``A5 5A``. The receiver hunts for it byte by byte; payloads are not escaped, so a
  sync pattern inside a payload is only a candidate: the header CRC rejects it (255/256) and
  hunting continues with the next byte.
- ``header_crc``: :data:`HEADER_CRC` (CRC-8/SMBUS) over the 4 header bytes. A frame whose
  header fails it is dropped at once (reason ``HEADER_CRC``), so a corrupted ``length`` can
  never make the receiver swallow the frames that follow.
- ``crc``: :data:`FRAME_CRC` (CRC-32/Ethernet, the one ``zlib.crc32`` computes) over the 4
  header bytes and the payload. Nothing in a frame is acted on before it passes.
- A request's ``command`` is a :class:`Command`; the reply to it carries ``command |
  REPLY`` and the same ``seq``. A frame dropped before its header was trusted (bad header
  CRC, watchdog during the header) is answered with command :data:`NAK` and the ``seq`` as
  received. Every reply payload starts with one :class:`Reason` byte; ``OK`` is followed by
  the command's reply body, any other reason by nothing.

Device rules (the gateware and :class:`~shiftacc.sw.devmodel.DeviceModel` both follow them):

1. Header checks, in order, each dropping the frame and returning to the hunt:
   ``HEADER_CRC``; ``UNKNOWN_COMMAND``; ``BAD_LENGTH`` when ``length`` is not what
   :func:`length_ok` allows for the command and the design.
2. While the payload arrives: ``PARAM_ADDRESS`` (a ``LOAD_PARAMS`` word outside the design's
   parameter memories, :func:`param_limits`) and ``PIXEL_RANGE`` (an ``INFER`` byte >= 2**input
   bits) are noted; the rest of the frame is still read, then dropped with that reason.
3. ``PAYLOAD_CRC`` when the CRC fails. A gap of more than the watchdog's cycles between two
   bytes of one frame abandons it (``TIMEOUT``). A frame that finds no free receive slot is
   read and dropped with ``BUSY`` (the line cannot be paused; see :data:`Identity.slots`).
   A complete frame with several of these problems is dropped with the first of
   ``PAYLOAD_CRC`` (its payload may be noise, so a noted value proves nothing),
   ``PARAM_ADDRESS``/``PIXEL_RANGE``, ``BUSY``.
4. A frame that passed is executed in arrival order: ``IDENTIFY``, ``STATUS`` answer at once
   (``STATUS`` shows the parameters, load state and executed-frame counts as of its own
   place in that order, also when its reply leaves after later frames were received);
   ``LOAD_BEGIN`` checks the design id and word count (``DESIGN_MISMATCH``), clears the
   loaded parameters and starts a load; ``LOAD_PARAMS`` needs a load in progress
   (``NOT_LOADING``) and ``offset`` equal to the words loaded so far (``offset + k`` at most
   the words loaded: already applied, acknowledged without writing, also once the load has
   completed; a partial overlap, a gap or words past the design's count: ``PARAM_ORDER``);
   ``INFER`` needs every parameter word loaded (``PARAMS_INCOMPLETE``) and answers with the
   logits of its images once they are out; ``READ_RESULT`` waits for the images in flight,
   then re-sends the body of the reply of one of the last ``slots`` ``INFER`` frames by its
   ``seq`` (the newest such; ``NOT_FOUND``), under its own command and ``seq``; ``RESET``
   clears parameters, load state and counters. ``frames_ok`` counts frames executed with
   ``OK``, ``frames_dropped`` every frame answered with another reason.
"""

from __future__ import annotations

import hashlib
import json
import zlib

from amaranth.lib import data, enum
from amaranth.lib.crc import catalog

__all__ = ["LINK_VERSION", "SYNC", "REPLY", "NAK", "Command", "Reason", "REASON_TEXT",
           "RETRYABLE", "HEADER_LAYOUT", "HEADER_BYTES", "HEADER_CRC", "FRAME_CRC",
           "FRAME_OVERHEAD", "LOAD_BEGIN_LAYOUT", "LOAD_PARAMS_PREFIX", "LOAD_REPLY_LAYOUT",
           "IDENTIFY_LAYOUT", "STATUS_LAYOUT", "STATUS_FLAGS", "PARAM_WORD_BYTES",
           "LOGIT_BYTES", "header_crc", "frame_crc", "encode_frame", "Frame", "Dropped",
           "FrameParser", "layout_bytes", "layout_from_bytes", "length_ok", "param_limits",
           "param_word_bytes", "topology", "descriptor", "design_id", "descriptor_blob",
           "parse_descriptor_blob", "topology_differences", "ENGINES", "plan_engine",
           "descriptor_engine", "overlay_io", "io_differences"]

#: Version of this protocol; part of every design id.
LINK_VERSION = 1
#: The two bytes that start every frame.
SYNC = bytes((0xA5, 0x5A))
#: Set in the command byte of every reply.
REPLY = 0x80
#: Command byte of a reply to a frame whose header could not be trusted.
NAK = 0xFF


class Command(enum.Enum, shape=8):
    """Request commands (the reply carries ``command | REPLY``)."""
    #: Empty payload. Reply body: :data:`IDENTIFY_LAYOUT` then the descriptor blob.
    IDENTIFY = 0x01
    #: Payload :data:`LOAD_BEGIN_LAYOUT`. Reply body: :data:`LOAD_REPLY_LAYOUT`.
    LOAD_BEGIN = 0x02
    #: Payload: ``offset`` (:data:`LOAD_PARAMS_PREFIX`) then k >= 1 parameter words of
    #: :data:`PARAM_WORD_BYTES` each. Reply body: :data:`LOAD_REPLY_LAYOUT`.
    LOAD_PARAMS = 0x03
    #: Payload: k >= 1 images, ``H*W*C`` bytes each (raster order, channels innermost, one
    #: byte per value). Reply body: k * classes int32 logits (:data:`LOGIT_BYTES` each).
    INFER = 0x04
    #: Payload: one byte, the ``seq`` of an earlier ``INFER``. Reply: that frame's reply.
    READ_RESULT = 0x05
    #: Empty payload. Reply body: :data:`STATUS_LAYOUT`.
    STATUS = 0x06
    #: Empty payload. Reply body: empty.
    RESET = 0x07


class Reason(enum.Enum, shape=8):
    """First byte of every reply payload: why a frame was or was not acted on."""
    OK = 0
    HEADER_CRC = 1
    PAYLOAD_CRC = 2
    BAD_LENGTH = 3
    UNKNOWN_COMMAND = 4
    DESIGN_MISMATCH = 5
    PARAM_ADDRESS = 6
    PARAM_ORDER = 7
    NOT_LOADING = 8
    PARAMS_INCOMPLETE = 9
    PIXEL_RANGE = 10
    TIMEOUT = 11
    BUSY = 12
    NOT_FOUND = 13


#: What each reason means, in the words the driver's errors use.
REASON_TEXT = {
    Reason.OK: "accepted",
    Reason.HEADER_CRC: "the frame header failed its CRC (line noise)",
    Reason.PAYLOAD_CRC: "the frame failed its CRC (line noise)",
    Reason.BAD_LENGTH: "the payload length is not valid for this command and design",
    Reason.UNKNOWN_COMMAND: "unknown command",
    Reason.DESIGN_MISMATCH: "the parameters were made for another design",
    Reason.PARAM_ADDRESS: "a parameter word addresses no memory of this design",
    Reason.PARAM_ORDER: "parameter words arrived out of order",
    Reason.NOT_LOADING: "parameter words arrived without a LOAD_BEGIN",
    Reason.PARAMS_INCOMPLETE: "images arrived before every parameter was loaded",
    Reason.PIXEL_RANGE: "a pixel value exceeds the design's input bits",
    Reason.TIMEOUT: "the frame stopped arriving midway (device watchdog)",
    Reason.BUSY: "every receive slot of the device was full",
    Reason.NOT_FOUND: "no stored result has that sequence number",
}

#: Reasons caused by the line or by timing, not by the request: sending again may succeed.
RETRYABLE = frozenset({Reason.HEADER_CRC, Reason.PAYLOAD_CRC, Reason.TIMEOUT, Reason.BUSY})

HEADER_LAYOUT = data.StructLayout({"command": 8, "seq": 8, "length": 16})
HEADER_BYTES = HEADER_LAYOUT.size // 8
#: CRC of the 4 header bytes (one byte on the wire).
HEADER_CRC = catalog.CRC8_SMBUS
#: CRC of header and payload (four bytes on the wire, little-endian).
FRAME_CRC = catalog.CRC32_ETHERNET
#: Bytes a frame adds to its payload: sync, header, header CRC, CRC.
FRAME_OVERHEAD = len(SYNC) + HEADER_BYTES + 1 + 4

LOAD_BEGIN_LAYOUT = data.StructLayout({"design_id": 64, "words": 32})
LOAD_PARAMS_PREFIX = data.StructLayout({"offset": 32})
LOAD_REPLY_LAYOUT = data.StructLayout({"words_loaded": 32, "ready": 8})
#: Bytes of one parameter word on the link: :data:`shiftacc.hw.params.PARAM_LAYOUT`, LSB first.
PARAM_WORD_BYTES = 10
LOGIT_BYTES = 4

IDENTIFY_LAYOUT = data.StructLayout({
    "link_version": 8,
    "design_id": 64,
    "clock_hz": 32,
    "baud": 32,          # 0: no UART (the byte streams of a simulator)
    "max_payload": 16,   # longest request payload the device accepts
    "slots": 8,          # receive slots: frames the host may have unanswered at once
    "image_bytes": 32,
    "classes": 16,
    "input_bits": 8,
    "param_words": 32,
    "watchdog_cycles": 32,
})

STATUS_FLAGS = data.StructLayout({"params_ready": 1, "loading": 1, "busy": 1, "_": 5})
STATUS_LAYOUT = data.StructLayout({
    "flags": STATUS_FLAGS,
    "last_drop": 8,       # Reason of the most recent dropped frame (OK when none)
    "words_loaded": 32,
    "frames_ok": 32,
    "frames_dropped": 32,
    "replies_lost": 16,   # replies not sent because the reply queue was full
    "images_done": 32,
    "rx_bytes": 32,
    "tx_bytes": 32,
    "line_errors": 16,    # UART framing errors, overruns and breaks (0 without a UART)
    "cycles": 64,         # free-running clock counter (link efficiency from two reads)
})


def layout_bytes(layout, values):
    """Bytes (little-endian) of a ``StructLayout`` constant built from ``values``."""
    return layout.const(values).as_value().value.to_bytes(layout.size // 8, "little")


def layout_from_bytes(layout, raw):
    """A ``data.Const`` view of ``layout`` from its little-endian bytes (fields readable as
    attributes).

    Raises
    ------
    ValueError
        ``raw`` is shorter than the layout.
    """
    n = layout.size // 8
    if len(raw) < n:
        raise ValueError(f"{len(raw)} bytes where {n} were expected")
    return layout.from_bits(int.from_bytes(bytes(raw[:n]), "little"))


_HEADER_ALGO = HEADER_CRC()
_FRAME_ALGO = FRAME_CRC()


def header_crc(header):
    """CRC-8 of the 4 header bytes (the :data:`HEADER_CRC` algorithm)."""
    return _HEADER_ALGO.compute(bytes(header))


def frame_crc(header, payload):
    """CRC-32 of header and payload.

    Computed with ``zlib.crc32``, which implements exactly :data:`FRAME_CRC` (CRC-32/
    Ethernet); a test checks the two agree, and ``amaranth.lib.crc``'s bit-serial
    ``compute`` would take seconds over a parameter load.
    """
    return zlib.crc32(bytes(payload), zlib.crc32(bytes(header)))


def encode_frame(command, seq, payload=b""):
    """One frame's bytes.

    Parameters
    ----------
    command : int or Command
    seq : int
        0..255.
    payload : bytes

    Raises
    ------
    ValueError
        A field out of range.
    """
    command = int(command.value if isinstance(command, Command) else command)
    if not 0 <= command < 256 or not 0 <= seq < 256:
        raise ValueError(f"command {command} / seq {seq} out of range")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes exceeds 65535")
    header = layout_bytes(HEADER_LAYOUT, {"command": command, "seq": seq,
                                          "length": len(payload)})
    return b"".join((SYNC, header, bytes((header_crc(header),)), bytes(payload),
                     frame_crc(header, payload).to_bytes(4, "little")))


class Frame:
    """A frame that passed both CRCs."""

    __slots__ = ("command", "seq", "payload")

    def __init__(self, command, seq, payload):
        self.command, self.seq, self.payload = command, seq, bytes(payload)

    def __repr__(self):
        return f"Frame(command=0x{self.command:02x}, seq={self.seq}, {len(self.payload)} B)"


class Dropped:
    """A frame the parser dropped: ``reason``, and ``command``/``seq`` when the header was
    trusted (else None)."""

    __slots__ = ("reason", "command", "seq")

    def __init__(self, reason, command=None, seq=None):
        self.reason, self.command, self.seq = reason, command, seq

    def __repr__(self):
        return f"Dropped({self.reason.name}, command={self.command}, seq={self.seq})"


class FrameParser:
    """Incremental frame parser in software (host side, and the device model's front end).

    The same hunt / header / payload / CRC sequence as the gateware's parser. Feed it bytes
    in any chunks; it returns :class:`Frame` and :class:`Dropped` events in order.

    Parameters
    ----------
    max_payload : int
        Longer frames are dropped after their header (``BAD_LENGTH``).
    length_check : callable, optional
        ``(command, length) -> Reason or None``: extra header checks (the device model uses
        :func:`length_ok`; the host accepts any reply length up to ``max_payload``).
    """

    def __init__(self, max_payload=0xFFFF, length_check=None):
        self.max_payload = max_payload
        self.length_check = length_check
        self.reset()

    def reset(self):
        """Abandon any partial frame and hunt for the next sync pattern."""
        self._state = "sync0"
        self._buf = bytearray()
        self._need = 0

    @property
    def in_frame(self):
        """True between a sync pattern and the end of its frame."""
        return self._state not in ("sync0", "sync1")

    def abandon(self):
        """The watchdog fired: drop a partial frame (returns its event, or None)."""
        if not self.in_frame:
            self.reset()
            return None
        event = (Dropped(Reason.TIMEOUT, self._command, self._seq)
                 if self._state in ("payload", "crc") else Dropped(Reason.TIMEOUT))
        self.reset()
        return event

    def feed(self, chunk):
        """Parse ``chunk``; return the list of events it completes."""
        events = []
        for byte in bytes(chunk):
            ev = self._byte(byte)
            if ev is not None:
                events.append(ev)
        return events

    def _byte(self, b):
        st = self._state
        if st == "sync0":
            if b == SYNC[0]:
                self._state = "sync1"
            return None
        if st == "sync1":
            if b == SYNC[1]:
                self._state, self._buf = "header", bytearray()
            elif b != SYNC[0]:
                self._state = "sync0"
            return None
        self._buf.append(b)
        if st == "header":
            if len(self._buf) < HEADER_BYTES + 1:
                return None
            header = bytes(self._buf[:HEADER_BYTES])
            if header_crc(header) != self._buf[HEADER_BYTES]:
                self.reset()
                return Dropped(Reason.HEADER_CRC, None, None)
            h = layout_from_bytes(HEADER_LAYOUT, header)
            self._command, self._seq, length = int(h.command), int(h.seq), int(h.length)
            # The length check first: it knows the commands, and rule 1 reports an unknown
            # command before a bad length.
            reason = None
            if self.length_check is not None:
                reason = self.length_check(self._command, length)
            if reason is None and length > self.max_payload:
                reason = Reason.BAD_LENGTH
            if reason is not None:
                ev = Dropped(reason, self._command, self._seq)
                self.reset()
                return ev
            self._header, self._buf = header, bytearray()
            self._need = length
            self._state = "payload" if length else "crc"
            return None
        if st == "payload":
            if len(self._buf) == self._need:
                self._payload, self._buf, self._state = bytes(self._buf), bytearray(), "crc"
            return None
        # st == "crc"
        if len(self._buf) < 4:
            return None
        payload = self._payload if self._need else b""
        ok = int.from_bytes(self._buf, "little") == frame_crc(self._header, payload)
        command, seq = self._command, self._seq
        self.reset()
        if not ok:
            return Dropped(Reason.PAYLOAD_CRC, command, seq)
        return Frame(command, seq, payload)


def length_ok(command, length, *, max_payload, image_bytes):
    """The device's header-time length rule: None when ``length`` is valid for ``command``,
    else the :class:`Reason` to drop the frame with.

    ``IDENTIFY``, ``STATUS``, ``RESET``: 0. ``LOAD_BEGIN``: 12. ``READ_RESULT``: 1.
    ``LOAD_PARAMS``: 4 + 10k, k >= 1. ``INFER``: k * image_bytes, k >= 1. All <= max_payload.
    """
    try:
        cmd = Command(command)
    except ValueError:
        return Reason.UNKNOWN_COMMAND
    if length > max_payload:
        return Reason.BAD_LENGTH
    if cmd in (Command.IDENTIFY, Command.STATUS, Command.RESET):
        good = length == 0
    elif cmd is Command.LOAD_BEGIN:
        good = length == LOAD_BEGIN_LAYOUT.size // 8
    elif cmd is Command.READ_RESULT:
        good = length == 1
    elif cmd is Command.LOAD_PARAMS:
        k, rem = divmod(length - 4, PARAM_WORD_BYTES)
        good = length > 4 and rem == 0 and k >= 1
    else:  # INFER
        good = length > 0 and length % image_bytes == 0
    return None if good else Reason.BAD_LENGTH


def param_word_bytes(word):
    """The link bytes of one parameter word (see :mod:`shiftacc.hw.params`)."""
    return int(word).to_bytes(PARAM_WORD_BYTES, "little")


def param_limits(words):
    """Which parameter addresses a design accepts, derived from its own parameter words.

    Parameters
    ----------
    words : list of int
        :func:`shiftacc.hw.top.param_words` of the design.

    Returns
    -------
    dict
        ``{(layer, kind): (rows, lanes)}``: a word is valid when its (layer, kind) is a key,
        ``row < rows`` and ``lane < lanes``.
    """
    from ..hw.params import PARAM_LAYOUT
    # The fields by their offsets in PARAM_LAYOUT (plain integer arithmetic: an overlay load
    # is ~10^4 words, and decoding each through the layout takes seconds).
    (yo, ym), (ko, km), (ro, rm), (lo, lm) = (
        (PARAM_LAYOUT[n].offset, (1 << PARAM_LAYOUT[n].width) - 1)
        for n in ("layer", "kind", "row", "lane"))
    limits = {}
    for w in words:
        w = int(w)
        key = (w >> yo & ym, w >> ko & km)
        row, lane = w >> ro & rm, w >> lo & lm
        rows, lanes = limits.get(key, (0, 0))
        if row >= rows or lane >= lanes:
            limits[key] = (max(rows, row + 1), max(lanes, lane + 1))
    return limits


# --- design identity ---------------------------------------------------------------------

def topology(model):
    """What a bitstream fixes about a network: shapes, ops, bit widths (not the weights).

    Returns
    -------
    dict
        JSON-ready; two models with equal topologies run on the same design.
    """
    shapes = model.shapes()
    bits = model.value_bits()
    layers = []
    for i, layer in enumerate(model.layers):
        entry = {"op": layer.op, "in": list(shapes[i]), "bits": bits[i]}
        if layer.op == "replicate":
            entry["factor"] = int(layer.factor)
        if layer.op == "conv1x1":
            entry.update(cout=layer.cout, stride=int(layer.stride), requant=layer.requant)
        layers.append(entry)
    return {"input": list(model.input_shape), "input_bits": model.input_bits,
            "act_bits": model.act_bits, "weight_bits": model.weight_bits,
            "classes": len(model.classes), "layers": layers}


#: The two compositions of DESIGN.md §3 a device can be built as (``plan.engine``; a
#: dataflow plan predates the attribute, so its absence means ``"dataflow"``).
ENGINES = ("dataflow", "overlay")


def overlay_io(model):
    """What an overlay bitstream fixes about the networks it runs: the image shape, the input
    bits and the number of classes (everything else is loaded with the parameters).

    Returns
    -------
    dict
        ``{"input": [H, W, C], "input_bits": int, "classes": int}``.
    """
    return {"input": [int(v) for v in model.input_shape], "input_bits": int(model.input_bits),
            "classes": len(model.classes)}


def descriptor(model, plan):
    """The self-description a device returns in ``IDENTIFY``.

    A dataflow design (one engine per layer, built for one topology): link version, topology,
    the plan's config and stages; the host rebuilds the plan from the model and ``config`` and
    checks it reproduces the design id, so the device never needs a separate config file.

    An overlay design (``plan.engine == "overlay"``: one engine, a layer program loaded with
    the weights): ``{"link_version", "engine": "overlay", "config": the OverlayConfig as a
    dict, "io": overlay_io(model)}``. No topology: one overlay bitstream serves every model
    with that I/O that compiles for its config, so the design id must not depend on the
    layers. (The dataflow descriptor has no ``engine`` key, so every existing design id is
    unchanged.)
    """
    if plan_engine(plan) == "overlay":
        return {"link_version": LINK_VERSION, "engine": "overlay",
                "config": _overlay_config_dict(plan.config), "io": overlay_io(model)}
    stages = [[s.kind, s.layer, s.lanes_in, s.lanes_out] for s in plan.stages]
    return {"link_version": LINK_VERSION, "topology": topology(model),
            "config": plan.config, "stages": stages}


def plan_engine(plan):
    """``"overlay"`` or ``"dataflow"``: the engine a plan builds."""
    return getattr(plan, "engine", "dataflow")


def descriptor_engine(desc):
    """``"overlay"`` or ``"dataflow"``: the engine a device descriptor describes."""
    return desc.get("engine", "dataflow")


def _overlay_config_dict(config):
    """An ``OverlayConfig`` as the JSON-ready dict the descriptor holds."""
    if isinstance(config, dict):
        return dict(config)
    to_json = getattr(config, "to_json", None)
    if to_json is not None:
        out = to_json()
        return json.loads(out) if isinstance(out, str) else dict(out)
    import dataclasses
    return dataclasses.asdict(config)


def io_differences(device_io, model_io):
    """Human-readable differences between two :func:`overlay_io` dicts (empty when equal).

    Returns
    -------
    list of str
        E.g. ``"classes is 10 on the device, 4 in the model"``.
    """
    out = []
    for key in ("input", "input_bits", "classes"):
        a, b = device_io.get(key), model_io.get(key)
        if a != b:
            what = {"input": "input shape"}.get(key, key.replace("_", " "))
            out.append(f"{what} is {a} on the device, {b} in the model")
    return out


def design_id(desc):
    """64-bit design id: SHA-256 of the descriptor's canonical JSON (topology, plan and link
    version), first 8 bytes, little-endian."""
    text = json.dumps(desc, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def descriptor_blob(desc):
    """The descriptor as the device stores it (zlib-compressed canonical JSON)."""
    return zlib.compress(json.dumps(desc, sort_keys=True, separators=(",", ":")).encode(), 9)


def parse_descriptor_blob(blob):
    """Inverse of :func:`descriptor_blob`.

    Raises
    ------
    ValueError
        The blob is not a descriptor.
    """
    try:
        desc = json.loads(zlib.decompress(bytes(blob)).decode())
    except (zlib.error, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"the device's descriptor is unreadable ({e})") from None
    if not isinstance(desc, dict):
        raise ValueError("the device's descriptor is not a JSON object")
    engine = desc.get("engine", "dataflow")
    if engine == "overlay":
        io = desc.get("io")
        if not isinstance(io, dict) or not isinstance(desc.get("config"), dict) or \
                not isinstance(io.get("input"), list) or len(io["input"]) != 3:
            raise ValueError("the device's overlay descriptor has no usable io/config")
    elif engine != "dataflow":
        raise ValueError(f"the device's descriptor names an unknown engine {engine!r} "
                         f"(this driver knows {', '.join(ENGINES)})")
    elif "topology" not in desc:
        raise ValueError("the device's descriptor has no topology")
    return desc


def topology_differences(device_topo, model_topo):
    """Human-readable differences between two :func:`topology` dicts (empty when equal).

    Returns
    -------
    list of str
        E.g. ``"layer 3 (conv1x1): cout is 24 on the device, 32 in the model"``.
    """
    out = []
    for key in ("input", "input_bits", "act_bits", "weight_bits", "classes"):
        a, b = device_topo.get(key), model_topo.get(key)
        if a != b:
            out.append(f"{key.replace('_', ' ')} is {a} on the device, {b} in the model")
    dl, ml = device_topo.get("layers", []), model_topo.get("layers", [])
    if len(dl) != len(ml):
        out.append(f"the device has {len(dl)} layers, the model {len(ml)}")
    for i, (a, b) in enumerate(zip(dl, ml)):
        if a == b:
            continue
        if a.get("op") != b.get("op"):
            out.append(f"layer {i} is {a.get('op')} on the device, {b.get('op')} in the model")
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"layer {i} ({a['op']}): {key} is {a.get(key)} on the device, "
                           f"{b.get(key)} in the model")
    return out
