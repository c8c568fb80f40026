"""A pure-Python model of the device end of the host link, built from :mod:`shiftacc.sw.protocol`.

:class:`DeviceModel` follows the device rules of the protocol docstring (header checks, payload
checks, CRC, execution in arrival order) and answers every frame the way the gateware does; its
logits come from the parameters *as loaded*: for a dataflow design the loaded words are decoded
back into a zeroed copy of the model and run by the golden model; for an overlay design
(``plan.engine == "overlay"``) they are decoded into the engine's memory images (program,
gather, weight and channel tables) and run by the overlay's NumPy executor. Either way a wrong
or missing word gives wrong logits.
:class:`ModelPort` puts it behind a real pyserial ``loop://`` port, with fault injection, so
that :class:`shiftacc.sw.device.Device` is tested over the same code path it uses on a board.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections import Counter, OrderedDict

import numpy as np

from ..hw.params import KIND_FIELDS, SCALAR_IDS, ParamKind, decode_word
from . import protocol as P

__all__ = ["DeviceModel", "ModelPort", "default_watchdog_cycles"]


def default_watchdog_cycles(clock_hz, baud):
    """The watchdog the gateware uses: 64 character times at ``baud`` (640 cycles for a byte
    stream), and at least 10 ms."""
    return max(64 * 10 * clock_hz // baud if baud else 640, clock_hz // 100)


def _field(layout, name):
    f = layout[name]
    return f.offset, (1 << f.width) - 1


def _signed(v, bits):
    return v - (1 << bits) if v >> (bits - 1) & 1 else v


class DeviceModel:
    """The device: link engine + accelerator, as a byte-in / byte-out function.

    Parameters
    ----------
    model : models.artifact.Model
        The topology the "bitstream" was built for (its weights are *not* used: logits come
        from the parameters loaded over the link). For an overlay plan only its I/O matters:
        any model with that I/O that compiles for the plan's config loads.
    plan : hw.plan.Plan or hw.overlay_program.OverlayPlan
    clock_hz, baud : int
        Reported in ``IDENTIFY`` (``baud`` 0: byte streams, no UART).
    slots : int
        Receive slots reported in ``IDENTIFY``; also how many ``INFER`` replies
        ``READ_RESULT`` can re-send.
    max_payload : int, optional
        Longest request payload (default ``max(1024, image_bytes)``).
    watchdog_cycles : int, optional
        Default :func:`default_watchdog_cycles`.
    """

    def __init__(self, model, plan, *, clock_hz=48_000_000, baud=3_000_000, slots=4,
                 max_payload=None, watchdog_cycles=None):
        from ..hw.top import param_words
        self.model, self.plan = model, plan
        h, w, c = model.input_shape
        self.image_bytes = int(h * w * c)
        self.classes = len(model.classes)
        self.input_bits = int(model.input_bits)
        self.clock_hz, self.baud, self.slots = int(clock_hz), int(baud), int(slots)
        self.max_payload = int(max_payload if max_payload is not None
                               else max(1024, self.image_bytes))
        if not self.image_bytes <= self.max_payload <= 0xFFFF:
            raise ValueError(f"max_payload {self.max_payload} must hold one image "
                             f"({self.image_bytes} bytes) and fit 16 bits")
        self.watchdog_cycles = int(watchdog_cycles if watchdog_cycles is not None
                                   else default_watchdog_cycles(self.clock_hz, self.baud))
        self.words = param_words(model, plan)
        self.limits = P.param_limits(self.words)
        self.descriptor = P.descriptor(model, plan)
        self.design_id = P.design_id(self.descriptor)
        self._blob = P.descriptor_blob(self.descriptor)
        #: ``"overlay"``: one program-driven engine (words -> memory images -> the NumPy
        #: executor of the program); ``"dataflow"``: one engine per layer.
        self.engine = P.plan_engine(plan)
        self._stage_of = {} if self.engine == "overlay" else {
            s.layer: s for s in plan.stages
            if s.layer is not None and s.kind not in ("subsample", "channel_map")}
        self._v2_maps = {}      # layer -> {(kind, row, lane): flat index} of v2 layers
        # The header-time checks of rule 1, in order (UNKNOWN_COMMAND before BAD_LENGTH, so
        # the parser's own length limit is left at 0xFFFF and length_ok decides).
        self._parser = P.FrameParser(
            0xFFFF, lambda cmd, n: P.length_ok(cmd, n, max_payload=self.max_payload,
                                               image_bytes=self.image_bytes))
        self._hdr = None        # header bytes as received (for the seq of a NAK)
        #: Frames that passed both CRCs, by command name (for tests).
        self.executed = Counter()
        #: Reasons of every dropped frame, in order (for tests).
        self.drops = []
        self._t0 = time.monotonic()
        self.reset_state()

    # --- state -------------------------------------------------------------------------

    def reset_state(self):
        """What ``RESET`` clears: parameters, load state, stored results and counters."""
        self._loaded = []          # words as received, in order
        self._load_open = False    # a LOAD_BEGIN was accepted (and no RESET since)
        self._net = None           # model rebuilt from the loaded words (when complete)
        self._results = OrderedDict()   # seq -> reply bytes of the last `slots` INFERs
        self.counters = {"frames_ok": 0, "frames_dropped": 0, "images_done": 0,
                         "rx_bytes": 0, "tx_bytes": 0, "last_drop": P.Reason.OK}

    @property
    def params_ready(self):
        return len(self._loaded) == len(self.words)

    @property
    def in_frame(self):
        """True while a frame is partly received (the watchdog is armed)."""
        return self._parser.in_frame

    @property
    def watchdog_seconds(self):
        return self.watchdog_cycles / self.clock_hz

    # --- bytes in, bytes out -----------------------------------------------------------

    def feed(self, data):
        """Receive ``data``; return the reply bytes it causes (possibly empty)."""
        out = bytearray()
        parser = self._parser
        self.counters["rx_bytes"] += len(data)
        for b in bytes(data):
            was_in = parser.in_frame
            events = parser.feed((b,))
            if parser.in_frame:
                if not was_in:
                    self._hdr = bytearray()          # sync complete: header bytes follow
                elif self._hdr is not None and len(self._hdr) < P.HEADER_BYTES + 1:
                    self._hdr.append(b)
            for ev in events:
                out += self._event(ev, b)
        return bytes(out)

    def abandon(self):
        """The watchdog fired: drop a partial frame; return its ``TIMEOUT`` reply (or b"")."""
        ev = self._parser.abandon()
        return b"" if ev is None else self._event(ev)

    def _event(self, ev, last=None):
        if isinstance(ev, P.Dropped):
            if ev.command is None:
                hdr = self._hdr or b""
                if last is not None and ev.reason is P.Reason.HEADER_CRC:
                    hdr = bytes(hdr) + bytes((last,))
                seq = hdr[1] if len(hdr) > 1 else 0      # the seq as received
                return self._drop(ev.reason, P.NAK, seq)
            return self._drop(ev.reason, ev.command | P.REPLY, ev.seq)
        return self._execute(ev)

    def _reply(self, command, seq, payload):
        frame = P.encode_frame(command, seq, payload)
        self.counters["tx_bytes"] += len(frame)
        return frame

    def _drop(self, reason, command, seq):
        self.counters["frames_dropped"] += 1
        self.drops.append(reason)
        self.counters["last_drop"] = reason
        return self._reply(command, seq, bytes((reason.value,)))

    def _ok(self, frame, body=b"", counted=True):
        if counted:
            self.counters["frames_ok"] += 1
        return self._reply(frame.command | P.REPLY, frame.seq, b"\x00" + bytes(body))

    # --- execution (rules 2 and 4) -----------------------------------------------------

    def _execute(self, fr):
        cmd = P.Command(fr.command)
        self.executed[cmd.name] += 1
        R = P.Reason
        if cmd is P.Command.IDENTIFY:
            return self._ok(fr, self.identify_body())
        if cmd is P.Command.STATUS:
            # As the gateware: the STATUS frame counts itself among frames_ok.
            self.counters["frames_ok"] += 1
            body = self.status_body()
            self.counters["frames_ok"] -= 1
            return self._ok(fr, body)
        if cmd is P.Command.RESET:
            # As the gateware: the counters are cleared where RESET executes, and RESET is
            # not counted among frames_ok (its reply is still OK, and its bytes are sent).
            self.reset_state()
            return self._ok(fr, counted=False)
        if cmd is P.Command.LOAD_BEGIN:
            req = P.layout_from_bytes(P.LOAD_BEGIN_LAYOUT, fr.payload)
            if int(req.design_id) != self.design_id or int(req.words) != len(self.words):
                return self._drop(R.DESIGN_MISMATCH, fr.command | P.REPLY, fr.seq)
            self._loaded, self._net, self._load_open = [], None, True
            self._results.clear()
            return self._ok(fr, self._load_reply())
        if cmd is P.Command.LOAD_PARAMS:
            offset = int(P.layout_from_bytes(P.LOAD_PARAMS_PREFIX, fr.payload).offset)
            raw = fr.payload[4:]
            words = [int.from_bytes(raw[k:k + P.PARAM_WORD_BYTES], "little")
                     for k in range(0, len(raw), P.PARAM_WORD_BYTES)]
            if not all(self._address_ok(w) for w in words):
                return self._drop(R.PARAM_ADDRESS, fr.command | P.REPLY, fr.seq)
            if not self._load_open:
                return self._drop(R.NOT_LOADING, fr.command | P.REPLY, fr.seq)
            done = len(self._loaded)
            # Rule 4: a frame wholly below the words loaded is a duplicate (acknowledged, not
            # written); a gap, a partial overlap or words past the count are out of order.
            if offset > done or (offset < done < offset + len(words)) or (
                    offset == done and done + len(words) > len(self.words)):
                return self._drop(R.PARAM_ORDER, fr.command | P.REPLY, fr.seq)
            if offset == done:
                self._loaded += words
                if self.params_ready:
                    self._net = self._rebuild()
            return self._ok(fr, self._load_reply())
        if cmd is P.Command.INFER:
            if max(fr.payload) >= 1 << self.input_bits:
                return self._drop(R.PIXEL_RANGE, fr.command | P.REPLY, fr.seq)
            if not self.params_ready:
                return self._drop(R.PARAMS_INCOMPLETE, fr.command | P.REPLY, fr.seq)
            k = len(fr.payload) // self.image_bytes
            h, w, c = self.model.input_shape
            images = np.frombuffer(fr.payload, np.uint8).reshape(k, h, w, c)
            logits = self._logits(images).astype("<i4")
            self.counters["images_done"] += k
            body = logits.tobytes()
            reply = self._ok(fr, body)
            self._results.pop(fr.seq, None)
            self._results[fr.seq] = body
            while len(self._results) > self.slots:
                self._results.popitem(last=False)
            return reply
        # READ_RESULT
        # Rule 4: the stored body, under READ_RESULT's own command and seq (as the gateware).
        stored = self._results.get(fr.payload[0])
        if stored is None:
            return self._drop(R.NOT_FOUND, fr.command | P.REPLY, fr.seq)
        return self._ok(fr, stored)

    def _address_ok(self, word):
        o, m = _field_cache["layer"]
        layer = word >> o & m
        o, m = _field_cache["kind"]
        kind = word >> o & m
        lim = self.limits.get((layer, kind))
        if lim is None:
            return False
        o, m = _field_cache["row"]
        o2, m2 = _field_cache["lane"]
        return (word >> o & m) < lim[0] and (word >> o2 & m2) < lim[1]

    def _load_reply(self):
        return P.layout_bytes(P.LOAD_REPLY_LAYOUT, {"words_loaded": len(self._loaded),
                                                    "ready": int(self.params_ready)})

    def identify_body(self):
        fixed = P.layout_bytes(P.IDENTIFY_LAYOUT, {
            "link_version": P.LINK_VERSION, "design_id": self.design_id,
            "clock_hz": self.clock_hz, "baud": self.baud, "max_payload": self.max_payload,
            "slots": self.slots, "image_bytes": self.image_bytes, "classes": self.classes,
            "input_bits": self.input_bits, "param_words": len(self.words),
            "watchdog_cycles": self.watchdog_cycles})
        return fixed + self._blob

    def status_body(self):
        c = self.counters
        cycles = int((time.monotonic() - self._t0) * self.clock_hz)
        return P.layout_bytes(P.STATUS_LAYOUT, {
            "flags": {"params_ready": int(self.params_ready),
                      "loading": int(self._load_open and not self.params_ready), "busy": 0},
            "last_drop": c["last_drop"], "words_loaded": len(self._loaded),
            "frames_ok": c["frames_ok"] & 0xFFFFFFFF,
            "frames_dropped": c["frames_dropped"] & 0xFFFFFFFF, "replies_lost": 0,
            "images_done": c["images_done"] & 0xFFFFFFFF,
            "rx_bytes": c["rx_bytes"] & 0xFFFFFFFF, "tx_bytes": c["tx_bytes"] & 0xFFFFFFFF,
            "line_errors": 0, "cycles": cycles & ((1 << 64) - 1)})

    # --- the loaded parameters, back into arrays ---------------------------------------

    def _logits(self, images):
        """The logits of ``images`` computed from the loaded parameters only."""
        if self.engine == "overlay":
            from ..hw.overlay_program import run_overlay
            return np.asarray(run_overlay(self._net, images))
        from ..models import golden
        return golden.run(self._net, images, threads=1)

    def _rebuild(self):
        """What the loaded words make of the device.

        Overlay: the engine's memory images decoded from the words alone
        (``hw.overlay_program.decode_param_words``: program, gather, weight and channel
        tables), which the executor runs; nothing of the model's layers is used.
        Dataflow: :meth:`_rebuild_model`."""
        if self.engine == "overlay":
            from ..hw.overlay_program import decode_param_words
            # Every load writes every memory entry (hw.top.overlay_param_words), so the
            # memories are exactly the words; decoded into zeroed memories, a word writing 0
            # changes nothing and is skipped (most of a load is unused entries).
            o, m = _field_cache["data"]
            return decode_param_words([w for w in self._loaded if w >> o & m],
                                      self.plan.config)
        return self._rebuild_model()

    def _rebuild_model(self):
        """A copy of the model whose parameter arrays hold exactly the loaded words (zero
        where no word landed), decoded at the addresses :mod:`shiftacc.hw.params` defines."""
        net = copy.deepcopy(self.model)
        for i, layer in enumerate(net.layers):
            if layer.op == "conv1x1":
                layer.weight = np.zeros_like(layer.weight)
                layer.bias = np.zeros_like(layer.bias)
                if layer.m is not None:
                    layer.m, layer.sh = np.zeros_like(layer.m), np.zeros_like(layer.sh)
            elif layer.op == "shift":
                layer.shifts = np.zeros_like(layer.shifts)
            elif layer.op == "gap":
                layer.m, layer.sh = 0, 0
            elif layer.op in KIND_FIELDS:
                self._clear_v2(layer)
        for word in self._loaded:
            li, kind, row, lane, value = (int(x) if not hasattr(x, "value") else x
                                          for x in decode_word(word))
            kind = ParamKind(kind.value if hasattr(kind, "value") else kind)
            st, layer = self._stage_of[li], net.layers[li]
            value = int(value)
            if layer.op in KIND_FIELDS:
                self._put_v2(li, st, layer, kind, row, lane, value)
            elif st.kind == "conv":
                p_in, p_out = st.lanes_in, st.lanes_out
                if kind is ParamKind.WEIGHT:
                    nbi = -(-layer.cin // p_in)
                    o = (row // nbi) * p_out + lane // p_in
                    ci = (row % nbi) * p_in + lane % p_in
                    layer.weight[o, ci] = np.array(_signed(value, 32)).astype(
                        layer.weight.dtype)
                else:
                    o = row * p_out + lane
                    arr = {ParamKind.BIAS: layer.bias, ParamKind.M: layer.m,
                           ParamKind.SH: layer.sh}[kind]
                    arr[o] = np.array(_signed(value, 32)).astype(arr.dtype)
            elif st.kind == "shift":
                c = row * st.lanes_in + lane
                layer.shifts[c] = (_signed(value & 0xFF, 8), _signed(value >> 8 & 0xFF, 8))
            else:  # gap
                if kind is ParamKind.M:
                    layer.m = value
                else:
                    layer.sh = value
        return net


    @staticmethod
    def _clear_v2(layer):
        for key in SCALAR_IDS[layer.op]:
            setattr(layer, key, 0)
        for name in KIND_FIELDS[layer.op].values():
            arr = getattr(layer, name)
            if arr is not None:
                setattr(layer, name, np.zeros_like(arr))

    def _put_v2(self, li, st, layer, kind, row, lane, value):
        """Store one word of a version-2 layer where the word functions put that address.

        The address map comes from the word function itself, run on a copy whose arrays hold
        their own flat indices: no second copy of the layout."""
        if kind is ParamKind.SCALAR:
            setattr(layer, SCALAR_IDS[layer.op][lane], _signed(value, 32))
            return
        if li not in self._v2_maps:
            from ..hw.top import stage_param_words
            probe = copy.deepcopy(self.model.layers[li])
            for name in KIND_FIELDS[layer.op].values():
                arr = getattr(probe, name)
                if arr is not None:
                    setattr(probe, name, np.arange(arr.size).reshape(arr.shape))
            amap = {}
            for word in stage_param_words(st, probe):
                _, k, r, ln, d = decode_word(word)
                if k is not ParamKind.SCALAR:
                    amap[(k, r, ln)] = int(d)
            self._v2_maps[li] = amap
        arr = getattr(layer, KIND_FIELDS[layer.op][kind])
        arr.flat[self._v2_maps[li][(kind, row, lane)]] = np.array(
            _signed(value, 32)).astype(arr.dtype)


_field_cache = {}


def _init_fields():
    from ..hw.params import PARAM_LAYOUT
    for name in ("layer", "kind", "row", "lane", "data"):
        _field_cache[name] = _field(PARAM_LAYOUT, name)


_init_fields()


class ModelPort:
    """A serial-port-like object: what the driver writes goes through
    :meth:`DeviceModel.feed`, and the replies come back through a pyserial ``loop://`` port.

    Also emulates the device watchdog in real time (a frame left incomplete for longer than
    ``watchdog_cycles / clock_hz`` is abandoned with a ``TIMEOUT`` reply).

    Fault injection (all apply to reply bytes, in order):

    - ``drop_reply_bytes(n, after=0)``: lose ``n`` reply bytes, starting ``after`` bytes from now.
    - ``corrupt_reply_byte(after=0, mask=0x01)``: flip bits of one reply byte.
    - ``silent = True``: the device stops answering (requests are still consumed).
    - ``delay = seconds``: replies arrive this much later (a background thread writes them).
    - ``corrupt_request_byte(after=0, mask=0x01)``: flip bits of one request byte on its way
      to the device; ``drop_request_bytes(n, after=0)``: lose request bytes.

    Parameters
    ----------
    device : DeviceModel
    timeout : float
        Read timeout of the port (the ``timeout`` attribute, settable).
    """

    def __init__(self, device, timeout=1.0):
        import serial
        self.device = device
        self._loop = serial.serial_for_url("loop://", timeout=timeout, do_not_open=True)
        # Replies wait in the loop port until read; a large queue so that a window of long
        # replies never blocks the single-threaded writer.
        self._loop.buffer_size = 1 << 24
        self._loop.open()
        self.silent = False
        self.delay = 0.0
        self._drops = []           # [start, count] in reply-byte positions
        self._corrupt = []         # [position, mask]
        self._req_corrupt = []
        self._req_drops = []
        self._rx_pos = 0           # reply bytes produced so far
        self._tx_pos = 0           # request bytes received so far
        self._last_byte = time.monotonic()
        self._q = None
        self._worker = None
        self.is_open = True

    # --- fault injection ---------------------------------------------------------------

    def drop_reply_bytes(self, n, after=0):
        self._drops.append([self._rx_pos + after, n])

    def corrupt_reply_byte(self, after=0, mask=0x01):
        self._corrupt.append([self._rx_pos + after, mask])

    def corrupt_request_byte(self, after=0, mask=0x01):
        self._req_corrupt.append([self._tx_pos + after, mask])

    def drop_request_bytes(self, n, after=0):
        self._req_drops.append([self._tx_pos + after, n])

    # --- the pyserial surface ----------------------------------------------------------

    @property
    def timeout(self):
        return self._loop.timeout

    @timeout.setter
    def timeout(self, value):
        self._loop.timeout = value

    @property
    def in_waiting(self):
        self._watchdog()
        return self._loop.in_waiting

    def read(self, size=1):
        self._watchdog()
        return self._loop.read(size)

    def write(self, data):
        data = bytearray(data)
        start, n_in = self._tx_pos, len(data)
        for pos, mask in self._req_corrupt:
            if start <= pos < start + len(data):
                data[pos - start] ^= mask
        self._req_corrupt = [c for c in self._req_corrupt if c[0] >= start + len(data)]
        if self._req_drops:
            data = bytearray(b for k, b in enumerate(data)
                             if not any(s <= start + k < s + n for s, n in self._req_drops))
            self._req_drops = [d for d in self._req_drops if d[0] + d[1] > start + n_in]
        self._tx_pos += n_in
        self._watchdog()
        self._last_byte = time.monotonic()
        self._emit(self.device.feed(bytes(data)))
        return n_in

    def flush(self):
        pass

    def reset_input_buffer(self):
        self._loop.reset_input_buffer()

    def reset_output_buffer(self):
        pass

    def close(self):
        if self._q is not None:
            self._q.put(None)
            self._worker.join(timeout=5)
            self._q = None
        self._loop.close()
        self.is_open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- internals ---------------------------------------------------------------------

    def _watchdog(self):
        if self.device.in_frame and \
                time.monotonic() - self._last_byte > self.device.watchdog_seconds:
            self._emit(self.device.abandon())

    def _emit(self, reply):
        if not reply:
            return
        out = bytearray(reply)
        start, end = self._rx_pos, self._rx_pos + len(out)
        for pos, mask in self._corrupt:
            if start <= pos < end:
                out[pos - start] ^= mask
        self._corrupt = [c for c in self._corrupt if c[0] >= end]
        keep = bytearray()
        for k, b in enumerate(out):
            pos = start + k
            if not any(s <= pos < s + n for s, n in self._drops):
                keep.append(b)
        self._drops = [d for d in self._drops if d[0] + d[1] > end]
        self._rx_pos = end
        if self.silent or not keep:
            return
        if self.delay > 0:
            if self._q is None:
                self._q = queue.Queue()
                self._worker = threading.Thread(target=self._delayed, daemon=True)
                self._worker.start()
            self._q.put((time.monotonic() + self.delay, bytes(keep)))
        else:
            self._loop.write(bytes(keep))

    def _delayed(self):
        while True:
            item = self._q.get()
            if item is None:
                return
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if self._loop.is_open:
                self._loop.write(data)
