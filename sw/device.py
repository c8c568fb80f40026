"""The host driver of the link (DESIGN.md §4): one code path for a board's serial port, the
simulator's ``socket://`` endpoint and ``loop://`` in tests.

Every byte of the link is defined in :mod:`shiftacc.sw.protocol`. The driver pipelines frames
(at most ``slots`` unanswered frames, the device's receive slots), matches replies by sequence
number, retries on line errors and lost replies (a bounded number of times per frame), and
never waits unboundedly: ``timeout`` is the longest silence it tolerates while a reply is due.

Errors (see :mod:`shiftacc.sw.errors` for the exit statuses):

- :class:`DesignMismatch` (a :class:`~shiftacc.sw.errors.UsageError`, exit 2): the model does
  not match the device's design (the message names the differences), or the device speaks
  another link version.
- :class:`LinkError` (a :class:`~shiftacc.sw.errors.HardwareFailure`, exit 1) and its
  subclasses :class:`LinkTimeout` (no reply within the bound; the message says what was
  waited for), :class:`DeviceError` (the device refused a frame for a reason that sending
  again cannot fix; names the reason and the command) and :class:`ProtocolError` (a reply
  that makes no sense for its request).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np

from . import protocol as P
from .errors import EXIT_LINK, HardwareFailure, InternalError, UsageError

__all__ = ["Device", "Identity", "LinkError", "LinkTimeout", "DeviceError", "ProtocolError",
           "DesignMismatch"]


class LinkError(HardwareFailure, RuntimeError):
    """The link failed: the device could not be opened, stopped answering, or refused a frame.

    Exit status 5 (:data:`~shiftacc.sw.errors.EXIT_LINK`), so a script can tell "no board or
    not answering" from "wrong logits" (1).
    """

    status = EXIT_LINK


class LinkTimeout(LinkError, TimeoutError):
    """No reply within the bound (``timeout`` of silence, ``retries`` resends); the message
    says what was waited for and from where."""


class DeviceError(LinkError):
    """The device dropped a frame for a reason sending it again cannot fix.

    Attributes
    ----------
    reason : protocol.Reason or None
    command : protocol.Command or None
    """

    def __init__(self, message, reason=None, command=None):
        super().__init__(message)
        self.reason, self.command = reason, command


class ProtocolError(LinkError):
    """A reply that passed its CRC but does not fit its request (wrong length, unreadable
    descriptor, a design id that does not match its own descriptor)."""


class DesignMismatch(UsageError):
    """The model (or this driver's link version) does not match the device's design."""


@dataclass
class Identity:
    """What ``IDENTIFY`` reports (:data:`protocol.IDENTIFY_LAYOUT` and the descriptor)."""

    link_version: int
    design_id: int
    clock_hz: int
    baud: int
    max_payload: int
    slots: int
    image_bytes: int
    classes: int
    input_bits: int
    param_words: int
    watchdog_cycles: int
    descriptor: dict = field(default_factory=dict)

    @property
    def engine(self):
        """``"dataflow"`` or ``"overlay"`` (the composition the design was built as)."""
        return P.descriptor_engine(self.descriptor)

    @property
    def input_shape(self):
        """(H, W, C) of one image."""
        if self.engine == "overlay":
            return tuple(self.descriptor["io"]["input"])
        return tuple(self.descriptor["topology"]["input"])

    @property
    def images_per_frame(self):
        return max(1, self.max_payload // self.image_bytes)

    @property
    def words_per_frame(self):
        return max(1, (self.max_payload - 4) // P.PARAM_WORD_BYTES)


class _Req:
    """One request of a pipelined exchange (resent under new seqs until answered)."""

    __slots__ = ("index", "command", "payload", "label", "check", "tries", "seq", "cmd_sent",
                 "sent_at", "sent_no", "mark_at_send", "last_failure", "detail", "prev_mark",
                 "held")

    def __init__(self, index, command, payload, label, check=None):
        self.index, self.command, self.payload = index, command, bytes(payload)
        self.label, self.check = label, check
        self.tries = 0              # resends so far
        self.seq = None             # seq of the latest send
        self.cmd_sent = command     # command of the latest send (READ_RESULT for INFER)
        self.sent_at = 0.0
        self.sent_no = 0            # frames sent by the driver before the latest send
        self.mark_at_send = 0       # INFER results confirmed when the latest INFER was sent
        self.last_failure = None    # "timeout", "overtaken", "mismatch" or a Reason
        self.detail = None
        self.prev_mark = None
        self.held = False

    def __lt__(self, other):
        return self.index < other.index


class _BadReply(Exception):
    pass


def _cmd_name(command):
    try:
        return P.Command(command).name
    except ValueError:
        return f"command 0x{command:02x}"


class Device:
    """A shiftacc device on a serial port (board UART, ``socket://`` simulator, ``loop://``).

    Parameters
    ----------
    port : serial.Serial or file-like
        An open port: ``read(size)``, ``write(data)``, ``in_waiting``, a settable ``timeout``
        attribute, ``reset_input_buffer()``, ``close()``.
    timeout : float
        Longest silence tolerated while a reply is due, in seconds.
    retries : int
        Resends of one frame before giving up.
    url : str, optional
        Named in error messages.
    """

    POLL = 0.02   # longest single blocking read; deadlines are checked between reads

    def __init__(self, port, *, timeout=2.0, retries=3, url=None):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if int(retries) < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.port, self.timeout, self.retries = port, float(timeout), int(retries)
        self.url = url or getattr(port, "name", None) or getattr(port, "portstr", None) \
            or type(port).__name__
        self._parser = P.FrameParser()
        self._bulk = type(port).__module__.endswith("protocol_socket")
        self._seq = 0
        self._identity = None
        self._stats = {"bytes_sent": 0, "bytes_received": 0, "frames_sent": 0,
                       "retries": 0, "seconds": 0.0, "images": 0, "words": 0}
        # READ_RESULT safety: INFER results confirmed so far, and for each seq the count at
        # the time an INFER last used it (see _rr_safe).
        self._confirmed = 0
        self._mark = {}
        try:
            port.timeout = min(self.POLL, self.timeout)
        except (AttributeError, ValueError):
            pass
        try:
            port.reset_input_buffer()
        except (AttributeError, OSError):
            pass

    @classmethod
    def open(cls, url, *, timeout=2.0, baudrate=3_000_000, retries=3):
        """Open ``url`` with ``serial.serial_for_url`` (``/dev/ttyUSB1``, ``COM3``,
        ``socket://HOST:PORT``, ``loop://``).

        Raises
        ------
        LinkError
            The port cannot be opened (the message names the URL and what to check).
        """
        import serial
        try:
            port = serial.serial_for_url(url, baudrate=baudrate,
                                         timeout=min(cls.POLL, timeout),
                                         write_timeout=max(timeout, 1.0))
        except (serial.SerialException, OSError, ValueError) as e:
            if str(url).startswith("socket://"):
                hint = "is `shiftacc serve` running and listening on that address?"
            elif str(url).startswith(("rfc2217://", "spy://", "loop://", "hwgrep://")):
                hint = "check the URL"
            else:
                hint = ("is the board plugged in and powered, is this its serial port, and "
                        "may you open it (dialout group)?")
            raise LinkError(f"cannot open the device at {url}: {e}; {hint}") from None
        return cls(port, timeout=timeout, retries=retries, url=url)

    # --- context manager ---------------------------------------------------------------

    def close(self):
        try:
            self.port.close()
        except Exception:   # noqa: BLE001 (closing is best effort)
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stats(self):
        """Link statistics so far: ``bytes_sent``, ``bytes_received``, ``frames_sent``,
        ``retries``, ``seconds`` (time spent in exchanges), ``images``, ``words``."""
        return dict(self._stats)

    # --- commands ------------------------------------------------------------------------

    @property
    def identity(self):
        """The device's :class:`Identity` (asked once)."""
        if self._identity is None:
            self.identify()
        return self._identity

    def identify(self):
        """Ask the device who it is.

        Raises
        ------
        DesignMismatch
            The device speaks another link version.
        ProtocolError
            The reply is unreadable or its design id does not match its descriptor.
        """
        body = self._one(P.Command.IDENTIFY, b"", "IDENTIFY", check=self._check_identify,
                         window=1)
        self._identity = body
        return body

    def _check_identify(self, body):
        if not body:
            raise _BadReply("empty IDENTIFY reply")
        if body[0] != P.LINK_VERSION:
            raise DesignMismatch(
                f"the device at {self.url} speaks link version {body[0]}, this driver "
                f"version {P.LINK_VERSION}: use a shiftacc release whose protocol matches "
                f"the bitstream (or rebuild the bitstream)")
        n = P.IDENTIFY_LAYOUT.size // 8
        if len(body) < n:
            raise _BadReply(f"IDENTIFY reply of {len(body)} bytes, expected at least {n}")
        f = P.layout_from_bytes(P.IDENTIFY_LAYOUT, body)
        try:
            desc = P.parse_descriptor_blob(body[n:])
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        ident = Identity(**{k: int(getattr(f, k)) for k in
                            ("link_version", "design_id", "clock_hz", "baud", "max_payload",
                             "slots", "image_bytes", "classes", "input_bits", "param_words",
                             "watchdog_cycles")}, descriptor=desc)
        if P.design_id(desc) != ident.design_id:
            raise ProtocolError(f"the device at {self.url} reports design id "
                                f"{ident.design_id:016x} but its descriptor hashes to "
                                f"{P.design_id(desc):016x}")
        if ident.slots < 1 or ident.image_bytes < 1 or ident.max_payload < ident.image_bytes:
            raise ProtocolError(f"the device at {self.url} reports unusable limits: "
                                f"{ident.slots} slots, max payload {ident.max_payload}, image "
                                f"{ident.image_bytes} bytes")
        return ident

    def plan_for(self, model):
        """The plan the device's design was built with, rebuilt for ``model``.

        A dataflow design runs one topology: the model's must equal the device's, and the
        plan rebuilt from the device's config must reproduce its design id. An overlay design
        (the descriptor's ``engine``) runs every model with its input shape, input bits and
        class count that compiles for its config: the model is compiled with that config
        (``hw.overlay_program.compile_overlay``).

        Raises
        ------
        DesignMismatch
            The model's topology (dataflow) or I/O (overlay) differs, the model does not fit
            the overlay's config (the compiler's words), or the plan rebuilt from the
            device's config does not give the device's design id; the message names the
            differences.
        """
        from ..hw.plan import PlanError, plan_network
        ident = self.identity
        dev = ident.descriptor
        if ident.engine == "overlay":
            return self._overlay_plan_for(model)
        diffs = P.topology_differences(dev.get("topology", {}), P.topology(model))
        if diffs:
            raise DesignMismatch(f"the model does not match the design on {self.url} "
                                 f"({ident.design_id:016x}): " + "; ".join(diffs))
        try:
            plan = plan_network(model, dev.get("config"))
        except (PlanError, ValueError, KeyError, TypeError) as e:
            raise DesignMismatch(f"the device's plan config does not plan this model "
                                 f"({e})") from None
        mine = P.descriptor(model, plan)
        if P.design_id(mine) != ident.design_id:
            why = []
            if mine["link_version"] != dev.get("link_version"):
                why.append(f"link version {dev.get('link_version')} on the device, "
                           f"{mine['link_version']} here")
            if mine["config"] != dev.get("config"):
                why.append(f"plan config {dev.get('config')} on the device, "
                           f"{mine['config']} here")
            ds, ms = dev.get("stages", []), mine["stages"]
            if len(ds) != len(ms):
                why.append(f"the device's plan has {len(ds)} stages, this planner "
                           f"{len(ms)}")
            for k, (a, b) in enumerate(zip(ds, ms)):
                if list(a) != list(b):
                    why.append(f"stage {k} is {a} on the device, {b} here "
                               "([kind, layer, lanes_in, lanes_out])")
                    break
            if not why:
                why.append("the descriptors differ")
            raise DesignMismatch(
                f"the topology matches the design on {self.url} but the plan differs (was "
                f"the bitstream built by another shiftacc version?): " + "; ".join(why))
        return plan

    def _overlay_plan_for(self, model):
        """An overlay device runs every model with its I/O that compiles for its config: the
        I/O is compared, the model compiled with the device's config (never a topology
        comparison), and the rebuilt descriptor must give the device's design id."""
        from ..hw.overlay_program import OverlayConfig, OverlayFitError, compile_overlay
        ident = self.identity
        dev = ident.descriptor
        where = f"the overlay design on {self.url} ({ident.design_id:016x})"
        diffs = P.io_differences(dev["io"], P.overlay_io(model))
        if diffs:
            raise DesignMismatch(f"the model does not match {where}: " + "; ".join(diffs))
        try:
            config = OverlayConfig.from_json(dev["config"])
        except (ValueError, KeyError, TypeError) as e:
            raise DesignMismatch(f"the overlay config of {where} is not one this driver "
                                 f"knows ({e}): was the bitstream built by another shiftacc "
                                 f"version?") from None
        try:
            plan = compile_overlay(model, config)
        except OverlayFitError as e:
            raise DesignMismatch(f"the model does not fit {where}: {e}") from None
        mine = P.descriptor(model, plan)
        if P.design_id(mine) != ident.design_id:
            raise DesignMismatch(
                f"the model's I/O matches {where} but the overlay config does not round-trip "
                f"(device {dev['config']}, here {mine['config']}; was the bitstream built by "
                f"another shiftacc version?)")
        return plan

    def load(self, model, progress=False):
        """Load ``model``'s parameters into the device.

        Returns
        -------
        dict
            ``words``, ``bytes`` (on the line, both directions), ``seconds``, ``retries``.

        Raises
        ------
        DesignMismatch, LinkError
        """
        from ..hw.top import param_words
        ident = self.identity
        plan = self.plan_for(model)
        words = param_words(model, plan)
        if len(words) != ident.param_words:
            raise DesignMismatch(f"the model has {len(words)} parameter words, the design on "
                                 f"{self.url} expects {ident.param_words}")
        before = self.stats()
        t0 = time.perf_counter()
        begin = P.layout_bytes(P.LOAD_BEGIN_LAYOUT, {"design_id": ident.design_id,
                                                      "words": len(words)})
        first = self._one(P.Command.LOAD_BEGIN, begin, "LOAD_BEGIN", check=self._load_reply,
                          window=1)
        if first[0] != 0:
            raise ProtocolError(f"LOAD_BEGIN answered with {first[0]} words loaded, not 0")
        k = ident.words_per_frame
        blobs = b"".join(P.param_word_bytes(w) for w in words)
        seen = {"max": 0, "ready": False}
        bar = _bar(progress, len(words), "words", "load")

        def requests():
            for i, off in enumerate(range(0, len(words), k)):
                n = min(k, len(words) - off)
                payload = (P.layout_bytes(P.LOAD_PARAMS_PREFIX, {"offset": off})
                           + blobs[off * P.PARAM_WORD_BYTES:(off + n) * P.PARAM_WORD_BYTES])
                yield _Req(i, P.Command.LOAD_PARAMS, payload,
                           f"LOAD_PARAMS (words {off}–{off + n - 1})", self._load_reply)

        def done(req, result):
            loaded, ready = result
            seen["max"] = max(seen["max"], loaded)
            seen["ready"] = seen["ready"] or ready
            bar.update((len(req.payload) - 4) // P.PARAM_WORD_BYTES)

        try:
            self._pipeline(requests(), ident.slots, done, ordered=True)
        finally:
            bar.close()
        if seen["max"] != len(words) or not seen["ready"]:
            raise DeviceError(f"the device at {self.url} reports {seen['max']} of "
                              f"{len(words)} parameter words loaded after the last frame",
                              command=P.Command.LOAD_PARAMS)
        after = self.stats()
        self._stats["words"] += len(words)
        return {"words": len(words),
                "bytes": (after["bytes_sent"] - before["bytes_sent"]
                          + after["bytes_received"] - before["bytes_received"]),
                "seconds": time.perf_counter() - t0,
                "retries": after["retries"] - before["retries"]}

    def _load_reply(self, body):
        n = P.LOAD_REPLY_LAYOUT.size // 8
        if len(body) != n:
            raise _BadReply(f"load reply of {len(body)} bytes, expected {n}")
        r = P.layout_from_bytes(P.LOAD_REPLY_LAYOUT, body)
        return int(r.words_loaded), bool(r.ready)

    def check_images(self, images):
        """Validate ``images`` against the device's identity (nothing is sent).

        Returns
        -------
        ndarray of uint8 [N, H, W, C]

        Raises
        ------
        ValueError
        """
        ident = self.identity
        h, w, c = ident.input_shape
        images = np.asarray(images)
        if images.ndim == 3 and c == 1:
            images = images[..., None]
        if images.ndim != 4 or tuple(images.shape[1:]) != (h, w, c):
            raise ValueError(f"images have shape {list(images.shape)}, the device at "
                             f"{self.url} expects [N, {h}, {w}, {c}] (uint8, NHWC)")
        if not np.issubdtype(images.dtype, np.integer):
            raise ValueError(f"images must be integers (uint8 pixels), got dtype "
                             f"{images.dtype}")
        if images.size and (images.min() < 0 or images.max() >= (1 << ident.input_bits)):
            raise ValueError(f"pixel values span [{images.min()}, {images.max()}], outside "
                             f"the device's {ident.input_bits}-bit input range")
        if h * w * c != ident.image_bytes:
            raise ProtocolError(f"the device reports {ident.image_bytes} bytes per image but "
                                f"an input shape of {[h, w, c]}")
        return np.ascontiguousarray(images, dtype=np.uint8)

    def infer(self, images, *, progress=False):
        """Logits of ``images`` computed by the device.

        Parameters
        ----------
        images : array [N, H, W, C] (or [N, H, W] for one channel)
            Integer pixels below ``2**input_bits``.
        progress : bool
            A tqdm progress bar (images).

        Returns
        -------
        ndarray of int64 [N, classes]

        Raises
        ------
        ValueError
            Wrong shape, dtype or pixel range (before anything is sent).
        DeviceError
            The device refused a frame (e.g. parameters not loaded).
        LinkTimeout
        """
        ident = self.identity
        images = self.check_images(images)
        n = len(images)
        out = np.zeros((n, ident.classes), np.int64)
        if n == 0:
            return out
        k = ident.images_per_frame
        flat = images.reshape(n, -1)
        bar = _bar(progress, n, "img", "infer")

        def requests():
            for i, start in enumerate(range(0, n, k)):
                stop = min(n, start + k)
                yield _Req(i, P.Command.INFER, flat[start:stop].tobytes(),
                           f"INFER (images {start}–{stop - 1})",
                           _logits_check(stop - start, ident.classes))

        def done(req, result):
            start = req.index * k
            out[start:start + len(result)] = result
            bar.update(len(result))

        try:
            self._pipeline(requests(), ident.slots, done)
        finally:
            bar.close()
        self._stats["images"] += n
        return out

    def status(self):
        """The device's counters (:data:`protocol.STATUS_LAYOUT`) as a dict (``flags`` as a
        dict of bools, ``last_drop`` as a Reason name)."""
        def check(body):
            n = P.STATUS_LAYOUT.size // 8
            if len(body) != n:
                raise _BadReply(f"STATUS reply of {len(body)} bytes, expected {n}")
            return P.layout_from_bytes(P.STATUS_LAYOUT, body)
        self.identity      # the first exchange is always IDENTIFY (it flushes stale replies)
        s = self._one(P.Command.STATUS, b"", "STATUS", check=check, window=1)
        out = {}
        for name, _ in P.STATUS_LAYOUT:
            if name == "flags":
                out["flags"] = {f: bool(int(getattr(s.flags, f))) for f, _ in P.STATUS_FLAGS
                                if f != "_"}
            elif name == "last_drop":
                v = int(s.last_drop)
                try:
                    out[name] = P.Reason(v).name
                except ValueError:
                    out[name] = v
            else:
                out[name] = int(getattr(s, name))
        return out

    def reset(self):
        """Clear the device's parameters, load state and counters."""
        def check(body):
            if body:
                raise _BadReply(f"RESET reply with a {len(body)}-byte body")
        self.identity
        self._one(P.Command.RESET, b"", "RESET", check=check, window=1)

    # --- the exchange engine -------------------------------------------------------------

    def _one(self, command, payload, label, check, window=1):
        box = []
        self._pipeline(iter([_Req(0, command, payload, label, check)]), window,
                       lambda req, result: box.append(result))
        return box[0]

    def _next_seq(self, busy):
        """The next seq not awaiting a reply; when all 256 are, the oldest superseded sends
        (seqs of requests sent again since) are forgotten first."""
        if len(busy) >= 256:
            for s in [s for s, (r, _) in busy.items() if r.seq != s][:16]:
                del busy[s]
        for _ in range(256):
            s = self._seq
            self._seq = (self._seq + 1) & 0xFF
            if s not in busy:
                return s
        raise InternalError("no free sequence number with a window of at most 255 frames")

    def _rr_safe(self, req):
        """May a lost INFER reply be asked for with READ_RESULT?

        The device keeps the replies of its last ``slots`` INFER frames by seq; READ_RESULT(s)
        returns the newest one with seq s, which may belong to an *older* frame that used s
        if ``req`` itself never arrived. That older frame is surely evicted once ``slots``
        INFERs sent after it have been executed; results confirmed since its send count at
        least that many once they exceed it by ``slots - 1`` (frames sent before it and
        still in flight).
        """
        slots = self.identity.slots
        # And only while its own result may still be stored: once 2*slots - 1 results were
        # confirmed since it was sent, at least ``slots`` frames ran after it.
        return (self._confirmed - req.prev_mark >= 2 * slots - 1
                and self._confirmed - req.mark_at_send < 2 * slots - 1)

    def _send(self, req, seqs, command=None):
        command = req.command if command is None else command
        seq = self._next_seq(seqs)
        payload = bytes((req.seq,)) if command is P.Command.READ_RESULT else req.payload
        if command is P.Command.INFER:
            req.prev_mark = self._mark.get(seq, -(self.identity.slots - 1))
            self._mark[seq] = req.mark_at_send = self._confirmed
        frame = P.encode_frame(command, seq, payload)
        try:
            self.port.write(frame)
        except Exception as e:   # noqa: BLE001 (serial, socket and OS errors alike)
            if "timeout" in type(e).__name__.lower() or "timeout" in str(e).lower():
                raise LinkTimeout(f"could not send {req.label} to {self.url} within "
                                  f"{self.timeout} s; is the device powered/serving?") \
                    from None
            raise LinkError(f"the link to {self.url} failed while sending {req.label}: "
                            f"{e}") from None
        req.seq, req.cmd_sent, req.sent_at = seq, command, time.monotonic()
        req.sent_no = self._stats["frames_sent"]
        seqs[seq] = (req, command)
        self._stats["bytes_sent"] += len(frame)
        self._stats["frames_sent"] += 1

    def _read(self):
        try:
            n = self.port.in_waiting
            data = self.port.read(max(1, n))
            if data and n <= 1 and self._bulk:
                # A socket:// port's in_waiting only says "some": take what has arrived
                # without waiting (timeout 0), instead of one byte per call.
                self.port.timeout = 0
                try:
                    data += self.port.read(1 << 16)
                finally:
                    self.port.timeout = min(self.POLL, self.timeout)
        except Exception as e:   # noqa: BLE001
            raise LinkError(f"the link to {self.url} failed while reading: {e}") from None
        self._stats["bytes_received"] += len(data)
        return data

    def _pipeline(self, source, window, on_done, ordered=False):
        """Send the requests of ``source`` with at most ``window`` awaiting a reply.

        Each request is resent (under a fresh seq) on a retryable drop, a reply that does not
        fit it, ``timeout`` of silence, or when a frame sent after it is answered first (the
        device executes in arrival order, so it was lost), at most ``retries`` times.
        ``ordered``: a request the device refused with ``PARAM_ORDER`` is held until every
        earlier request is answered, then sent again (an earlier frame was lost).
        """
        t_start = time.perf_counter()
        window = max(1, int(window))
        ready = []            # heap of requests to (re)send
        held = []             # PARAM_ORDER requests waiting for their predecessors
        active = {}           # index -> request awaiting the reply to its latest send
        seqs = {}             # seq -> (request, command sent) for every unresolved send
        unresolved = []       # heap of indices sent and not yet answered
        resolved = set()
        last_rx = time.monotonic()
        exhausted = False
        src = iter(source)

        def retire(req):
            for s in [s for s, (r, _) in seqs.items() if r is req]:
                del seqs[s]
            active.pop(req.index, None)
            resolved.add(req.index)
            while unresolved and unresolved[0] in resolved:
                heapq.heappop(unresolved)

        def fail(req, why, detail=None, counted=True):
            """The latest send of ``req`` failed (``why``: 'timeout', 'overtaken',
            'mismatch' or a Reason): resend it, or give up."""
            active.pop(req.index, None)
            req.last_failure = why
            req.detail = detail
            if counted:
                if req.tries >= self.retries:
                    self._give_up(req, why)
                req.tries += 1
            self._stats["retries"] += 1
            heapq.heappush(ready, req)

        try:
            while True:
                # Release held requests whose predecessors are all answered.
                if held and (not unresolved or unresolved[0] >= min(r.index for r in held)):
                    for r in held:
                        r.held = False
                        heapq.heappush(ready, r)
                    held.clear()
                while len(active) < window:
                    if ready:
                        req = heapq.heappop(ready)
                    elif not exhausted:
                        req = next(src, None)
                        if req is None:
                            exhausted = True
                            break
                        heapq.heappush(unresolved, req.index)
                    else:
                        break
                    command = None
                    if req.command is P.Command.INFER and req.last_failure in \
                            ("timeout", "overtaken") and req.cmd_sent is P.Command.INFER \
                            and self._rr_safe(req):
                        command = P.Command.READ_RESULT
                    self._send(req, seqs, command)
                    active[req.index] = req
                if not active and not ready and not held and exhausted:
                    break
                data = self._read()
                now = time.monotonic()
                for ev in (self._parser.feed(data) if data else ()):
                    if not isinstance(ev, P.Frame):
                        continue               # a reply damaged on the way: its request times out
                    last_rx = now
                    self._on_frame(ev, seqs, active, held, unresolved, resolved, retire, fail,
                                   on_done, ordered, now)
                # Deadlines.
                for req in list(active.values()):
                    deadline = min(max(req.sent_at, last_rx) + self.timeout,
                                   req.sent_at + self.timeout * max(2, window))
                    if now >= deadline:
                        if self._parser.in_frame:
                            self._parser.reset()     # a reply cut short will not complete
                        fail(req, "timeout")
        finally:
            self._stats["seconds"] += time.perf_counter() - t_start

    def _on_frame(self, fr, seqs, active, held, unresolved, resolved, retire, fail, on_done,
                  ordered, now):
        if fr.command == P.NAK:
            # A frame whose header the device could not trust; its seq may be damaged too.
            # If it names the latest send of a request, resend that one now (harmless if
            # wrong: every request is idempotent); otherwise the loss shows up as a timeout.
            hit = seqs.get(fr.seq)
            if hit and active.get(hit[0].index) is hit[0] and hit[0].seq == fr.seq:
                reason = _reason(fr.payload[:1])
                fail(hit[0], reason if reason in P.RETRYABLE else P.Reason.HEADER_CRC)
            return
        hit = seqs.get(fr.seq)
        if hit is None:
            return                                   # a late reply to a retired request
        req, sent = hit
        if fr.command not in (sent.value | P.REPLY, req.command.value | P.REPLY):
            return                                   # not a reply to what that seq carried
        if not fr.payload:
            if req.seq == fr.seq and req.index in active:
                fail(req, "mismatch", "a reply without a reason byte")
            return
        reason = _reason(fr.payload[:1])
        latest = req.seq == fr.seq and req.index in active
        if reason is P.Reason.OK and latest:
            # The device executes frames in arrival order and answers a frame it drops as
            # soon as it has read it: a request sent before this one and still unanswered
            # was lost on the way (or its reply was).
            for other in [o for o in active.values() if o.sent_no < req.sent_no]:
                fail(other, "overtaken")
        if reason is P.Reason.OK:
            try:
                result = req.check(fr.payload[1:]) if req.check else fr.payload[1:]
            except _BadReply as e:
                if latest:
                    fail(req, "mismatch", str(e))
                return
            if req.command is P.Command.INFER:
                self._confirmed += 1
            retire(req)
            on_done(req, result)
            return
        if not latest:
            return                                   # a drop of a superseded send
        if reason in P.RETRYABLE:
            fail(req, reason)
            return
        if reason is P.Reason.NOT_FOUND and sent is P.Command.READ_RESULT:
            # The INFER never arrived or its result is gone: send the INFER again (a resend,
            # but not counted against the frame's limit: READ_RESULT is tried at most once per
            # loss, so the sends stay bounded).
            fail(req, reason, counted=False)
            return
        if ordered and reason is P.Reason.PARAM_ORDER and unresolved and \
                unresolved[0] < req.index:
            active.pop(req.index, None)
            for s in [s for s, (r, _) in seqs.items() if r is req]:
                del seqs[s]
            req.held = True
            held.append(req)
            return
        text = P.REASON_TEXT.get(reason, f"reason {reason}") if isinstance(reason, P.Reason) \
            else f"unknown reason code {fr.payload[0]}"
        raise DeviceError(f"the device at {self.url} refused {req.label} (seq {fr.seq}): "
                          f"{text}" + (f" [{reason.name}]" if isinstance(reason, P.Reason)
                                       else ""), reason=reason, command=req.command)

    def _give_up(self, req, why):
        if why in ("timeout", "overtaken"):
            raise LinkTimeout(
                f"no reply to {_describe(req)} from {self.url} within {self.timeout} s after "
                f"{req.tries} retries; is the device powered/serving?")
        if why == "mismatch":
            raise ProtocolError(f"{_describe(req)}: the replies from {self.url} do not fit "
                                f"the request ({req.detail or 'bad reply'}) after "
                                f"{req.tries} retries")
        text = P.REASON_TEXT.get(why, str(why))
        raise DeviceError(f"{_describe(req)} was dropped by the device at {self.url} "
                          f"{req.tries + 1} times, last because {text} [{why.name}]; is the "
                          f"line too noisy or the baud rate wrong?", reason=why,
                          command=req.command)


def _describe(req):
    """E.g. 'INFER seq 12 (images 96–111)'."""
    name = req.command.name
    rest = req.label[len(name):].strip() if req.label.startswith(name) else req.label
    return f"{name} seq {req.seq}" + (f" {rest}" if rest else "")


def _reason(raw):
    if not raw:
        return None
    try:
        return P.Reason(raw[0])
    except ValueError:
        return raw[0]


def _logits_check(k, classes):
    n = k * classes * P.LOGIT_BYTES

    def check(body):
        if len(body) != n:
            raise _BadReply(f"{len(body)} bytes of logits where {n} were expected")
        return np.frombuffer(body, "<i4").astype(np.int64).reshape(k, classes)
    return check


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(progress, total, unit, desc):
    if not progress:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, desc=desc, leave=False)
