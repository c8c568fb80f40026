"""Seeded fuzz of a served design's host link: the real accelerator behind ``shiftacc serve``.

:mod:`tests.test_link_fuzz` fuzzes the link engine against a stub accelerator in
``amaranth.sim``; this client fuzzes the whole simulated board (link engine + the real
accelerator, Verilator, optionally the real UART PHY under ``--uart``) through its TCP socket,
exactly as a host would reach it, and checks every logit against the golden model
(:func:`shiftacc.models.golden.run`).

A run (:func:`fuzz_link`):

1. Opens a socket and loads the parameters over it with :class:`~shiftacc.sw.device.Device`
   (through a small file-like adapter), then speaks raw frames on the same connection.
2. Alternates bursts of noise with valid requests. Noise kinds (:data:`NOISE_KINDS`):

   - ``corrupted``: a copy of a valid frame of any command (RESET, LOAD_BEGIN and LOAD_PARAMS
     included) with 1–3 bit flips anywhere (sync, header, header CRC, payload, CRC);
   - ``truncated``: a prefix of a valid frame of any command, then more traffic (the next
     bytes, or the device watchdog when nothing follows, resolve it);
   - ``duplicated``: another copy of a recent valid INFER/STATUS/IDENTIFY frame (a valid
     request or a valid frame of an earlier burst), same seq: it executes again and its reply
     is checked;
   - ``reordered``: 2–4 fresh valid INFER/STATUS frames sent out of seq order, whole, or cut
     into pieces that are shuffled;
   - ``random_bytes``: a run of random bytes (biased towards the sync bytes);
   - ``random_frames``: well-formed frames (both CRCs right) with an unknown command or a
     length the command does not allow (RESET/LOAD_BEGIN/LOAD_PARAMS included: dropped with
     ``BAD_LENGTH``, never executed).

   Noise never contains a *valid* RESET, LOAD_BEGIN or LOAD_PARAMS (those would legitimately
   change the state). After each burst, either at once (pipelined behind the noise) or once
   the replies have settled, a valid INFER of a few new random images must be answered, with
   the golden logits, within ``deadline`` seconds of wall-clock time. A truncated frame right
   before it can swallow it: it is resent (under a fresh seq, at most ``max_resends`` times)
   on a retryable drop of it, on a device ``TIMEOUT`` (the watchdog ended a partial frame
   after it was sent), or after ``resend_after`` seconds of silence.
3. Every reply that arrives is checked: an ``INFER`` OK reply must carry the golden logits of
   the images of the frame sent with that seq (duplicates included); a ``STATUS`` OK reply
   must show every parameter word loaded; an ``IDENTIFY`` OK reply must equal the first one;
   any other OK reply (or an OK for a seq whose frame was noise) is a wrong result. Seqs are
   allocated round-robin and a frame is duplicated only within :data:`DUP_WINDOW` allocations,
   while a round allocates at most ``256 - DUP_WINDOW``: the device executes in arrival
   order, so by the time a seq is reused every reply to its earlier frame has arrived and the
   check is unambiguous.

Counted (:class:`FuzzReport`): noise frames by kind, valid requests and how many were answered
exactly, resends, replies by reason, wrong results accepted (must be 0), hangs (a deadline
passed; must be 0; the run stops at the first), wall time, and the device's own counters
(a final ``STATUS``).

Simulated time in ``shiftacc serve`` passes only while there is traffic and for
``2 * watchdog_cycles + 100000`` cycles after it (:mod:`shiftacc.sim.tb_serve`), so waiting in
wall-clock time after a truncated frame lets the watchdog fire.
"""

from __future__ import annotations

import errno
import random
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..models import golden
from ..sw import protocol as P
from ..sw.device import LinkTimeout

__all__ = ["NOISE_KINDS", "DUP_WINDOW", "FuzzReport", "LinkFuzzer", "fuzz_link"]

#: Kinds of noise frames, in the order the report lists them.
NOISE_KINDS = ("corrupted", "truncated", "duplicated", "reordered", "random_bytes",
               "random_frames")
#: Seq allocations within which a sent frame may still be duplicated.
DUP_WINDOW = 96
#: Most noise frames in one burst (keeps a round's seq allocations below 256 - DUP_WINDOW).
MAX_BURST = 60

_OK = P.Reason.OK


class _Hang(Exception):
    """A deadline passed (the message says what was waited for)."""


@dataclass
class FuzzReport:
    """Figures of one fuzz run (see the module docstring)."""

    seed: int
    url: str
    noise: Counter = field(default_factory=Counter)   # kind -> noise frames sent
    noise_bytes: int = 0
    rounds: int = 0
    valid: int = 0             # valid requests (each must be answered exactly)
    answered: int = 0          # ... answered OK with the right body
    resends: int = 0           # extra sends of valid requests (fresh seqs)
    images: int = 0            # images in valid INFER requests
    replies: Counter = field(default_factory=Counter)  # (command, reason) -> replies
    infer_checked: int = 0     # INFER OK replies checked against golden (duplicates included)
    ok_checked: int = 0        # every OK reply checked (any command)
    wrong: int = 0             # OK replies with a wrong body, or for a frame that was noise
    hangs: int = 0
    failures: list = field(default_factory=list)       # what went wrong (first 50)
    wall: float = 0.0
    max_latency: float = 0.0   # longest wait for a valid request's answer (seconds)
    watchdog_waits: int = 0    # bursts ending mid-frame that the device watchdog resolved
    load_seconds: float = 0.0
    identity: object = None    # shiftacc.sw.device.Identity
    device: dict = field(default_factory=dict)         # the final STATUS counters
    accounting: dict = field(default_factory=dict)     # device counters vs replies received

    @property
    def noise_frames(self):
        return sum(self.noise.values())

    @property
    def replies_by_reason(self):
        out = Counter()
        for (_, reason), n in self.replies.items():
            out[reason] += n
        return out

    @property
    def ok(self):
        """0 wrong results, 0 hangs, every valid request answered exactly, nothing odd."""
        return (self.wrong == 0 and self.hangs == 0 and self.answered == self.valid
                and self.valid > 0 and not self.failures)

    def as_dict(self):
        return {"seed": self.seed, "url": self.url, "noise_frames": self.noise_frames,
                "noise": dict(self.noise), "noise_bytes": self.noise_bytes,
                "rounds": self.rounds, "valid": self.valid, "answered": self.answered,
                "resends": self.resends, "images": self.images,
                "watchdog_waits": self.watchdog_waits,
                "replies_by_reason": dict(self.replies_by_reason),
                "replies": {f"{c}/{r}": n for (c, r), n in sorted(self.replies.items())},
                "infer_checked": self.infer_checked, "ok_checked": self.ok_checked,
                "wrong": self.wrong, "hangs": self.hangs, "failures": list(self.failures),
                "wall_seconds": self.wall, "max_latency": self.max_latency,
                "load_seconds": self.load_seconds, "device": dict(self.device),
                "accounting": dict(self.accounting)}

    def table(self):
        """The figures as a text table."""
        ident = self.identity
        rows = [("seed", self.seed), ("device", self.url)]
        if ident is not None:
            rows.append(("design", f"{ident.design_id:016x}, baud {ident.baud or 'byte stream'}"
                                   f", {ident.slots} slots, watchdog {ident.watchdog_cycles} "
                                   f"cycles"))
        rows += [("noise frames", f"{self.noise_frames} ({self.noise_bytes} bytes)")]
        rows += [(f"  {k}", self.noise.get(k, 0)) for k in NOISE_KINDS]
        rows += [("rounds", self.rounds),
                 ("valid requests", f"{self.valid} ({self.images} images)"),
                 ("answered exactly", self.answered),
                 ("resends", self.resends),
                 ("watchdog waits", self.watchdog_waits),
                 ("INFER OK replies checked", f"{self.infer_checked} (golden logits)"),
                 ("OK replies checked", self.ok_checked),
                 ("wrong results accepted", self.wrong),
                 ("hangs", self.hangs),
                 ("longest answer wait", f"{self.max_latency:.2f} s"),
                 ("parameter load", f"{self.load_seconds:.2f} s"),
                 ("wall time", f"{self.wall:.1f} s "
                               f"({self.noise_frames / max(self.wall, 1e-9):.0f} noise "
                               f"frames/s)")]
        rows.append(("replies by reason", ""))
        rows += [(f"  {r}", n) for r, n in sorted(self.replies_by_reason.items(),
                                                   key=lambda kv: -kv[1])]
        if self.device:
            d = self.device
            rows.append(("device counters",
                         f"frames_ok {d.get('frames_ok')}, frames_dropped "
                         f"{d.get('frames_dropped')}, replies_lost {d.get('replies_lost')}, "
                         f"images_done {d.get('images_done')}, rx_bytes {d.get('rx_bytes')}, "
                         f"tx_bytes {d.get('tx_bytes')}, line_errors {d.get('line_errors')}, "
                         f"last_drop {d.get('last_drop')}"))
        if self.accounting:
            a = self.accounting
            rows.append(("device vs replies",
                         f"executed {a['frames_ok']} / OK replies {a['ok_replies']}; dropped "
                         f"{a['frames_dropped']} / drop replies {a['drop_replies']} + lost "
                         f"{a['replies_lost']}"))
        if self.failures:
            rows.append(("failures", len(self.failures)))
            rows += [("  !", f) for f in self.failures[:10]]
        w = max(len(str(k)) for k, _ in rows)
        return "\n".join(f"{str(k):<{w}}  {v}" for k, v in rows)


class _SocketPort:
    """The file-like port :class:`~shiftacc.sw.device.Device` needs, over this fuzz's own
    non-blocking socket (so the parameter load and the fuzz share one session)."""

    def __init__(self, sock, write_timeout):
        self.sock, self.timeout, self._buf = sock, 0.02, bytearray()
        self.write_timeout = write_timeout
        self.name = "fuzz socket"

    def _fill(self, wait):
        readable, _, _ = select.select([self.sock], [], [], max(0.0, wait))
        while readable:
            try:
                data = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                raise OSError("the server closed the connection")
            self._buf += data

    @property
    def in_waiting(self):
        if not self._buf:
            self._fill(0)
        return len(self._buf)

    def read(self, size=1):
        if not self._buf:
            self._fill(self.timeout or 0)
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def write(self, data):
        self.sock.setblocking(True)
        self.sock.settimeout(self.write_timeout)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)
        return len(data)

    def reset_input_buffer(self):
        self._fill(0)
        self._buf.clear()

    def leftover(self):
        out, self._buf = bytes(self._buf), bytearray()
        return out

    def close(self):
        pass


class _Request:
    """A valid request awaiting its answer (resent under fresh seqs)."""

    __slots__ = ("command", "payload", "seqs", "answered", "retry", "first_sent", "last_sent",
                 "resends")

    def __init__(self, command, payload):
        self.command, self.payload = command, bytes(payload)
        self.seqs = []
        self.answered = False
        self.retry = False
        self.first_sent = self.last_sent = 0.0
        self.resends = 0


def _parse_url(url):
    if not str(url).startswith("socket://"):
        raise ValueError(f"the link fuzz needs a socket://HOST:PORT URL, got {url!r}")
    host, _, port = str(url)[len("socket://"):].rpartition(":")
    return host, int(port)


def _cmd_name(command):
    if command == P.NAK:
        return "NAK"
    base = command & ~P.REPLY
    try:
        return P.Command(base).name
    except ValueError:
        return f"0x{base:02x}"


def _reason_name(raw):
    try:
        return P.Reason(raw).name
    except ValueError:
        return f"reason {raw}"


class LinkFuzzer:
    """The fuzz client; :meth:`run` does one run (see the module docstring).

    Parameters
    ----------
    url : str
        ``socket://HOST:PORT`` of ``shiftacc serve``.
    model : models.artifact.Model
        The model the served design was built for (its parameters are loaded).
    seed : int
    timeout : float
        The driver's timeout for the parameter load, and the longest a socket write may
        block.
    deadline : float
        Seconds within which each valid request must be answered (else a hang).
    resend_after : float
        Seconds of silence after which an unanswered valid request is resent.
    max_resends : int
        Resends of one valid request at most.
    burst : (int, int)
        Noise frames per burst (uniform, at most :data:`MAX_BURST`).
    images_per_request : (int, int)
        Images per valid INFER (uniform; capped by the device's frame size).
    settle : float
        Seconds of silence waited for before a valid request sent after the replies settled.
    watchdog_wait : float
        When such a burst ended with a truncated frame: seconds of silence waited for the
        device's watchdog to answer ``TIMEOUT`` first.
    golden_fn : callable, optional
        ``images [N, H, W, C] -> logits [N, classes]`` the replies are checked against
        (default :func:`shiftacc.models.golden.run` of ``model``; a deliberately wrong one
        shows that the check bites).
    log : callable, optional
        Progress lines.
    """

    def __init__(self, url, model, *, seed, timeout=10.0, deadline=30.0, resend_after=0.2,
                 max_resends=3, burst=(5, 40), images_per_request=(1, 4), settle=0.05,
                 watchdog_wait=3.0, golden_fn=None, log=None):
        if not 1 <= burst[0] <= burst[1] <= MAX_BURST:
            raise ValueError(f"burst {burst} must lie within 1..{MAX_BURST}")
        self.url, self.model, self.seed = url, model, int(seed)
        self.timeout, self.deadline = float(timeout), float(deadline)
        self.resend_after, self.max_resends = float(resend_after), int(max_resends)
        self.burst, self.images_per_request = tuple(burst), tuple(images_per_request)
        self.settle, self.watchdog_wait = float(settle), float(watchdog_wait)
        self.golden_fn = golden_fn or (lambda images: golden.run(model, images))
        self.log = log or (lambda *a, **k: None)
        self.rng = random.Random(self.seed)
        self.np_rng = np.random.default_rng(self.seed)

    # --- setup ---------------------------------------------------------------------------

    def _load(self):
        """IDENTIFY and the parameter load, by the driver, on this fuzz's own connection."""
        from ..hw.top import param_words
        from ..sw.device import Device
        t0 = time.perf_counter()
        port = _SocketPort(self.sock, self.timeout)
        dev = Device(port, timeout=self.timeout, url=self.url)
        ident = dev.identity
        plan = dev.plan_for(self.model)
        dev.load(self.model)
        self.report.load_seconds = time.perf_counter() - t0
        self.ident = ident
        self.report.identity = ident
        self.words = param_words(self.model, plan)
        self.image_bytes = ident.image_bytes
        self.classes = ident.classes
        self.max_images = ident.images_per_frame
        self.begin = P.layout_bytes(P.LOAD_BEGIN_LAYOUT, {"design_id": ident.design_id,
                                                           "words": len(self.words)})
        for ev in self.parser.feed(port.leftover()):   # nothing is due; checked anyway
            self._on_reply(ev)

    def _connect(self):
        host, port = _parse_url(self.url)
        t_end = time.monotonic() + self.timeout
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=self.timeout)
                break
            except OSError as e:
                if time.monotonic() > t_end:
                    raise _Hang(f"cannot reconnect to {self.url} within {self.timeout} s "
                                f"({e})") from None
                time.sleep(0.05)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock

    # --- images and their golden logits --------------------------------------------------

    def _images(self, k):
        """``k`` fresh random images (bytes) and their golden logits [k, classes]."""
        if len(self._pool) < k:
            h, w, c = self.model.input_shape
            imgs = self.np_rng.integers(0, 1 << self.model.input_bits, size=(512, h, w, c),
                                        dtype=np.uint8)
            logits = np.asarray(self.golden_fn(imgs), dtype=np.int64)
            self._pool += [(imgs[i].tobytes(), logits[i]) for i in range(len(imgs))]
        batch, self._pool = self._pool[:k], self._pool[k:]
        return b"".join(b for b, _ in batch), np.stack([g for _, g in batch])

    # --- seqs and frames -----------------------------------------------------------------

    def _alloc(self, expect):
        """A fresh seq; ``expect`` is what an OK reply with it must carry: ``("INFER",
        logits)``, ``("STATUS", None)``, ``("IDENTIFY", None)`` or None (the frame is noise:
        no OK reply may carry this seq)."""
        seq = self._next_seq
        self._next_seq = (seq + 1) & 0xFF
        self._allocs += 1
        self._round_allocs += 1
        self.expect[seq] = expect
        self.by_seq.pop(seq, None)
        return seq

    def _remember(self, frame):
        self.recent.append((self._allocs, frame))
        if len(self.recent) > 64:
            del self.recent[:len(self.recent) - 64]

    def _infer_frame(self, k=None):
        k = k or self.rng.randint(1, min(3, self.max_images))
        payload, logits = self._images(k)
        seq = self._alloc(("INFER", logits))
        return P.encode_frame(P.Command.INFER, seq, payload)

    def _safe_frame(self):
        """A fresh valid frame whose execution cannot change the device's state."""
        r = self.rng.random()
        if r < 0.7:
            return self._infer_frame()
        if r < 0.95:
            return P.encode_frame(P.Command.STATUS, self._alloc(("STATUS", None)))
        return P.encode_frame(P.Command.IDENTIFY, self._alloc(("IDENTIFY", None)))

    def _any_frame(self):
        """A frame of any command, state-changing ones included (only sent damaged); its seq
        must never see an OK reply."""
        r = self.rng.random()
        seq = self._alloc(None)
        total = len(self.words)
        if r < 0.12:
            return P.encode_frame(P.Command.RESET, seq)
        if r < 0.24:
            return P.encode_frame(P.Command.LOAD_BEGIN, seq, self.begin)
        if r < 0.36:
            off = self.rng.randrange(total)
            n = self.rng.randint(1, min(8, total - off))
            payload = (P.layout_bytes(P.LOAD_PARAMS_PREFIX, {"offset": off})
                       + b"".join(P.param_word_bytes(w) for w in self.words[off:off + n]))
            return P.encode_frame(P.Command.LOAD_PARAMS, seq, payload)
        if r < 0.44:
            return P.encode_frame(P.Command.READ_RESULT, seq,
                                  bytes((self.rng.getrandbits(8),)))
        if r < 0.8:
            k = self.rng.randint(1, min(3, self.max_images))
            return P.encode_frame(P.Command.INFER, seq, self._images(k)[0])
        if r < 0.95:
            return P.encode_frame(P.Command.STATUS, seq)
        return P.encode_frame(P.Command.IDENTIFY, seq)

    def _random_frame(self):
        """A well-formed frame with an unknown command or a length its command forbids."""
        rng = self.rng
        ib, mp = self.image_bytes, self.ident.max_payload
        known = {c.value for c in P.Command}
        cmd = rng.choice([rng.choice([0x00, 0x08, 0x7F, 0x80, 0x81, 0x84, 0x87, 0xFF]),
                          rng.getrandbits(8)] + [c.value for c in P.Command])
        if cmd in known:
            c = P.Command(cmd)
            if c in (P.Command.IDENTIFY, P.Command.STATUS, P.Command.RESET):
                n = rng.randint(1, 16)
            elif c is P.Command.LOAD_BEGIN:
                n = rng.choice([0, 1, 11, 13, rng.randint(14, 30)])
            elif c is P.Command.READ_RESULT:
                n = rng.choice([0, 2, rng.randint(3, 12)])
            elif c is P.Command.LOAD_PARAMS:
                n = rng.choice([0, 1, 3, 4, 4 + 10 * rng.randint(1, 6) + rng.randint(1, 9)])
            else:
                n = rng.choice([0, ib * rng.randint(1, 3) + rng.randint(1, ib - 1)
                                if ib > 1 else 0, min(0xFFFF, ib * (mp // ib + 1))])
        else:
            n = rng.choice([0, 1, 12, rng.randint(0, 64)])
        if rng.random() < 0.03:
            n = mp + rng.randint(1, 16)   # above max_payload: dropped at the header
        payload = bytes(rng.getrandbits(8) for _ in range(n))
        # Keep the length rule honest for the known commands (a random length may be valid).
        if cmd in known and P.length_ok(cmd, n, max_payload=mp, image_bytes=ib) is None:
            cmd = 0x7E
        return P.encode_frame(cmd, self._alloc(None), payload)

    def _burst(self, n):
        """``n`` noise frames (a few more when a group overshoots) as one byte string.

        A truncated frame cut inside its CRC (at most 4 bytes missing) is completed by the
        next bytes on the wire: if those happened to equal the missing ones, a noise frame
        would be a valid frame and its execution no fault. Sync bytes are the likely ones
        (every frame starts with them, random bytes favour them), and a seeded run did meet
        a frame whose last CRC byte was ``SYNC[0]``, cut one byte short. So such a cut is
        followed by a byte other than the first missing one (:meth:`_join`); longer cuts
        leave the whole CRC to foreign bytes (a 2^-32 chance).
        """
        rng, count = self.rng, 0
        pieces = []       # (bytes, missing tail of a truncated frame or b"")
        kinds = self.report.noise
        while count < n:
            r = rng.random()
            self._last_kind = NOISE_KINDS[sum(r >= b for b in (0.25, 0.40, 0.55, 0.70, 0.85))]
            if r < 0.25:
                frame = bytearray(self._any_frame())
                for pos in rng.sample(range(len(frame)), min(len(frame), rng.randint(1, 3))):
                    frame[pos] ^= 1 << rng.randrange(8)
                pieces.append((frame, b""))
                kinds["corrupted"] += 1
                count += 1
            elif r < 0.40:
                frame = self._any_frame()
                cut = rng.randrange(1, len(frame))
                pieces.append((frame[:cut], frame[cut:]))
                kinds["truncated"] += 1
                count += 1
            elif r < 0.55:
                live = [f for a, f in self.recent if self._allocs - a < DUP_WINDOW]
                if live:
                    frame = rng.choice(live)
                else:
                    frame = self._safe_frame()
                    self._remember(frame)
                    pieces.append((frame, b""))
                copies = rng.randint(1, 2)
                pieces.append((frame * copies, b""))
                kinds["duplicated"] += copies
                count += copies
            elif r < 0.70:
                frames = [self._safe_frame() for _ in range(rng.randint(2, 4))]
                if rng.random() < 0.5:
                    rng.shuffle(frames)          # whole frames out of seq order
                    for f in frames:
                        self._remember(f)
                    pieces.append((b"".join(frames), b""))
                else:                            # pieces of them, shuffled
                    blob = b"".join(frames)
                    cuts = sorted(rng.sample(range(1, len(blob)), rng.randint(1, 4)))
                    parts = [blob[a:b] for a, b in zip([0] + cuts, cuts + [len(blob)])]
                    rng.shuffle(parts)
                    pieces.append((b"".join(parts), b""))
                kinds["reordered"] += len(frames)
                count += len(frames)
            elif r < 0.85:
                pieces.append((bytes(rng.choice((0xA5, 0x5A, rng.getrandbits(8)))
                                     for _ in range(rng.randint(1, 40))), b""))
                kinds["random_bytes"] += 1
                count += 1
            else:
                pieces.append((self._random_frame(), b""))
                kinds["random_frames"] += 1
                count += 1
        return self._join(pieces), count

    @staticmethod
    def _join(pieces, after=P.SYNC):
        """The burst's bytes; after a truncated piece missing at most 4 (CRC) bytes, a filler
        byte where the next bytes (``after`` for the last piece: a valid frame follows at
        once, or the watchdog ends the partial frame first) would start with its first
        missing byte."""
        out = bytearray()
        for i, (data, tail) in enumerate(pieces):
            out += data
            if 0 < len(tail) <= 4:
                nxt = pieces[i + 1][0] if i + 1 < len(pieces) else after
                if nxt[:1] == tail[:1]:
                    out.append(0x00 if tail[0] != 0x00 else 0x01)
        return bytes(out)

    # --- the socket ----------------------------------------------------------------------

    def _pump(self, wait):
        """Read what has arrived (waiting up to ``wait`` s for the first bytes) and check
        every reply in it. Returns the number of bytes read."""
        got = 0
        readable, _, _ = select.select([self.sock], [], [], max(0.0, wait))
        if not readable:
            return 0
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                raise _Hang(f"the link to {self.url} failed while reading: {e}") from None
            if not data:
                raise _Hang(f"{self.url} closed the connection")
            got += len(data)
            for ev in self.parser.feed(data):
                self._on_reply(ev)
        if got:
            self.last_rx = time.monotonic()
        return got

    def _send(self, data, what):
        """Write ``data`` (reading replies meanwhile, so neither side's buffers can fill)."""
        view = memoryview(data)
        t_end = time.monotonic() + self.timeout
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    pass
                else:
                    raise _Hang(f"the link to {self.url} failed while sending {what}: {e}") \
                        from None
            if time.monotonic() > t_end:
                raise _Hang(f"could not send {what} to {self.url} within {self.timeout} s")
            _, writable, _ = select.select([], [self.sock], [], 0.01)
            self._pump(0)

    # --- checking replies ----------------------------------------------------------------

    def _fail(self, text, wrong=True):
        if wrong:
            self.report.wrong += 1
        if len(self.report.failures) < 50:
            self.report.failures.append(text)

    def _on_reply(self, ev):
        rep = self.report
        if not isinstance(ev, P.Frame):
            # The device -> host direction is a clean byte stream in simulation.
            self._fail(f"a reply that fails its own checks: {ev}", wrong=False)
            return
        name = _cmd_name(ev.command)
        if not ev.payload:
            self._fail(f"a reply without a reason byte: {ev}", wrong=False)
            return
        reason = ev.payload[0]
        rep.replies[(name, _reason_name(reason))] += 1
        if reason != _OK.value:
            if len(ev.payload) != 1:
                self._fail(f"a drop reply with a body: {ev} {ev.payload.hex()}", wrong=False)
            if reason == P.Reason.TIMEOUT.value and self.waiting is not None:
                self.waiting.retry = True       # the watchdog ended a frame after our send
            req = self.by_seq.get(ev.seq)
            if req is not None and ev.command == (req.command.value | P.REPLY) \
                    and req.seqs and req.seqs[-1] == ev.seq and not req.answered:
                try:
                    retryable = P.Reason(reason) in P.RETRYABLE
                except ValueError:
                    retryable = False
                if retryable:
                    req.retry = True
                else:
                    self._fail(f"valid {req.command.name} seq {ev.seq} refused: "
                               f"{_reason_name(reason)}", wrong=False)
            return
        rep.ok_checked += 1
        body = ev.payload[1:]
        if ev.command == P.NAK:
            self._fail(f"a NAK with reason OK: {ev}")
            return
        exp = self.expect.get(ev.seq)
        cmd = ev.command & ~P.REPLY
        if exp is None:
            self._fail(f"OK reply {name} seq {ev.seq}: no valid frame was sent with this seq "
                       f"(noise was executed)")
            return
        kind, want = exp
        if name != kind:
            self._fail(f"OK reply {name} seq {ev.seq}: the valid frame with this seq was "
                       f"{kind}")
            return
        if cmd == P.Command.INFER.value:
            rep.infer_checked += 1
            n = want.size * P.LOGIT_BYTES
            got = np.frombuffer(body, "<i4").astype(np.int64) if len(body) == n else None
            if got is None or not np.array_equal(got, want.reshape(-1)):
                self._fail(f"INFER seq {ev.seq}: logits {None if got is None else got.tolist()}"
                           f" ({len(body)} bytes), golden {want.reshape(-1).tolist()}")
                return
        elif cmd == P.Command.STATUS.value:
            n = P.STATUS_LAYOUT.size // 8
            if len(body) != n:
                self._fail(f"STATUS seq {ev.seq}: {len(body)} bytes, expected {n}")
                return
            st = P.layout_from_bytes(P.STATUS_LAYOUT, body)
            if not (int(st.flags.params_ready) and not int(st.flags.loading)
                    and int(st.words_loaded) == len(self.words)):
                self._fail(f"STATUS seq {ev.seq} shows the parameters changed: ready "
                           f"{int(st.flags.params_ready)}, loading {int(st.flags.loading)}, "
                           f"{int(st.words_loaded)} of {len(self.words)} words")
                return
            self.last_status = st
        elif cmd == P.Command.IDENTIFY.value:
            if self.identify_body is None:
                mine = P.layout_from_bytes(P.IDENTIFY_LAYOUT, body) \
                    if len(body) >= P.IDENTIFY_LAYOUT.size // 8 else None
                if mine is None or int(mine.design_id) != self.ident.design_id:
                    self._fail(f"IDENTIFY seq {ev.seq}: not the design the driver saw")
                    return
                self.identify_body = bytes(body)
            elif bytes(body) != self.identify_body:
                self._fail(f"IDENTIFY seq {ev.seq}: the body differs from the first one")
                return
        req = self.by_seq.get(ev.seq)
        if req is not None and not req.answered:
            req.answered = True

    # --- valid requests ------------------------------------------------------------------

    def _request(self, command, payload=b"", expect_logits=None, before=b""):
        """Send a valid request (after ``before``, in the same write) and wait until it is
        answered exactly; resend it on a retryable drop, a device TIMEOUT or silence."""
        rep = self.report
        req = _Request(command, payload)
        kind = command.name
        expect = (kind, expect_logits)
        self.waiting = req
        rep.valid += 1

        def send(prefix=b""):
            seq = self._alloc(expect)
            self.by_seq[seq] = req
            frame = P.encode_frame(command, seq, payload)
            self._send(prefix + frame, f"{kind} seq {seq}")
            req.seqs.append(seq)
            req.retry = False
            req.last_sent = time.monotonic()
            self._remember(frame)
            return seq

        send(before)
        req.first_sent = req.last_sent
        try:
            while not req.answered:
                now = time.monotonic()
                if now - req.first_sent > self.deadline:
                    rep.hangs += 1
                    raise _Hang(f"valid {kind} (seqs {req.seqs}) not answered within "
                                f"{self.deadline} s ({req.resends} resends)")
                self._pump(0.01)
                if req.answered:
                    break
                silent = time.monotonic() - max(req.last_sent, self.last_rx)
                if (req.retry or silent > self.resend_after) and \
                        req.resends < self.max_resends:
                    req.resends += 1
                    rep.resends += 1
                    send()
        finally:
            self.waiting = None
        rep.answered += 1
        rep.max_latency = max(rep.max_latency, time.monotonic() - req.first_sent)
        return req

    def _valid_infer(self, before=b""):
        k = self.rng.randint(self.images_per_request[0],
                             min(self.images_per_request[1], self.max_images))
        payload, logits = self._images(k)
        self.report.images += k
        return self._request(P.Command.INFER, payload, logits, before=before)

    def _await_watchdog(self, limit):
        """After a burst that ended with a truncated frame: read until the device's watchdog
        answers ``TIMEOUT`` (or ``limit`` s of silence: the prefix may not have left the
        parser mid-frame, e.g. a lone first sync byte)."""
        def timeouts():
            return sum(n for (_, r), n in self.report.replies.items() if r == "TIMEOUT")
        before = timeouts()
        t_end = time.monotonic() + self.deadline
        last = time.monotonic()
        while time.monotonic() < t_end and time.monotonic() - last < limit:
            if self._pump(0.02):
                last = time.monotonic()
            if timeouts() > before:
                self.report.watchdog_waits += 1
                return True
        return False

    def _quiet(self, seconds, limit):
        """Read until no byte arrived for ``seconds`` (at most ``limit`` s in all)."""
        t_end = time.monotonic() + limit
        while time.monotonic() < t_end:
            if not self._pump(seconds):
                return True
        return False

    def _reply_counts(self):
        ok = self.report.ok_checked
        return ok, sum(self.report.replies.values()) - ok

    def _account(self, st0, counts0, st1, counts1):
        """The device's counters between the first and the last STATUS agree with the
        replies received: every frame it executed was answered OK, every frame it dropped
        was answered with its reason or counted in ``replies_lost``."""
        d_ok = int(st1.frames_ok) - int(st0.frames_ok)
        d_drop = int(st1.frames_dropped) - int(st0.frames_dropped)
        d_lost = (int(st1.replies_lost) - int(st0.replies_lost)) & 0xFFFF
        got_ok, got_drop = counts1[0] - counts0[0], counts1[1] - counts0[1]
        self.report.accounting = {"frames_ok": d_ok, "ok_replies": got_ok,
                                  "frames_dropped": d_drop, "drop_replies": got_drop,
                                  "replies_lost": d_lost}
        if d_ok != got_ok or d_drop != got_drop + d_lost:
            self._fail(f"the device counted {d_ok} frames executed and {d_drop} dropped "
                       f"({d_lost} replies lost) while {got_ok} OK and {got_drop} drop "
                       f"replies arrived", wrong=False)

    # --- the run -------------------------------------------------------------------------

    def run(self, frames):
        """Load the parameters, then send at least ``frames`` noise frames in bursts, each
        followed by valid requests. Returns a :class:`FuzzReport` (also on a hang)."""
        rep = self.report = FuzzReport(seed=self.seed, url=self.url)
        self._pool = []
        self.expect, self.by_seq, self.recent = {}, {}, []
        self._next_seq = self.rng.getrandbits(8)
        self._allocs = self._round_allocs = 0
        self.parser = P.FrameParser()
        self.identify_body = None
        self.last_status = None
        self.waiting = None
        self.last_rx = time.monotonic()
        t0 = time.perf_counter()
        self.sock = self._connect()
        try:
            self._load()
            # The parameters survive the change of session; IDENTIFY's body is the reference.
            self._request(P.Command.IDENTIFY)
            self._request(P.Command.STATUS)
            first, counts0 = self.last_status, self._reply_counts()
            sent = 0
            t_log = time.monotonic()
            while sent < frames:
                self._round_allocs = 0
                n = min(self.rng.randint(*self.burst), frames - sent)
                data, count = self._burst(n)
                sent += count
                rep.noise_bytes += len(data)
                if self.rng.random() < 0.5:
                    # Pipelined behind the noise, in the same write.
                    self._valid_infer(before=data)
                else:
                    self._send(data, "noise")
                    if self._last_kind == "truncated":
                        self._await_watchdog(self.watchdog_wait)
                    self._quiet(self.settle, self.deadline)
                    self._valid_infer()
                if rep.rounds % 8 == 7:
                    self._request(P.Command.STATUS)
                if rep.rounds % 40 == 39:
                    self._request(P.Command.IDENTIFY)
                rep.rounds += 1
                assert self._round_allocs <= 256 - DUP_WINDOW, self._round_allocs
                if time.monotonic() - t_log > 10:
                    t_log = time.monotonic()
                    self.log(f"[linkfuzz] {sent} noise frames, {rep.valid} valid requests, "
                             f"{rep.wrong} wrong, {time.perf_counter() - t0:.0f} s")
            # Whatever is still on its way, then the device's own counters.
            self._quiet(max(self.resend_after, 0.2), self.deadline)
            self._request(P.Command.STATUS)
            st = self.last_status
            rep.device = {name: int(getattr(st, name)) for name, _ in P.STATUS_LAYOUT
                          if name != "flags"}
            rep.device["last_drop"] = _reason_name(int(st.last_drop))
            self._account(first, counts0, st, self._reply_counts())
        except (_Hang, LinkTimeout) as e:
            if not rep.hangs:
                rep.hangs += 1
            self._fail(f"hang: {e}", wrong=False)
        finally:
            self.sock.close()
            rep.wall = time.perf_counter() - t0
        return rep


def fuzz_link(url, model, frames, seed, **kwargs):
    """One fuzz run of at least ``frames`` noise frames against ``shiftacc serve`` at ``url``
    (see :class:`LinkFuzzer` for the keywords). Returns a :class:`FuzzReport`."""
    return LinkFuzzer(url, model, seed=seed, **kwargs).run(frames)
