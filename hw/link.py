"""The link engine: host frames in, accelerator streams out, replies back (DESIGN.md §4).

Everything the two ends agree on (frame layout, commands, reason codes, CRCs, reply layouts,
design identity, the device rules) is defined in :mod:`shiftacc.sw.protocol`; this module
implements its device rules in gateware. Four decoupled parts share one clock:

* **Parser** (one byte per cycle, never stalls: a UART cannot be backpressured). Hunts for
  ``SYNC``, checks the header (CRC-8, command, length), writes the payload into a free
  *receive slot* of the slot RAM while checking it byte by byte (pixel range, parameter
  addresses, LOAD_BEGIN's design id), then checks the CRC-32 with the ``amaranth.lib.crc``
  processor's residue (``match_detected``). A watchdog abandons a frame whose bytes stop. A
  frame that fails anything is dropped and answered with a NAK; only a frame that passed
  every check is committed to its slot, so nothing in a dropped frame is ever acted on.
* **Executor** takes committed slots in arrival order: answers IDENTIFY/STATUS/RESET, runs
  the load state machine (LOAD_BEGIN/LOAD_PARAMS: one parameter beat per word, only while no
  image is in flight), and feeds an INFER's images to the accelerator (bytes packed into
  pixel beats). The slot is freed once its images are fed, so the next frame's images follow
  at once: consecutive INFER frames overlap in the accelerator.
* **Collector**: a small FIFO of (seq, images) links it to the executor; it writes each
  frame's logits into the result RAM (the last ``slots`` INFER results, which READ_RESULT can
  re-send) and queues the reply.
* **Encoder**: one reply queue (parser NAKs, executor and collector replies) feeds one
  encoder that sends each reply back to back, CRC-8 and CRC-32 computed by
  ``amaranth.lib.crc`` processors as the bytes leave.

Choices where :mod:`shiftacc.sw.protocol` leaves room (the device model follows the same):

* A frame with several problems is dropped with the first of: ``PAYLOAD_CRC`` (the payload
  may be noise, so a checked value is not to be trusted either), ``PARAM_ADDRESS`` /
  ``PIXEL_RANGE``, ``BUSY``.
* ``LOAD_PARAMS``: ``offset + k <= words_loaded`` is a duplicate (acknowledged without
  writing, also right after the load completed); a partial overlap, a gap, or words past the
  design's count are ``PARAM_ORDER``.
* ``READ_RESULT`` waits until every image in flight is out (a result still being computed is
  then found) and answers with command ``READ_RESULT | REPLY``, its own ``seq``, and the body
  of that INFER's reply. When the window holds two results with that ``seq``, the newer one.
* ``STATUS`` reports the state at its place in the command order: after executing it, the
  executor executes nothing more until the encoder has taken the snapshot (before the
  reply's first byte), so parameters, load state and the executor's counters are those of
  the moment it executed (frames executed earlier included, the STATUS itself counted in
  ``frames_ok``). What runs on its own (parser drops of later frames, images finishing,
  ``rx_bytes``/``tx_bytes``, ``cycles``) is read while the snapshot is taken, within
  :data:`_STATUS_BYTES` cycles before the reply's first byte (``tx_bytes`` excludes the
  STATUS reply itself). The counters live in a small RAM swept byte-serially
  (:meth:`LinkEngine._status`), not in 256 flip-flops and adders.
* Timing: every decision that used to end in a wide register is registered first (the
  parser's drop verdict and commit, the length checks, the executor's head slot-table entry
  and LOAD_PARAMS order checks, READ_RESULT's per-entry matches, the reply queue's choice
  among its requesters, the encoder's start (the descriptor taken, then its lengths and
  addresses), the read-out's end), and since issue #10 also the received byte and its
  SYNC compares, the length rules (tables per high byte), the command (one flag per
  command), the executor's decision (``plan_*``, taken in a frame's fourth cycle at the
  head) and the reply queue's requests and choice: a reply, a drop's counters and a commit
  follow a cycle or two later, never the bytes on the wire.
* Counters: ``frames_ok`` counts frames executed with reason OK, ``frames_dropped`` every
  frame answered with another reason (parser and executor), ``images_done`` images whose
  logits are all out. ``busy`` = a receive slot is occupied or an image is in flight.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..sw import protocol
from ..sw.protocol import Command, Reason
from .params import PARAM_LAYOUT, ParamKind, param_bus_signature
from .resources import Cost, MemorySpec, const_mul, fifo_memories
from .synth import COLLISION_FREE, collision_read
from .stream import beats_per_pixel, pixel_stream, require_int

__all__ = ["LinkEngine", "link_identity", "default_watchdog_cycles", "divider_constants",
           "slot_meta_layout", "reply_desc_layout", "Source", "FrameCRCs"]


def _bits(n):
    """Bits of an unsigned value ``0 .. n``."""
    return max(1, int(n).bit_length())


def slot_meta_layout(*, count_bits, arg_bits):
    """What the executor needs of a committed frame (the payload stays in the slot RAM).

    Every field is as narrow as the engine's parameters allow (each bit of a slot-table
    entry is a flip-flop per slot): ``command`` is one of the seven known commands (the
    parser commits no other), ``count`` (INFER: images, LOAD_PARAMS: words) at most
    ``max_payload // image_bytes`` or ``max_payload // 10`` (the length is not stored: the
    parser's rules make it ``count * image_bytes`` or ``4 + 10 * count``), and ``arg`` is READ_RESULT's seq or LOAD_PARAMS' offset clamped
    to ``param_words + 1`` (any offset above the design's words behaves the same).
    """
    return data.StructLayout({
        "command": 3,
        "seq": 8,
        "count": count_bits,
        "arg": arg_bits,
        "match": 1,     # LOAD_BEGIN: design id and word count equal the design's
    })


class Source:
    """Where the encoder takes a reply's body from (after the reason byte)."""
    NONE = 0
    WORDS = 1     # LOAD_REPLY_LAYOUT from the descriptor's ``arg``
    STATUS = 2    # STATUS_LAYOUT, snapshot when the reply starts (the executor waits for it)
    ROM = 3       # IDENTIFY body
    RESULT = 4    # logits of result entry ``arg``


def reply_desc_layout(arg_bits):
    """One entry of the reply queue (and of each requester's holding register).

    The payload length is not stored: the encoder derives it from ``source`` (and, for
    ``RESULT``, the image count in ``arg``). ``arg`` is ``WORDS``: ``words_loaded`` then the
    ready bit; ``RESULT``: the result entry then the image count.
    """
    return data.StructLayout({
        "command": 8,   # a dropped frame's reply repeats whatever command byte it had
        "seq": 8,
        "reason": 4,
        "source": 3,
        "arg": arg_bits,
    })

_REASON_BITS = max(r.value for r in Reason).bit_length()
_LOAD_REPLY_BYTES = protocol.LOAD_REPLY_LAYOUT.size // 8
_STATUS_BYTES = protocol.STATUS_LAYOUT.size // 8
_REPLY_QUEUE_DEPTH = 4
_INFLIGHT_DEPTH = 4


def default_watchdog_cycles(clock_hz, baud):
    """Default watchdog: 64 byte-times of the line (640 cycles without a UART), at least
    10 ms of the clock."""
    byte_times = 64 * 10 * clock_hz // baud if baud > 0 else 640
    return max(byte_times, clock_hz // 100)


def divider_constants(n, bits):
    """``(M, s)`` with ``floor(x * M / 2**s) == x // n`` for every ``0 <= x < 2**bits``.

    Granlund-Montgomery: ``s = bits + ceil(log2 n)``, ``M = ceil(2**s / n)``; the error term
    ``x * (M*n - 2**s) < 2**bits * n <= 2**s`` never reaches the next integer. The parser
    divides a frame's length by a constant this way, as shifts and adds (no DSP block).
    """
    s = bits + max(0, (n - 1).bit_length())
    return -(-(1 << s) // n), s


def _div_const(value, n, bits):
    """(quotient, exact) of ``value // n`` for an unsigned ``bits``-bit ``value`` and a
    constant ``n >= 1``, without a multiplier."""
    if n & (n - 1) == 0:
        k = n.bit_length() - 1
        return value >> k, (value & (n - 1)) == 0 if k else Const(1, 1)
    mul, s = divider_constants(n, bits)
    q = (const_mul(value, mul) >> s)[:bits]
    return q, const_mul(q, n)[:bits + 1] == value


def _mod_is(value, n, r, bits=16):
    """Whether ``value % n == r`` for an unsigned ``bits``-bit ``value``, constant
    ``n >= 1`` and ``0 <= r < n``, in a few LUTs.

    ``n = 2**a * d`` with ``d`` odd: the low ``a`` bits are compared directly; modulo ``d``,
    when ``2**k % d == 1`` for some ``k <= 8``, the sum of the value's ``k``-bit digits has
    the value's residue (``d = 5``, the parameter word's 10 bytes, sums 4-bit digits), and
    the small sum is compared with the few multiples it can equal. Any other ``d`` falls back
    to :func:`_div_const` (shifts and adds).
    """
    a = (n & -n).bit_length() - 1
    d = n >> a
    terms = [value[:a] == (r & ((1 << a) - 1))] if a else []
    if d > 1:
        k = next((k for k in range(1, 9) if (1 << k) % d == 1), None)
        if k is None:
            # ``value - r`` wraps around below r, where the residue cannot be r (r < n):
            # a 16-bit compare, only for r > 0 (the frame-length checks use r = 0 here).
            exact = _div_const((value - r)[:bits], n, bits)[1]
            return exact & (value >= r) if r else exact
        digits = [value[i:i + k] for i in range(0, bits, k)]
        total = digits[0]
        for dg in digits[1:]:
            total = total + dg
        top = len(digits) * ((1 << k) - 1)
        terms.append(Cat(*[total == c for c in range(r % d, top + 1, d)]).any())
    return Cat(*terms).all() if terms else Const(1, 1)


def _lt_const(value, n):
    """``value < n`` for a constant ``n``: the bits above ``n - 1``'s width must be zero and
    only the low bits are compared (a 16-bit ``<`` would be a 16-cell carry chain; the
    limits compared here are small)."""
    if n <= 0:
        return Const(0, 1)
    b = (n - 1).bit_length()
    if b >= len(value):
        return value < n
    high_zero = value[b:] == 0
    if n == 1 << b:
        return high_zero
    return high_zero & (value[:b] < n)


def _lt_narrow(low, high, n):
    """``value < n`` for a constant ``n``, of a value kept as its low bits ``low`` and a flag
    ``high`` (a bit above them is set); ``n - 1`` fits ``low``."""
    if n <= 0:
        return Const(0, 1)
    return ~high & _lt_const(low, n)


class _BlockFIFO(SyncFIFOBuffered):
    """``SyncFIFOBuffered`` whose storage (read through a register, as block RAM is) is
    marked ``ram_style = "block"``: Yosys then maps even a 3-entry queue to block RAM
    instead of flip-flops and read multiplexers.

    It is also :data:`~shiftacc.hw.synth.COLLISION_FREE`: the inner queue reads only while
    it holds an entry and writes only while it is not full, so its read and write pointers
    are equal (the one case where they could meet) only when one of them is idle."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        storage = m.submodules["storage"]
        storage.attrs.update({"ram_style": "block", **COLLISION_FREE})
        if self.depth > 1:
            # (Later statements win: the read data as the tests' poison gives it.)
            m.d.comb += self.r_data.eq(collision_read(m, storage.read_ports[0],
                                                      storage.write_ports))
        return m


#: Words of one result-RAM bank with registered reads: an ECP5 DP16KD as 512 x 36.
_RESULT_BANK_BITS = 9
_RESULT_BANK_WORDS = 1 << _RESULT_BANK_BITS


class _PortSignals:
    """The signals the engine drives of a memory port (``addr``, ``en``, ``data``), when
    the memory behind them is several (the banked result RAM)."""

    def __init__(self, depth, width, en_width):
        self.addr = Signal(range(max(depth, 2)))
        self.en = Signal(en_width)
        self.data = Signal(width)


class FrameCRCs(wiring.Component):
    """The two CRCs of a frame (:data:`~shiftacc.sw.protocol.HEADER_CRC` over the header,
    :data:`~shiftacc.sw.protocol.FRAME_CRC` over header and payload), fed a byte at a time:
    ``amaranth.lib.crc`` processors, byte-parallel or bit-serial.

    ``serial=False``: the algorithms' 8-bit processors, a byte a cycle (the 32-bit one is a
    ~130-LUT XOR network). ``serial=True``: their 1-bit processors behind two 8-bit
    shift registers (one per bit order), a byte in 8 cycles (the XOR networks shrink to the
    polynomials' taps, a LUT or two a bit, and are one LUT deep): for a UART, whose bytes are at least ``10 * MIN_CYCLES_PER_BIT`` = 40
    cycles apart. The bits go in the order the 8-bit processors take them (least significant
    first when an algorithm reflects its input), so both compute the same CRCs; the
    algorithms are still defined once, in :mod:`shiftacc.sw.protocol`.

    Parameters
    ----------
    serial : bool

    Attributes
    ----------
    start : In(1)
        Restart both from their initial values (not while ``busy``).
    data : In(8)
    valid_h, valid_f : In(1)
        Add ``data`` to the header CRC, the frame CRC (serial: not while ``busy``).
    hcrc : Out(8)
    fcrc : Out(32)
        The CRCs of the bytes added so far, once ``busy`` is low.
    match_detected : Out(1)
        The bytes added to the frame CRC end with their own CRC (once ``busy`` is low).
    busy : Out(1)
        Serial: a byte is still being shifted in (always 0 when parallel).
    """

    def __init__(self, *, serial=False):
        self.serial = bool(serial)
        super().__init__({
            "start": In(1), "data": In(8), "valid_h": In(1), "valid_f": In(1),
            "hcrc": Out(protocol.HEADER_CRC.crc_width),
            "fcrc": Out(protocol.FRAME_CRC.crc_width),
            "match_detected": Out(1), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        width = 1 if self.serial else 8
        m.submodules.h = h = protocol.HEADER_CRC(data_width=width).create()
        m.submodules.f = f = protocol.FRAME_CRC(data_width=width).create()
        m.d.comb += [self.hcrc.eq(h.crc), self.fcrc.eq(f.crc),
                     self.match_detected.eq(f.match_detected),
                     h.start.eq(self.start), f.start.eq(self.start)]
        if not self.serial:
            m.d.comb += [h.data.eq(self.data), h.valid.eq(self.valid_h),
                         f.data.eq(self.data), f.valid.eq(self.valid_f)]
            return m
        # Two shift registers, one per bit order (least significant bit first for an
        # algorithm that reflects its input, shifted right; most significant first, shifted
        # left): each processor's data bit is a flip-flop's output. (One register read
        # through ``bit_select(8 - left)`` put a subtractor and an 8:1 mux in front of the
        # CRC registers, the iCEBreaker's critical path at seeds 2-3 once the parser's input
        # was registered.)
        sr_lsb = Signal(8)
        sr_msb = Signal(8)
        left = Signal(range(9))
        take_h = Signal()
        take_f = Signal()
        # ``busy`` (``left != 0``) is a register of its own, decided from the cycle before
        # (a byte taken, or more than one bit left): the encoder's handshake, which waits
        # for it, starts from a flip-flop.
        busy = Signal()
        m.d.sync += busy.eq((self.valid_h | self.valid_f) | (left > 1))
        m.d.comb += self.busy.eq(busy)
        for proc, algo, take in ((h, protocol.HEADER_CRC, take_h),
                                 (f, protocol.FRAME_CRC, take_f)):
            m.d.comb += [proc.valid.eq(busy & take),
                         proc.data.eq(sr_lsb[0] if algo.reflect_input else sr_msb[7])]
        with m.If(left != 0):
            m.d.sync += [left.eq(left - 1), sr_lsb.eq(sr_lsb >> 1), sr_msb.eq(sr_msb << 1)]
        with m.If(self.valid_h | self.valid_f):
            m.d.sync += [sr_lsb.eq(self.data), sr_msb.eq(self.data), left.eq(8),
                         take_h.eq(self.valid_h), take_f.eq(self.valid_f)]
        return m


def _indexed_addr(index, offset, stride, count):
    """``index * stride + offset`` (``offset < stride``), the address of row ``offset`` of
    region ``index`` in a memory of ``count`` regions: a concatenation when ``stride`` is a
    power of two (no adder, no base multiplexer), else a base constant plus an adder."""
    width = _bits(count * stride - 1)
    if stride & (stride - 1) == 0:
        k = stride.bit_length() - 1
        low = Const(offset, k) if isinstance(offset, int) else offset[:k]
        return Cat(low, index)[:width]
    base = Array(Const(j * stride, width) for j in range(count))[index]
    return (base + offset)[:width]


def link_identity(model, plan, *, clock_hz, baud, slots, max_payload, watchdog_cycles):
    """The IDENTIFY reply body: :data:`~shiftacc.sw.protocol.IDENTIFY_LAYOUT` bytes then the
    descriptor blob (what the descriptor ROM holds)."""
    from .top import param_words
    desc = protocol.descriptor(model, plan)
    h, w, c = model.input_shape
    fields = {
        "link_version": protocol.LINK_VERSION,
        "design_id": protocol.design_id(desc),
        "clock_hz": clock_hz,
        "baud": baud,
        "max_payload": max_payload,
        "slots": slots,
        "image_bytes": h * w * c,
        "classes": len(model.classes),
        "input_bits": model.input_bits,
        "param_words": len(param_words(model, plan)),
        "watchdog_cycles": watchdog_cycles,
    }
    return protocol.layout_bytes(protocol.IDENTIFY_LAYOUT, fields) + protocol.descriptor_blob(desc)


class LinkEngine(wiring.Component):
    """Frame parser, executor, result collector and reply encoder of the host link.

    Parameters
    ----------
    model : models.artifact.Model
    plan : hw.plan.Plan
    clock_hz : int
        Clock frequency (reported by IDENTIFY; sets the default watchdog).
    baud : int
        Line rate (0: byte streams without a UART, e.g. a simulator).
    slots : int
        Receive slots: frames the host may have unanswered at once.
    max_payload : int, optional
        Longest request payload (default ``max(1024, image_bytes)``).
    watchdog_cycles : int, optional
        Cycles without a byte that abandon a partial frame (default
        :func:`default_watchdog_cycles`).
    block_ram_fifos : bool
        Put the reply queue and the in-flight FIFO in block RAM (3 iCE40 EBR more; about
        150 logic cells fewer): for devices short of logic, not of RAM (the iCE40 UP5K).
        The default leaves the choice to synthesis (flip-flops or LUT RAM, as small as
        they are). The behaviour is the same either way.
    serial_crc : bool
        Compute the four CRCs bit-serially (:class:`FrameCRCs`: about 100 iCE40 logic cells
        fewer, and shallower logic), which needs at least 9 cycles between two received
        bytes: what a UART gives (:class:`~shiftacc.hw.board.LinkTop` sets it with its
        UART PHY). Replies are offered a byte per 8 cycles at most. The bytes on the wire
        are the same either way.
    param_handshake : bool
        Add the input ``params_busy``: while it is high the engine holds its parameter word
        (the payload of ``params``, its byte shift register) and sends no further beat,
        and a LOAD_PARAMS frame completes (its reply, and the next frame's execution) only
        once it is low: a parameter word crossing into another clock domain
        (:class:`~shiftacc.hw.cdc.ParamCrossing`) without an 80-bit copy of it. Default
        False: the bus is always ready, as the accelerator's port.
    registered_reads : bool or None
        Register the result RAM's (and identity ROM's) read data before the reply-byte
        mux (one more cycle per body byte, hidden behind the bit-serial CRCs): an ECP5
        block RAM's ~5.8 ns clock-to-output then ends in a flip-flop instead of running
        through the byte selection (the link's critical path on the 85F). A result RAM of
        more than 512 words is then split into 512-word memories (one DP16KD each, as Yosys
        maps it anyway), each read into its own 32-bit register, so the choice among them
        also follows a register. None
        (default): on when the platform ``elaborate`` is given is an ECP5
        (``platform.family == "ecp5"``), so the iCE40 link keeps its size. The bytes on the
        wire are the same either way.

    Attributes
    ----------
    rx : In(stream.Signature(8, always_ready=True))
        Received bytes, at most one per cycle; never stalled.
    tx : Out(stream.Signature(8))
        Reply bytes.
    params : Out(param_bus_signature())
        To the accelerator's parameter port.
    images : Out(pixel_stream(plan.input_lanes, model.input_bits))
        To the accelerator's image port.
    logits : In(pixel_stream(1, 32, is_signed=True))
        From the accelerator.
    line_error : In(1)
        One-cycle pulse per UART line error (counted in STATUS ``line_errors``).
    params_busy : In(1)
        Only with ``param_handshake``: hold the parameter word (see above).
    params_ready, busy, error : Out(1)
        Status for LEDs: every parameter word loaded; a slot occupied or an image in flight;
        the last answered frame was dropped.

    Raises
    ------
    ValueError
        A parameter out of range, or a reply that would not fit a frame.
    """

    def __init__(self, model, plan, *, clock_hz, baud, slots=4, max_payload=None,
                 watchdog_cycles=None, block_ram_fifos=False, serial_crc=False,
                 param_handshake=False, registered_reads=None):
        from .top import param_words
        require_int("LinkEngine", "clock_hz", clock_hz, 1, (1 << 32) - 1)
        require_int("LinkEngine", "baud", baud, 0, (1 << 32) - 1)
        require_int("LinkEngine", "slots", slots, 1, 255)
        h, w, c = model.input_shape
        self.image_bytes = h * w * c
        if max_payload is None:
            max_payload = max(1024, self.image_bytes)
        require_int("LinkEngine", "max_payload", max_payload, max(self.image_bytes, 16), 0xFFFF)
        if watchdog_cycles is None:
            watchdog_cycles = default_watchdog_cycles(clock_hz, baud)
        require_int("LinkEngine", "watchdog_cycles", watchdog_cycles, 2, (1 << 32) - 1)
        self.model, self.plan = model, plan
        self.clock_hz, self.baud, self.slots = clock_hz, baud, slots
        self.max_payload, self.watchdog_cycles = max_payload, watchdog_cycles
        self.block_ram_fifos = bool(block_ram_fifos)
        self.serial_crc = bool(serial_crc)
        self.param_handshake = bool(param_handshake)
        self.registered_reads = None if registered_reads is None else bool(registered_reads)
        self.channels = c
        self.pixels = h * w
        self.classes = len(model.classes)
        self.input_bits = model.input_bits
        self.lanes = plan.input_lanes
        self.max_images = max_payload // self.image_bytes
        self.words = param_words(model, plan)
        self.param_count = len(self.words)
        self.limits = protocol.param_limits(self.words)
        # Register widths: every counter, address and table field as wide as its largest
        # value and no wider (each bit is a flip-flop; zero-extended where the protocol's
        # field is wider, which is exact since the value never exceeds it).
        self.max_words = (max_payload - 4) // protocol.PARAM_WORD_BYTES
        self.length_bits = _bits(max_payload)
        self.count_bits = _bits(max(self.max_images, self.max_words))
        self.words_bits = _bits(self.param_count)
        self.offset_bits = _bits(self.param_count + 1)
        self.slot_bits = max(1, (slots - 1).bit_length())
        self.meta_layout = slot_meta_layout(count_bits=self.count_bits,
                                            arg_bits=max(8, self.offset_bits))
        self.desc_layout = reply_desc_layout(max(self.words_bits + 1,
                                                 self.slot_bits + self.count_bits))
        self.identity = link_identity(model, plan, clock_hz=clock_hz, baud=baud, slots=slots,
                                      max_payload=max_payload, watchdog_cycles=watchdog_cycles)
        self.design_id = protocol.design_id(protocol.descriptor(model, plan))
        for what, n in (("IDENTIFY reply", 1 + len(self.identity)),
                        ("INFER reply", 1 + self.max_images * self.classes * protocol.LOGIT_BYTES)):
            if n > 0xFFFF:
                raise ValueError(f"LinkEngine: the {what} would be {n} bytes, over a frame's "
                                 f"65535; lower max_payload")
        members = {
            "rx": In(stream.Signature(8, always_ready=True)),
            "tx": Out(stream.Signature(8)),
            "params": Out(param_bus_signature()),
            "images": Out(pixel_stream(self.lanes, self.input_bits)),
            "logits": In(pixel_stream(1, 32, is_signed=True)),
            "line_error": In(1),
            "params_ready": Out(1),
            "busy": Out(1),
            "error": Out(1),
        }
        if self.param_handshake:
            members["params_busy"] = In(1)
        super().__init__(members)

    # --- resources ------------------------------------------------------------------------

    @property
    def block_memories(self):
        """Names of the memories marked for block RAM whatever their size (the FIFOs with
        ``block_ram_fifos``)."""
        return ("link.inflight_fifo", "link.reply_queue") if self.block_ram_fifos else ()

    @property
    def status_base(self):
        """First row of the result RAM's STATUS snapshot (after the results' rows)."""
        return self.slots * self.max_images * self.classes

    @property
    def result_words(self):
        """Rows of the result RAM: one int32 logit each, then the STATUS reply body's
        snapshot (4 bytes a row)."""
        return self.status_base + -(-_STATUS_BYTES // 4)

    def cost(self):
        """Every memory the engine instantiates (slot RAM, slot table, result RAM, descriptor
        ROM, STATUS counters, FIFOs: with ``block_ram_fifos`` the names in
        :attr:`block_memories` are forced into block RAM); no multipliers (the length checks are digit sums, the one constant
        multiplication, a result's byte count, is shifts and adds). ``cycles``: one image fed
        per ``image_bytes`` cycles (one slot byte read per cycle)."""
        mems = [
            MemorySpec("link.slot_ram", self.slots * self.max_payload, 8),
            MemorySpec("link.slot_meta", self.slots, self.meta_layout.size),
            MemorySpec("link.result_ram", self.result_words, 32),
            MemorySpec("link.descriptor_rom", len(self.identity), 8),
            # STATUS: the counters, swept byte by byte (the snapshot the encoder reads is in
            # the result RAM).
            MemorySpec("link.status_counters", _STATUS_BYTES, 8),
        ]
        mems += fifo_memories("link.inflight_fifo", 8 + self.count_bits, _INFLIGHT_DEPTH)
        mems += fifo_memories("link.reply_queue", self.desc_layout.size, _REPLY_QUEUE_DEPTH)
        return Cost(cycles=self.image_bytes, multipliers=[], memories=mems)

    # --- gateware -------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        S = self.slots
        slot_bits = self.slot_bits
        mp = self.max_payload
        desc_layout = self.desc_layout

        # ---- memories ----
        # The memories with a synchronous read are COLLISION_FREE (hw/synth.py: no read-first
        # emulation around an iCE40 block RAM). Slot RAM: the parser writes only a free slot
        # (``no_slot`` otherwise), the executor consumes bytes only of the head slot, which
        # stays occupied until they are read; any other read is idle (a stale address,
        # ``rd_valid`` low). Result RAM: the collector writes an entry with no reference left
        # and the snapshot rows only while the encoder waits for them (SNAP); the encoder
        # consumes bytes (``fetch``) only of an entry it holds a reference to, or of a
        # complete snapshot. STATUS counters: the sweep writes a byte two cycles after
        # reading it, never the one it reads (32 bytes a turn).
        m.submodules.slot_ram = slot_ram = Memory(shape=8, depth=S * mp, init=[],
                                                  attrs=COLLISION_FREE)
        slot_w = slot_ram.write_port()
        slot_r = slot_ram.read_port()
        m.submodules.slot_meta = meta_mem = Memory(shape=self.meta_layout, depth=S, init=[])
        meta_w = meta_mem.write_port()
        meta_r = meta_mem.read_port(domain="comb")
        registered = self.registered_reads
        if registered is None:
            registered = getattr(platform, "family", None) == "ecp5"
        words = self.result_words
        if registered and words > _RESULT_BANK_WORDS:
            # Registered reads from a result RAM deeper than one ECP5 block RAM (512 x 36):
            # one memory per block RAM, each read into its own register, so that the
            # selection among them (otherwise a mux Yosys puts between the block RAMs'
            # outputs and the first register) follows a register. Same block RAMs.
            res_w = _PortSignals(words, 32, 4)
            res_r = _PortSignals(words, 32, 1)
            res_banks = []
            res_rdata = []
            for b in range(-(-words // _RESULT_BANK_WORDS)):
                depth = min(_RESULT_BANK_WORDS, words - b * _RESULT_BANK_WORDS)
                mem = Memory(shape=32, depth=depth, init=[], attrs=COLLISION_FREE)
                m.submodules[f"result_ram{b}"] = mem
                wp, rp = mem.write_port(granularity=8), mem.read_port()
                hit = res_w.addr[_RESULT_BANK_BITS:] == b
                m.d.comb += [wp.addr.eq(res_w.addr[:_RESULT_BANK_BITS]), wp.data.eq(res_w.data),
                             wp.en.eq(Mux(hit, res_w.en, 0)),
                             rp.addr.eq(res_r.addr[:_RESULT_BANK_BITS]), rp.en.eq(res_r.en)]
                res_banks.append(rp)
                res_rdata.append(collision_read(m, rp, [wp]))
        else:
            m.submodules.result_ram = res_ram = Memory(shape=32, depth=words, init=[],
                                                       attrs=COLLISION_FREE)
            res_w = res_ram.write_port(granularity=8)
            res_r = res_ram.read_port()
            res_banks = [res_r]
            res_rdata = [collision_read(m, res_r, [res_w])]
        m.submodules.rom = rom = Memory(shape=8, depth=len(self.identity),
                                        init=list(self.identity))
        rom_r = rom.read_port()
        def slot_addr(slot, offset):
            return _indexed_addr(slot, offset, mp, S)

        res_stride = self.max_images * self.classes

        def res_addr0(entry):
            return _indexed_addr(entry, 0, res_stride, S)

        fifo = _BlockFIFO if self.block_ram_fifos else SyncFIFOBuffered
        m.submodules.inflight = inflight = fifo(width=8 + self.count_bits, depth=_INFLIGHT_DEPTH)
        m.submodules.replyq = replyq = fifo(width=desc_layout.size, depth=_REPLY_QUEUE_DEPTH)

        # ---- shared state ----
        slot_wr = Signal(slot_bits)
        slot_rd = Signal(slot_bits)
        slot_used = Signal(range(S + 1))
        commit = Signal()
        free = Signal()
        m.d.sync += slot_used.eq(slot_used + commit - free)
        with m.If(commit):
            m.d.sync += slot_wr.eq(Mux(slot_wr == S - 1, 0, slot_wr + 1))
        with m.If(free):
            m.d.sync += slot_rd.eq(Mux(slot_rd == S - 1, 0, slot_rd + 1))

        params_ready = Signal()
        loading = Signal()
        words_loaded = Signal(self.words_bits)
        in_flight = Signal(range(_INFLIGHT_DEPTH + 2))   # INFER frames pushed, not answered
        push_flight = Signal()
        pop_flight = Signal()
        m.d.sync += in_flight.eq(in_flight + push_flight - pop_flight)
        do_reset = Signal()          # RESET executed this cycle
        snap_req = Signal()          # the encoder waits for a STATUS snapshot
        snap_we = Signal()           # a snapshot byte into the result RAM
        snap_byte = Signal(range(_STATUS_BYTES))
        snap_data = Signal(8)

        # STATUS counters: in a RAM, updated by a byte-serial sweep (:meth:`_status`); here
        # only what feeds them. Every increment is a registered signal or one registered
        # here, so no counter logic sits behind a decision (the drop decision was the
        # critical path: header -> length checks -> drop -> a 32-bit adder).
        inc_ok = Signal()
        inc_images = Signal()
        parser_drop = Signal()
        parser_reason = Signal(_REASON_BITS)
        exec_drop = Signal()
        exec_reason = Signal(_REASON_BITS)
        exec_drop_r = Signal()
        exec_reason_r = Signal(_REASON_BITS)
        m.d.sync += [exec_drop_r.eq(exec_drop), exec_reason_r.eq(exec_reason)]
        lost = Signal()
        last_drop = Signal(_REASON_BITS)
        # The executor's and the collector's increments are registered too: inc_ok is the
        # reply queue's grant (offering, queue room, the executor's state) and inc_images the
        # collector's logit handshake, and in front of the delta adders those decodes were
        # the 85F digits design's critical path once the GAP stage was cut (offering -> grant
        # -> frames_ok's delta carry chain, 10.19 ns, 7.7 ns of it routing). An increment
        # lands a cycle later; a STATUS snapshot starts at least two cycles after the
        # grant it must count. An increment in RESET's own cycle is dropped as before
        # (the reset wins over the delta's sum there; a cycle later it must be masked).
        inc_ok_r = Signal()
        inc_images_r = Signal()
        m.d.sync += [inc_ok_r.eq(inc_ok & ~do_reset), inc_images_r.eq(inc_images & ~do_reset)]
        incs = {
            "frames_ok": inc_ok_r,
            "frames_dropped": parser_drop + exec_drop_r,
            "replies_lost": lost,
            "images_done": inc_images_r,
            "rx_bytes": self.rx.valid,
            "tx_bytes": self.tx.valid & self.tx.ready,
            "line_errors": self.line_error,
            "cycles": Const(1, 1),
        }
        with m.If(do_reset):
            m.d.sync += last_drop.eq(0)
        with m.Elif(parser_drop):
            m.d.sync += last_drop.eq(parser_reason)
        with m.Elif(exec_drop_r):
            m.d.sync += last_drop.eq(exec_reason_r)

        busy = Signal()
        m.d.comb += [
            busy.eq((slot_used != 0) | (in_flight != 0)),
            self.busy.eq(busy),
            self.params_ready.eq(params_ready),
            self.error.eq(last_drop != 0),
        ]

        # ---- reply queue: three requesters, rotating priority ----
        nak_valid = Signal()
        nak_desc = Signal(desc_layout)
        coll_req = Signal()
        coll_desc = Signal(desc_layout)
        exec_req = Signal()
        exec_desc = Signal(desc_layout)
        reqs = [nak_valid, coll_req, exec_req]
        descs = [nak_desc, coll_desc, exec_desc]
        # Two phases, every decision from flip-flops: in a *choose* cycle (``offering`` low)
        # the next requester is picked from the requests (each a flip-flop, held until
        # granted) and a rotating priority (``prio``), into the one-hot register ``sel``;
        # in the *offer* cycles that follow, that requester's descriptor is offered to the
        # queue until it takes it (the grant: ``offering``, ``sel`` and the queue's level,
        # one LUT). The chosen request cannot go away before its grant, so the queue is
        # never offered a stale descriptor. At most one reply every two cycles: the encoder
        # takes a dozen or more per reply. (The choice used to be made in the grant cycle
        # itself, behind the grant: requester state -> offered -> queue ready -> grant ->
        # next priority -> choice, 7-8 LUT levels, the iCEBreaker's critical path.)
        prio = Signal(2)             # who goes first in the next choice
        sel = Signal(3)              # one-hot: the requester chosen (offered while offering)
        offering = Signal()
        wr = Signal()
        m.d.comb += wr.eq(offering & replyq.w_stream.ready)
        grant = [Signal(name=f"grant{i}") for i in range(3)]
        for i in range(3):
            m.d.comb += grant[i].eq(wr & sel[i])
        with m.If(~offering):
            m.d.sync += offering.eq(Cat(*reqs).any())
            with m.Switch(prio):
                for p in range(3):
                    with m.Case(p):
                        order = [(p + k) % 3 for k in range(3)]
                        with m.If(reqs[order[0]]):
                            m.d.sync += sel.eq(1 << order[0])
                        with m.Elif(reqs[order[1]]):
                            m.d.sync += sel.eq(1 << order[1])
                        with m.Else():
                            m.d.sync += sel.eq(1 << order[2])
        with m.Elif(wr):
            m.d.sync += [offering.eq(0), prio.eq(Mux(sel[0], 1, Mux(sel[1], 2, 0)))]
        q_in = Signal(desc_layout)
        m.d.comb += q_in.eq(Mux(sel[0], nak_desc, Mux(sel[1], coll_desc, exec_desc)))
        m.d.comb += [replyq.w_stream.valid.eq(offering), replyq.w_stream.payload.eq(q_in)]

        # Outstanding references to each result entry (queued or being sent): the collector
        # must not overwrite an entry the encoder has yet to read.
        pending = [Signal(4, name=f"pending{e}") for e in range(S)]
        enc_done_result = Signal()
        enc_entry = Signal(slot_bits)
        for e in range(S):
            inc = (replyq.w_stream.valid & replyq.w_stream.ready
                   & (q_in.source == Source.RESULT) & (q_in.arg[:slot_bits] == e))
            dec = enc_done_result & (enc_entry == e)
            m.d.sync += pending[e].eq(pending[e] + inc - dec)

        # STATUS replies queued but not yet started: the executor executes nothing else while
        # one waits, so the encoder's snapshot is the state where the STATUS was executed.
        status_pending = Signal(2)
        status_taken = Signal()
        status_queued = (replyq.w_stream.valid & replyq.w_stream.ready
                         & (q_in.source == Source.STATUS))
        m.d.sync += status_pending.eq(status_pending + status_queued - status_taken)

        # ================= parser =================
        self._parser(m, slot_w, meta_w, slot_addr, slot_wr, slot_used, commit, nak_valid,
                     nak_desc, grant[0], parser_drop, parser_reason, lost)

        # ================= executor =================
        res_meta_seq = [Signal(8, name=f"res_seq{e}") for e in range(S)]
        res_meta_cnt = [Signal(self.count_bits, name=f"res_cnt{e}") for e in range(S)]
        res_meta_ok = [Signal(name=f"res_ok{e}") for e in range(S)]
        res_wr = Signal(slot_bits)
        self._executor(m, meta_r, slot_r, slot_addr, slot_rd, slot_used, free, exec_req,
                       exec_desc, grant[2], exec_drop, exec_reason, inc_ok, params_ready,
                       loading, words_loaded, do_reset, in_flight, push_flight, inflight,
                       res_meta_seq, res_meta_cnt, res_meta_ok, res_wr, status_pending,
                       slot_rdata=collision_read(m, slot_r, [slot_w]))

        # ================= collector =================
        classes = self.classes
        c_state = Signal(2)      # 0 idle, 1 collect, 2 reply, 3 settle
        # ``entry_free``: the entry to be written has no reference left (queued or being
        # sent), as a register (the reference counts' mux and compare are off the enable of
        # the collector's registers). It is a cycle old: the collector spends a cycle in
        # state 3 after each reply, so that it is then of the new ``res_wr`` and counts
        # that reply's own reference; the executor's READ_RESULT references are queued
        # while nothing is in flight, cycles before the collector can start on an entry.
        entry_free = Signal()
        m.d.sync += entry_free.eq(Array(pending)[res_wr] == 0)
        c_seq = Signal(8)
        c_cnt = Signal(self.count_bits)
        c_left = Signal(self.count_bits)
        c_cls = Signal(range(max(2, classes)))
        c_addr = Signal(_bits(self.result_words - 1))
        c_entry = Signal(slot_bits)
        head = Signal(data.StructLayout({"seq": 8, "count": self.count_bits}))
        # The reply (offered in state 2, ``coll_req`` a flip-flop set with it): its fields
        # are registers held until the grant, so they need no state decode.
        m.d.comb += [
            coll_desc.command.eq(Command.INFER.value | protocol.REPLY),
            coll_desc.seq.eq(c_seq),
            coll_desc.reason.eq(Reason.OK.value),
            coll_desc.source.eq(Source.RESULT),
            coll_desc.arg.eq(Cat(c_entry, c_cnt)),
        ]
        m.d.comb += head.eq(inflight.r_stream.payload)
        with m.Switch(c_state):
            with m.Case(0):
                with m.If(inflight.r_stream.valid & entry_free):
                    m.d.sync += [c_state.eq(1), c_seq.eq(head.seq), c_cnt.eq(head.count),
                                 c_left.eq(head.count), c_cls.eq(0),
                                 c_addr.eq(res_addr0(res_wr)), c_entry.eq(res_wr),
                                 Array(res_meta_ok)[res_wr].eq(0)]
            with m.Case(1):
                m.d.comb += self.logits.ready.eq(~snap_we)
                with m.If(self.logits.valid & ~snap_we):
                    m.d.comb += [res_w.en.eq(0b1111), res_w.addr.eq(c_addr),
                                 res_w.data.eq(self.logits.payload.data[0])]
                    m.d.sync += c_addr.eq(c_addr + 1)
                    with m.If(c_cls == classes - 1):
                        m.d.sync += c_cls.eq(0)
                        m.d.comb += inc_images.eq(1)
                        m.d.sync += c_left.eq(c_left - 1)
                        with m.If(c_left == 1):
                            m.d.sync += [c_state.eq(2), coll_req.eq(1)]
                    with m.Else():
                        m.d.sync += c_cls.eq(c_cls + 1)
            with m.Case(2):
                with m.If(grant[1]):
                    m.d.comb += [inflight.r_stream.ready.eq(1), pop_flight.eq(1)]
                    m.d.sync += [c_state.eq(3), coll_req.eq(0),
                                 Array(res_meta_seq)[c_entry].eq(c_seq),
                                 Array(res_meta_cnt)[c_entry].eq(c_cnt),
                                 Array(res_meta_ok)[c_entry].eq(1),
                                 res_wr.eq(Mux(res_wr == S - 1, 0, res_wr + 1))]
            with m.Case(3):
                m.d.sync += c_state.eq(0)

        # ================= STATUS =================
        m.submodules.status_live = live = Memory(shape=8, depth=_STATUS_BYTES, init=[],
                                                 attrs=COLLISION_FREE)

        regs = Signal(protocol.STATUS_LAYOUT)
        m.d.comb += [
            regs.flags.params_ready.eq(params_ready),
            regs.flags.loading.eq(loading),
            regs.flags.busy.eq(busy),
            regs.last_drop.eq(last_drop),
            regs.words_loaded.eq(words_loaded),
        ]
        self._status(m, live, (snap_we, snap_byte, snap_data), regs, incs, do_reset, snap_req,
                     status_taken)
        # The result RAM's write port: the collector's logits, or a snapshot byte (the
        # collector then waits a cycle: ``logits.ready`` is low).
        with m.If(snap_we):
            m.d.comb += [res_w.addr.eq(self.status_base + snap_byte[2:]),
                         res_w.data.eq(snap_data.replicate(4)),
                         res_w.en.eq(Const(1, 4) << snap_byte[:2])]

        # ================= encoder =================
        self._encoder(m, replyq, rom_r, res_r, res_addr0, snap_req, status_taken,
                      enc_done_result, enc_entry, registered, res_banks, res_rdata)
        return m

    # ------------------------------------------------------------------------------------------

    def _parser(self, m, slot_w, meta_w, slot_addr, slot_wr, slot_used, commit, nak_valid,
                nak_desc, nak_grant, drop, drop_reason, lost):
        S = self.slots
        # The received byte and its SYNC compares are registered before the parser (one
        # cycle of latency, still a byte a cycle): the UART's data register, its 8-bit
        # compares and the header decode were in series in front of the header registers'
        # enables (the iCEBreaker's critical path at seed 2 once the reply queue's choice was
        # registered).
        rx_valid = Signal()
        byte = Signal(8)
        is_sync0 = Signal()
        is_sync1 = Signal()
        m.d.sync += [rx_valid.eq(self.rx.valid), byte.eq(self.rx.payload),
                     is_sync0.eq(self.rx.payload == protocol.SYNC[0]),
                     is_sync1.eq(self.rx.payload == protocol.SYNC[1])]
        m.submodules.rx_crc = crcs = FrameCRCs(serial=self.serial_crc)

        HUNT0, HUNT1, HEADER, PAYLOAD, CRC = range(5)
        state = Signal(range(5))
        hidx = Signal(3)
        # The header as received, its length only as wide as ``max_payload`` (a longer one
        # is dropped at the header, BAD_LENGTH, from ``len_in``): the payload counter's end
        # compare is then ``length_bits`` wide, not 16. Once the header is in, ``length``
        # holds the payload length minus one.
        hdr = Signal(data.StructLayout({"command": 8, "seq": 8,
                                        "length": max(self.length_bits, 8)}))
        pidx = Signal(self.length_bits)
        cidx = Signal(2)
        no_slot = Signal()        # BUSY: the frame is read but not stored
        noted = Signal(_REASON_BITS)  # a rule-2 reason noted while the payload arrived
        match = Signal()
        arg = Signal(self.meta_layout.members["arg"])
        arg_big = Signal()        # LOAD_PARAMS offset above what ``arg`` holds
        count = Signal(self.count_bits)
        img_byte = Signal(range(max(2, self.image_bytes)))
        fin = Signal()            # the last CRC byte arrived last cycle: decide now
        store = Signal()          # the frame passed: commit it now
        # The payload's decode from flip-flops: ``in_pay`` is ``state == PAYLOAD`` as a
        # register of its own (set and cleared with the state's transitions), ``lp_word``
        # "a LOAD_PARAMS frame past its offset" (``cmd_is_load_params & pidx >= 4``, set as
        # byte 3 arrives) and the word's byte index a one-hot ring: the state decode, the
        # ``pidx < 4`` compare and the ``word_byte`` decode were in series in front of the
        # address fields' enables (parser state -> PAYLOAD & cmd_is_load_params ->
        # word_byte -> addr_hi, the iCEBreaker's critical path at seed 1).
        in_pay = Signal()
        lp_word = Signal()
        word_byte = Signal(protocol.PARAM_WORD_BYTES, init=1)
        # The address fields of the parameter word being received (its data bytes are not
        # needed here): of each field only the low bits some limit compare reads, and one
        # flag "a bit above them is set" (any such value fails every compare alike), taken
        # as its bytes arrive: 48 flip-flops become a few more than the limits' widths.
        lims = sorted(self.limits.items())
        fields = []                 # (first byte, bytes, low bits kept)
        for i, f_bytes in ((0, 1), (1, 1), (2, 2), (4, 2)):
            if i < 2:
                top = max([key[i] for key, _ in lims] or [0])
            else:
                top = max([lim[(i - 2) // 2] - 1 for _, lim in lims] or [0])
            fields.append((i, f_bytes, min(8 * f_bytes, _bits(top))))
        f_lo = [Signal(w, name=f"addr_lo{j}") for j, (_, _, w) in enumerate(fields)]
        f_hi = [Signal(name=f"addr_hi{j}") for j in range(len(fields))]
        word_chk = Signal()
        wd = Signal(range(self.watchdog_cycles + 1))

        # Header bytes: 0 command, 1 seq, 2-3 length; byte 4 is the header CRC.
        cmd = hdr.command
        length = hdr.length
        # The length rules are checked as the length's high byte arrives (from it and the
        # low byte's register) and their verdict registered: the header's last byte, its
        # CRC, then needs only flip-flops to decide (the length checks, a digit-sum adder
        # and compares, were #9's critical path, in series with the drop decision).
        len_in = Signal(16)
        m.d.comb += len_in.eq(Cat(hdr.length[:8], byte))
        # Every rule is checked on the length's low ``length_bits`` bits (``max_payload`` <
        # 2**length_bits) and one flag for a bit above them (such a length is over
        # ``max_payload``: BAD_LENGTH whatever the rest says): narrower compares and digit
        # sums on the path from the header register to ``len_ok``.
        lb = self.length_bits
        len_lo = len_in[:lb]
        len_hi = len_in[lb:].any() if lb < 16 else Const(0, 1)
        # Length rules without a divider: residues by digit sums (the counts themselves are
        # counted while the payload arrives).
        infer_exact = _mod_is(len_lo, self.image_bytes, 0, bits=lb)
        lp_exact = _mod_is(len_lo, protocol.PARAM_WORD_BYTES, 4 % protocol.PARAM_WORD_BYTES,
                           bits=lb)
        known = Signal()
        m.d.comb += known.eq(Cat(*[cmd == c.value for c in Command]).any())
        len_good = Signal()
        with m.Switch(cmd):
            with m.Case(Command.IDENTIFY.value, Command.STATUS.value, Command.RESET.value):
                m.d.comb += len_good.eq(len_lo == 0)
            with m.Case(Command.LOAD_BEGIN.value):
                m.d.comb += len_good.eq(len_lo == protocol.LOAD_BEGIN_LAYOUT.size // 8)
            with m.Case(Command.READ_RESULT.value):
                m.d.comb += len_good.eq(len_lo == 1)
            with m.Case(Command.LOAD_PARAMS.value):
                m.d.comb += len_good.eq((len_lo > 4) & lp_exact)
            with m.Case(Command.INFER.value):
                m.d.comb += len_good.eq((len_lo > 0) & infer_exact)
        len_ok = Signal()          # registered with the length's high byte
        len_zero = Signal()
        # With few possible high bytes (``max_payload`` < 16 * 256), the rules are checked
        # over the header's bytes instead, as tables from the protocol's own rule
        # (:func:`~shiftacc.sw.protocol.length_ok`): the command decoded with the seq byte,
        # then with the low byte one flag per high byte ``h`` ("the low byte completes a good
        # length ``h * 256 + low`` for this command"), then with the high byte its compare
        # with each ``h``. No adder, no digit sum after a register (the mod-784 check was
        # a constant multiplier's adders, 8 LUT levels from the low byte's register to
        # ``len_ok``: the iCEBreaker's critical path at seed 1 once the SYNC compares were
        # registered). ``known`` is registered with the seq byte too.
        n_high = (self.max_payload >> 8) + 1
        by_table = n_high <= 16
        # The command decoded once, with the seq byte, into one flag per command: the
        # payload's per-command checks then start from a flip-flop (the 8-bit compares were
        # in front of the LOAD_BEGIN check's enables, seed 2 once the plan was registered).
        cmds = list(Command)
        cmd_is = [Signal(name=f"cmd_is_{c.name.lower()}") for c in cmds]
        is_cmd = dict(zip(cmds, cmd_is))
        if by_table:
            known_q = Signal()
            low_ok = [Signal(name=f"len_low_ok{h}") for h in range(n_high)]
            low_zero = Signal()

            def low_in(values):
                values = sorted(values)
                if not values:
                    return Const(0, 1)
                if len(values) == 256:
                    return Const(1, 1)
                return Cat(*[byte == v for v in values]).any()

            low_terms = []
            for h in range(n_high):
                terms = []
                for c, is_c in zip(cmds, cmd_is):
                    good = [lo for lo in range(256) if protocol.length_ok(
                        c.value, h * 256 + lo, max_payload=self.max_payload,
                        image_bytes=self.image_bytes) is None]
                    if good:
                        terms.append(is_c & low_in(good))
                low_terms.append(Cat(*terms).any() if terms else Const(0, 1))
            known = known_q

        # Expected LOAD_BEGIN payload: this design's id and word count.
        begin = protocol.layout_bytes(protocol.LOAD_BEGIN_LAYOUT,
                                      {"design_id": self.design_id,
                                       "words": self.param_count})
        begin_rom = Array(Const(b, 8) for b in begin)
        # The byte expected next, a register looked up when the byte before arrives (from
        # ``pidx + 1``): the received byte meets a flip-flop, not the ROM's mux on ``pidx``.
        expect = Signal(8)

        # Parameter address check of the last completed word (one cycle after its last
        # byte; a frame has >= 4 CRC bytes after it, so the result is in before the end).
        addr_ok = Signal()
        terms = []
        for (layer, kind), (rows, lanes) in lims:
            terms.append(~f_hi[0] & (f_lo[0] == layer) & ~f_hi[1] & (f_lo[1] == kind)
                         & _lt_narrow(f_lo[2], f_hi[2], rows) & _lt_narrow(f_lo[3], f_hi[3], lanes))
        m.d.comb += addr_ok.eq(Cat(*terms).any() if terms else 0)
        # The verdict is registered every cycle: the address bytes (0-5) are in by the
        # word's last byte (9), so the verdict taken then is the word's when ``word_chk``
        # reads it the cycle after (the next word's first byte changes the fields at that
        # cycle's edge at the earliest). The compares were in series with the ``noted``
        # update (addr_hi -> addr_ok -> word_chk -> noted, the iCEBreaker's critical path
        # at seed 3).
        addr_ok_q = Signal()
        m.d.sync += addr_ok_q.eq(addr_ok)
        m.d.sync += word_chk.eq(0)
        with m.If(word_chk & ~addr_ok_q & (noted == 0)):
            m.d.sync += noted.eq(Reason.PARAM_ADDRESS.value)

        # The parser's one event per cycle (drop with reason, or commit).
        ev_drop = Signal()
        ev_reason = Signal(_REASON_BITS)
        ev_nak = Signal()          # the header was not trusted: command NAK
        # The decision is registered: its consequences (NAK, counters, last_drop) follow one
        # cycle later, so the header checks and the drop decision end in a flip-flop. The
        # header fields it reads are still this frame's then: after a drop or a frame's end
        # the next header is cleared only by a SYNC pair, two bytes later at the earliest.
        r_drop = Signal()
        r_reason = Signal(_REASON_BITS)
        r_nak = Signal()
        m.d.sync += [r_drop.eq(ev_drop), r_reason.eq(ev_reason), r_nak.eq(ev_nak)]
        m.d.comb += [drop.eq(r_drop), drop_reason.eq(r_reason)]

        m.d.comb += crcs.data.eq(byte)
        in_frame = (state == HEADER) | (state == PAYLOAD) | (state == CRC)
        # ``wd_at``: ``wd == watchdog_cycles``, as a register (decided from ``wd``'s value
        # the cycle before: the wide compare is off the parser's state enable).
        wd_at = Signal()
        with m.If(rx_valid | ~in_frame):
            m.d.sync += [wd.eq(0), wd_at.eq(0)]
        with m.Else():
            m.d.sync += [wd.eq(wd + 1), wd_at.eq(wd == self.watchdog_cycles - 1)]

        with m.If(rx_valid):
            with m.Switch(state):
                with m.Case(HUNT0):
                    with m.If(is_sync0):
                        m.d.sync += state.eq(HUNT1)
                with m.Case(HUNT1):
                    with m.If(is_sync1):
                        m.d.comb += crcs.start.eq(1)
                        m.d.sync += [state.eq(HEADER), hidx.eq(0), hdr.eq(0)]
                    with m.Elif(~is_sync0):
                        m.d.sync += state.eq(HUNT0)
                with m.Case(HEADER):
                    m.d.sync += hidx.eq(hidx + 1)
                    with m.If(hidx < 4):
                        m.d.comb += [crcs.valid_h.eq(1), crcs.valid_f.eq(1)]
                        with m.Switch(hidx[:2]):
                            with m.Case(0):
                                m.d.sync += hdr.command.eq(byte)
                            with m.Case(1):
                                m.d.sync += hdr.seq.eq(byte)
                            with m.Case(2):
                                m.d.sync += hdr.length[:8].eq(byte)
                            with m.Case(3):
                                # Kept as ``length - 1`` (the payload's last index), so the
                                # payload's end is an equality with ``pidx``, not a
                                # subtraction then a compare on the parser's state enable.
                                m.d.sync += hdr.length.eq(len_in - 1)
                        with m.If(hidx[:2] == 1):
                            m.d.sync += [i.eq(cmd == c.value) for c, i in zip(cmds, cmd_is)]
                        if by_table:
                            with m.Switch(hidx[:2]):
                                with m.Case(1):
                                    m.d.sync += known_q.eq(
                                        Cat(*[cmd == c.value for c in cmds]).any())
                                with m.Case(2):
                                    m.d.sync += [q.eq(t) for q, t in zip(low_ok, low_terms)]
                                    m.d.sync += low_zero.eq(byte == 0)
                                with m.Case(3):
                                    m.d.sync += [
                                        len_ok.eq(Cat(*[(byte == h) & low_ok[h]
                                                        for h in range(n_high)]).any()),
                                        len_zero.eq((byte == 0) & low_zero)]
                        else:
                            m.d.sync += [len_ok.eq(~len_hi & len_good
                                                   & (len_lo <= self.max_payload)),
                                         len_zero.eq(~len_hi & (len_lo == 0))]
                    with m.Else():
                        # crcs.hcrc holds the CRC-8 of the 4 header bytes.
                        m.d.sync += [noted.eq(0), match.eq(1), arg.eq(0), arg_big.eq(0),
                                     expect.eq(begin[0]),
                                     word_byte.eq(1), lp_word.eq(0),
                                     img_byte.eq(0), count.eq(0),
                                     pidx.eq(0), cidx.eq(0), no_slot.eq(slot_used == S)]
                        with m.If(byte != crcs.hcrc):
                            m.d.comb += [ev_drop.eq(1), ev_nak.eq(1),
                                         ev_reason.eq(Reason.HEADER_CRC.value)]
                            m.d.sync += state.eq(HUNT0)
                        with m.Elif(~known):
                            m.d.comb += [ev_drop.eq(1), ev_reason.eq(Reason.UNKNOWN_COMMAND.value)]
                            m.d.sync += state.eq(HUNT0)
                        with m.Elif(~len_ok):
                            m.d.comb += [ev_drop.eq(1), ev_reason.eq(Reason.BAD_LENGTH.value)]
                            m.d.sync += state.eq(HUNT0)
                        with m.Else():
                            m.d.sync += [state.eq(Mux(len_zero, CRC, PAYLOAD)),
                                         in_pay.eq(~len_zero)]
                with m.Case(CRC):
                    m.d.comb += crcs.valid_f.eq(1)
                    m.d.sync += cidx.eq(cidx + 1)
                    with m.If(cidx == 3):
                        m.d.sync += state.eq(HUNT0)
        # PAYLOAD (``in_pay``; see above): outside the state's switch.
        with m.If(rx_valid & in_pay):
            m.d.comb += crcs.valid_f.eq(1)
            # A frame without a free slot is read but never stored: the slot at the
            # write pointer then still holds the oldest frame not yet executed.
            m.d.comb += [slot_w.en.eq(~no_slot),
                         slot_w.addr.eq(slot_addr(slot_wr, pidx)),
                         slot_w.data.eq(byte)]
            m.d.sync += pidx.eq(pidx + 1)
            with m.If(pidx == length):      # (``length`` - 1, see the header)
                m.d.sync += [state.eq(CRC), in_pay.eq(0)]
            # (One flag per command, registered with the header: see ``cmd_is``.)
            with m.If(is_cmd[Command.INFER]):
                if self.input_bits < 8:
                    with m.If((byte >> self.input_bits != 0) & (noted == 0)):
                        m.d.sync += noted.eq(Reason.PIXEL_RANGE.value)
                with m.If(img_byte == self.image_bytes - 1):
                    m.d.sync += [img_byte.eq(0), count.eq(count + 1)]
                with m.Else():
                    m.d.sync += img_byte.eq(img_byte + 1)
            with m.If(is_cmd[Command.READ_RESULT]):
                m.d.sync += arg[:8].eq(byte)
            with m.If(is_cmd[Command.LOAD_BEGIN]):
                m.d.sync += expect.eq(begin_rom[(pidx + 1)[:4]])
                with m.If(byte != expect):
                    m.d.sync += match.eq(0)
            with m.If(is_cmd[Command.LOAD_PARAMS]):
                # (pidx == 3 when its low bits are 3 and lp_word is still clear)
                m.d.sync += lp_word.eq(lp_word | (pidx[:2] == 3))
                with m.If(~lp_word):
                    # The offset, little-endian: the bits ``arg`` holds, and
                    # whether any bit above them is set.
                    ab = len(arg)
                    with m.Switch(pidx[:2]):
                        for k in range(4):
                            with m.Case(k):
                                if 8 * k < ab:
                                    hi = min(8, ab - 8 * k)
                                    m.d.sync += arg[8 * k:8 * k + hi].eq(byte[:hi])
                                else:
                                    hi = 0
                                if hi < 8:
                                    with m.If(byte[hi:] != 0):
                                        m.d.sync += arg_big.eq(1)
                with m.Else():
                    # Little-endian word: bytes 0-5 are layer, kind, row, lane.
                    for j, (first, nb, w) in enumerate(fields):
                        for b in range(nb):
                            with m.If(word_byte[first + b]):
                                lo = min(8, max(0, w - 8 * b))
                                if lo:
                                    m.d.sync += f_lo[j][8 * b:8 * b + lo].eq(
                                        byte[:lo])
                                above = byte[lo:] != 0 if lo < 8 else 0
                                # (The field's first byte restarts the flag.)
                                m.d.sync += f_hi[j].eq(
                                    above if b == 0 else f_hi[j] | above)
                    m.d.sync += word_byte.eq(word_byte.rotate_left(1))
                    with m.If(word_byte[-1]):
                        m.d.sync += [word_chk.eq(1), count.eq(count + 1)]
        # Watchdog: a gap of more than watchdog_cycles idle cycles inside a frame (it fires
        # in the (watchdog_cycles + 1)-th consecutive cycle without a byte).
        with m.If(~rx_valid & in_frame & wd_at):
            m.d.comb += [ev_drop.eq(1), ev_reason.eq(Reason.TIMEOUT.value),
                         ev_nak.eq(state == HEADER)]
            m.d.sync += [state.eq(HUNT0), in_pay.eq(0)]

        # (Bit-serial CRCs: once the frame CRC has taken the last byte, 8 cycles later.)
        fin_wait = Signal()
        # The frame CRC's verdict (its 32-bit residue compare) and the other end-of-frame
        # reasons as registers: the compare and the reasons' priority were in series in
        # front of the drop reason's and the commit's registers (fin -> match -> noted /
        # no_slot -> store, parser_reason: the iCEBreaker's critical path at seed 1). With
        # bit-serial CRCs the decision waits one more cycle after the CRCs are done, for
        # the registered compare (the next frame's CRC restarts at its second SYNC byte,
        # 16 or more cycles later: bytes are at least 8 cycles apart then); byte-parallel
        # CRCs keep the compare as it is. ``noted`` and ``no_slot`` are final a cycle after
        # the payload's last byte, 4 CRC bytes before ``fin``.
        end_other = Signal()       # (noted != 0) | no_slot
        end_reason = Signal(_REASON_BITS)
        m.d.sync += [end_other.eq((noted != 0) | no_slot),
                     end_reason.eq(Mux(noted != 0, noted, Reason.BUSY.value))]
        if self.serial_crc:
            crc_settled = Signal()     # the CRCs were done last cycle too
            crc_match = Signal()
            m.d.sync += [crc_settled.eq(~crcs.busy), crc_match.eq(crcs.match_detected)]
            m.d.comb += fin.eq(fin_wait & ~crcs.busy & crc_settled)
        else:
            crc_match = crcs.match_detected
            m.d.comb += fin.eq(fin_wait & ~crcs.busy)
        with m.If(fin):
            m.d.sync += fin_wait.eq(0)
        with m.If(rx_valid & (state == CRC) & (cidx == 3)):
            m.d.sync += fin_wait.eq(1)
        # End of frame (the cycle after the last CRC byte, when the CRC register holds the
        # residue): the next frame's bytes can only be hunting now, so the header registers
        # are still this frame's.
        with m.If(fin):
            with m.If(~crc_match):
                m.d.comb += [ev_drop.eq(1), ev_reason.eq(Reason.PAYLOAD_CRC.value)]
            with m.Elif(end_other):
                m.d.comb += [ev_drop.eq(1), ev_reason.eq(end_reason)]
        # The commit is registered too (the CRC residue compare and the verdict end in a
        # flip-flop): the slot-table entry is written a cycle after ``fin``, while the
        # header registers still hold this frame (a new header clears them at its second
        # SYNC byte, the earliest in that same cycle's edge).
        m.d.sync += store.eq(0)
        with m.If(fin & crc_match & ~end_other):
            m.d.sync += store.eq(1)
        with m.If(store):
            m.d.comb += [commit.eq(1), meta_w.en.eq(1), meta_w.addr.eq(slot_wr)]
            meta = meta_w.data
            # An offset past the design's words is stored as ``param_words + 1``: every
            # rule of the executor treats all such offsets alike (PARAM_ORDER, or
            # NOT_LOADING when no load is open; never a duplicate).
            over = Const(self.param_count + 1, len(arg))
            big = (cmd == Command.LOAD_PARAMS.value) & (arg_big | (arg > over))
            m.d.comb += [meta.command.eq(cmd), meta.seq.eq(hdr.seq), meta.count.eq(count), meta.arg.eq(Mux(big, over, arg)),
                         meta.match.eq(match)]

        # NAK holding register: one reply waiting for the queue; a drop that finds it full
        # (and not leaving) loses its reply.
        with m.If(nak_grant):
            m.d.sync += nak_valid.eq(0)
        with m.If(r_drop):
            with m.If(nak_valid & ~nak_grant):
                m.d.comb += lost.eq(1)
            with m.Else():
                m.d.sync += [nak_valid.eq(1),
                             nak_desc.command.eq(Mux(r_nak, protocol.NAK, cmd | protocol.REPLY)),
                             nak_desc.seq.eq(hdr.seq), nak_desc.reason.eq(r_reason),
                             nak_desc.source.eq(Source.NONE), nak_desc.arg.eq(0)]

    # ------------------------------------------------------------------------------------------

    def _executor(self, m, meta_r, slot_r, slot_addr, slot_rd, slot_used, free, req, desc,
                  grant, drop, drop_reason, inc_ok, params_ready, loading, words_loaded,
                  do_reset, in_flight, push_flight, inflight, res_seq, res_cnt, res_ok, res_wr,
                  status_pending, slot_rdata):
        S = self.slots
        # The head slot's table entry, registered as it is read: the slot-table read mux
        # ends in a flip-flop, and every decision below starts from one (a frame executes
        # in its fourth cycle at the head, see ``go``).
        meta = Signal(self.meta_layout)
        m.d.comb += meta_r.addr.eq(slot_rd)
        m.d.sync += meta.eq(meta_r.data)

        # Slot byte reader: one byte per cycle from the slot RAM, with backpressure.
        rd_addr = Signal(_bits(S * self.max_payload - 1))
        rd_left = Signal(self.length_bits)
        rd_valid = Signal()
        rd_ready = Signal()
        advance = ~rd_valid | rd_ready
        m.d.comb += [slot_r.addr.eq(rd_addr), slot_r.en.eq(advance)]
        start_read = Signal()
        start_addr = Signal.like(rd_addr)
        start_len = Signal.like(rd_left)
        # ``rd_zero``: ``rd_left == 0`` as a register (the compare is off the executor's
        # decisions). A read never starts empty: INFER and LOAD_PARAMS payloads are longer
        # than their 0 and 4 skipped bytes (the parser's length rules).
        rd_zero = Signal(init=1)
        with m.If(start_read):
            m.d.sync += [rd_addr.eq(start_addr), rd_left.eq(start_len), rd_valid.eq(0),
                         rd_zero.eq(0)]
        with m.Elif(advance):
            m.d.sync += rd_valid.eq(~rd_zero)
            with m.If(~rd_zero):
                m.d.sync += [rd_addr.eq(rd_addr + 1), rd_left.eq(rd_left - 1),
                             rd_zero.eq(rd_left == 1)]
        rd_byte = slot_rdata

        # Parameter word assembly (LOAD_PARAMS): 10 bytes LSB first -> one beat. The shift
        # register is the bus's payload register: in the cycle ``valid`` is high it holds
        # the whole word (the next byte shifts in one cycle later, when ``valid`` is low).
        w_sr = Signal(protocol.PARAM_WORD_BYTES * 8)
        w_n = Signal(range(protocol.PARAM_WORD_BYTES))
        feeding_params = Signal()
        m.d.comb += self.params.payload.as_value().eq(w_sr)
        m.d.sync += self.params.valid.eq(0)
        # With ``param_handshake`` the word stays in ``w_sr`` (no byte shifts in) while the
        # crossing holds it: ``params_busy`` is high from the beat until acknowledged.
        # (no term at all without it: the one-clock netlist stays as it was)
        shift_ok = feeding_params & rd_valid
        if self.param_handshake:
            shift_ok = shift_ok & ~self.params_busy
        with m.If(shift_ok):
            m.d.comb += rd_ready.eq(1)
            m.d.sync += w_sr.eq(Cat(w_sr[8:], rd_byte))
            with m.If(w_n == protocol.PARAM_WORD_BYTES - 1):
                m.d.sync += [w_n.eq(0), self.params.valid.eq(1)]
            with m.Else():
                m.d.sync += w_n.eq(w_n + 1)

        # Pixel packing (INFER): C bytes a pixel, beats_per_pixel beats of P lanes, padding
        # lanes zero, last on an image's final beat.
        P, C = self.lanes, self.channels
        img = self.images
        acc = Signal(data.ArrayLayout(self.input_bits, P))
        lane = Signal(range(max(2, P)))
        ch = Signal(range(max(2, C)))
        pix = Signal(range(max(2, self.pixels)))
        feeding_images = Signal()
        with m.If(img.valid & img.ready):
            m.d.sync += img.valid.eq(0)
        with m.If(feeding_images & rd_valid & (~img.valid | img.ready)):
            m.d.comb += rd_ready.eq(1)
            complete = (lane == P - 1) | (ch == C - 1)
            with m.If(complete):
                m.d.sync += [img.valid.eq(1),
                             img.payload.last.eq((ch == C - 1) & (pix == self.pixels - 1)),
                             acc.eq(0), lane.eq(0)]
                for k in range(P):
                    m.d.sync += img.payload.data[k].eq(Mux(lane == k, rd_byte, acc[k]))
            with m.Else():
                m.d.sync += [acc[lane].eq(rd_byte), lane.eq(lane + 1)]
            with m.If(ch == C - 1):
                m.d.sync += [ch.eq(0), pix.eq(Mux(pix == self.pixels - 1, 0, pix + 1))]
            with m.Else():
                m.d.sync += ch.eq(ch + 1)
        read_done = rd_zero & ~rd_valid
        load_done = read_done & ~self.params_busy if self.param_handshake else read_done

        IDLE, REPLY, WAIT_IDLE, LOADING, PUSH, FEED, FIND = range(7)
        state = Signal(range(7))
        r = Signal(self.desc_layout)  # the reply being offered
        r_action = Signal(3)          # what to do when it is accepted
        ACT_NONE, ACT_RESET, ACT_BEGIN = range(3)
        # The reply's command and seq are the frame's: its slot (and slot-table entry) is
        # held until the reply is queued, so they need no register of their own.
        m.d.comb += [desc.eq(r), desc.command.eq(meta.command | protocol.REPLY),
                     desc.seq.eq(meta.seq)]

        def reply(reason, source=Source.NONE, arg=0, action=ACT_NONE):
            # (``req``, the request to the reply queue, is a flip-flop set with REPLY.)
            return [state.eq(REPLY), req.eq(1), r.reason.eq(reason), r.source.eq(source),
                    r.arg.eq(arg), r_action.eq(action)]

        def words_arg(words, ready):
            return Cat(words[:self.words_bits], ready)

        # LOAD_PARAMS' order checks (an adder and three compares after the registered
        # table entry) are registered too, in the frame's third cycle at the head
        # (``settled``: it was at the head, with the executor idle, the two cycles before),
        # when ``meta`` and these registers hold its values (the head slot, its table entry
        # and the load state only change outside IDLE, or when the slots were empty); the
        # plan made from them is registered in that cycle and taken in the fourth (``go``).
        end = Signal(max(len(meta.arg), self.count_bits) + 1)
        m.d.comb += end.eq(meta.arg + meta.count)
        total = self.param_count
        dup = Signal()
        in_order = Signal()
        can_run = Signal()
        settled1 = Signal()
        settled = Signal()
        m.d.comb += can_run.eq((state == IDLE) & (slot_used != 0) & (status_pending == 0))
        m.d.sync += [dup.eq(end <= words_loaded),
                     in_order.eq((meta.arg == words_loaded) & (end <= total)),
                     settled1.eq(can_run), settled.eq(can_run & settled1)]
        # READ_RESULT's lookup, registered (see FIND).
        hit = [Signal(name=f"hit{e}") for e in range(S)]
        flight_idle = Signal()
        m.d.sync += [hit[e].eq(res_ok[e] & (res_seq[e] == meta.arg[:8])) for e in range(S)]
        m.d.sync += flight_idle.eq(in_flight == 0)
        # The decision is a register too (``plan_*``): made every cycle from the registered
        # table entry, the order checks and the load state, all still while the frame
        # settles, and taken in the frame's fourth cycle at the head (``go``, one pulse per
        # frame: the head entry and the load state only change outside IDLE). The command
        # decode and the LOAD_PARAMS conditions were in front of the reply registers' and
        # the state's enables (the iCEBreaker's critical path at seed 1 once the parser's
        # paths were registered); now one flip-flop enables them and the plan's outputs are
        # their data.
        plan_state = Signal.like(state)
        plan_req = Signal()
        plan_r = Signal(self.desc_layout)
        plan_action = Signal.like(r_action)

        def plan(reason, source=Source.NONE, arg=0, action=ACT_NONE):
            return [plan_state.eq(REPLY), plan_req.eq(1), plan_r.reason.eq(reason),
                    plan_r.source.eq(source), plan_r.arg.eq(arg), plan_action.eq(action)]

        def plan_to(next_state):
            return [plan_state.eq(next_state), plan_req.eq(0)]

        with m.Switch(meta.command):
            with m.Case(Command.IDENTIFY.value):
                m.d.sync += plan(Reason.OK.value, Source.ROM)
            with m.Case(Command.STATUS.value):
                m.d.sync += plan(Reason.OK.value, Source.STATUS)
            with m.Case(Command.RESET.value):
                m.d.sync += plan(Reason.OK.value, action=ACT_RESET)
            with m.Case(Command.LOAD_BEGIN.value):
                with m.If(meta.match):
                    m.d.sync += plan(Reason.OK.value, Source.WORDS, 0, ACT_BEGIN)
                with m.Else():
                    m.d.sync += plan(Reason.DESIGN_MISMATCH.value)
            with m.Case(Command.LOAD_PARAMS.value):
                with m.If((loading | params_ready) & dup):
                    # Already applied (a retransmission): acknowledge only.
                    m.d.sync += plan(Reason.OK.value, Source.WORDS,
                                     words_arg(words_loaded, params_ready))
                with m.Elif(~loading):
                    m.d.sync += plan(Reason.NOT_LOADING.value)
                with m.Elif(in_order):
                    m.d.sync += plan_to(WAIT_IDLE)
                with m.Else():
                    m.d.sync += plan(Reason.PARAM_ORDER.value)
            with m.Case(Command.INFER.value):
                with m.If(params_ready):
                    m.d.sync += plan_to(PUSH)
                with m.Else():
                    m.d.sync += plan(Reason.PARAMS_INCOMPLETE.value)
            with m.Case(Command.READ_RESULT.value):
                m.d.sync += plan_to(FIND)
            with m.Default():
                # Unreachable: the parser commits known commands only.
                m.d.sync += plan(Reason.UNKNOWN_COMMAND.value)
        # ``go``: the frame has been at the head, the executor idle, the three cycles before
        # (``can_run`` then holds now too: nothing but the executor ends it). After a STATUS,
        # nothing executes until its reply has started (and taken its snapshot): STATUS
        # reports the state at its place in the command order.
        go = Signal()
        m.d.sync += go.eq(can_run & settled & ~go)
        with m.If(go):
            m.d.sync += [state.eq(plan_state), req.eq(plan_req), r.reason.eq(plan_r.reason),
                         r.source.eq(plan_r.source), r.arg.eq(plan_r.arg),
                         r_action.eq(plan_action)]
        with m.Switch(state):
            with m.Case(REPLY):
                with m.If(grant):
                    m.d.comb += free.eq(1)
                    m.d.sync += [state.eq(IDLE), req.eq(0)]
                    with m.If(r.reason == Reason.OK.value):
                        m.d.comb += inc_ok.eq(1)
                    with m.Else():
                        m.d.comb += [drop.eq(1), drop_reason.eq(r.reason)]
                    with m.Switch(r_action):
                        with m.Case(ACT_RESET):
                            m.d.comb += do_reset.eq(1)
                            m.d.sync += [params_ready.eq(0), loading.eq(0), words_loaded.eq(0)]
                        with m.Case(ACT_BEGIN):
                            m.d.sync += [params_ready.eq(0), loading.eq(1), words_loaded.eq(0)]
            with m.Case(WAIT_IDLE):
                # Parameter memories are written only while no image is in the accelerator.
                with m.If(in_flight == 0):
                    m.d.comb += [start_read.eq(1),
                                 start_addr.eq(slot_addr(slot_rd, 4)),
                                 start_len.eq(const_mul(meta.count,
                                                        protocol.PARAM_WORD_BYTES))]
                    m.d.sync += [state.eq(LOADING), w_n.eq(0)]
            with m.Case(LOADING):
                m.d.comb += feeding_params.eq(1)
                # (the last word delivered too, with a handshake: the reply and the next
                # frame, an INFER's images among them, follow the whole load)
                with m.If(load_done):
                    new = Signal(self.words_bits + 1)
                    done = Signal()
                    m.d.comb += [new.eq(words_loaded + meta.count), done.eq(new == total)]
                    m.d.sync += [words_loaded.eq(new), params_ready.eq(done),
                                 loading.eq(~done)]
                    m.d.sync += reply(Reason.OK.value, Source.WORDS, words_arg(new, done))
            with m.Case(PUSH):
                m.d.comb += [inflight.w_stream.valid.eq(1),
                             inflight.w_stream.payload.eq(Cat(meta.seq, meta.count))]
                with m.If(inflight.w_stream.ready):
                    m.d.comb += [push_flight.eq(1), inc_ok.eq(1),
                                 start_read.eq(1), start_addr.eq(slot_addr(slot_rd, 0)),
                                 start_len.eq(const_mul(meta.count, self.image_bytes))]
                    m.d.sync += [state.eq(FEED), lane.eq(0), ch.eq(0), pix.eq(0), acc.eq(0)]
            with m.Case(FEED):
                m.d.comb += feeding_images.eq(1)
                with m.If(read_done & (~img.valid | img.ready)):
                    m.d.comb += free.eq(1)
                    m.d.sync += state.eq(IDLE)
            with m.Case(FIND):
                # Wait for every image in flight, then look the seq up (newest wins). The
                # per-entry matches and "nothing in flight" are registers (a cycle behind):
                # nothing can enter flight while the executor is here, so once
                # ``flight_idle`` is set the result table has been still for a cycle and
                # ``hit`` holds its final matches.
                with m.If(flight_idle):
                    found = Signal()
                    entry = Signal(range(max(2, S)))
                    for k in range(S):          # oldest (res_wr) .. newest
                        for w0 in range(S):
                            e = (w0 + k) % S
                            with m.If((res_wr == w0) & hit[e]):
                                m.d.comb += [found.eq(1), entry.eq(e)]
                    with m.If(found):
                        m.d.sync += reply(Reason.OK.value, Source.RESULT,
                                          Cat(entry[:self.slot_bits], Array(res_cnt)[entry]))
                    with m.Else():
                        m.d.sync += reply(Reason.NOT_FOUND.value)

    # ------------------------------------------------------------------------------------------

    def _status(self, m, live, snap_w, regs, incs, do_reset, snap_req, snap_done):
        # (``snap_w``: write enable, body byte and data of a snapshot byte.)
        """STATUS counters in a RAM (``live``), read out through a snapshot RAM.

        A register per counter would be a flip-flop and an adder cell per bit (256 of each,
        plus a 304-bit snapshot register the encoder shifts out). Instead a *sweep* visits
        the STATUS body's bytes in order, one per cycle, round and round (``P`` =
        :data:`_STATUS_BYTES` cycles a turn): at a counter's first byte it takes the small
        *delta* register that counts the counter's increments since its last visit, and
        adds it into the counter's bytes in ``live`` byte-serially (read one cycle, write
        the sum and keep the carry the next). A counter's value is always ``live + delta``
        (``0 + delta`` after RESET: a ``clear`` flag per counter, set by RESET and by the
        domain's reset, makes the next visit ignore the RAM).

        A snapshot is one whole turn (it starts when a turn begins) that writes ``live +
        delta`` (and the register fields: flags, ``last_drop``, ``words_loaded``) into the
        snapshot rows of the result RAM, which the encoder reads as it reads logits, leaving ``live`` and the deltas alone; a snapshot
        turn is always followed by an updating one, so a delta counts at most ``2 P + 1``
        cycles of increments (8 bits hold that, two increments a cycle included). The
        executor waits for ``snap_done`` (the turn's last write): the executor's state and
        counters are those where the STATUS executed; what runs on its own is read during
        the turn, within ``P`` cycles before the reply's first byte.
        """
        P = _STATUS_BYTES
        layout = protocol.STATUS_LAYOUT
        names = list(incs)
        # (counter index, byte of the counter) of each body byte; None: a register field.
        where = [None] * P
        for i, name in enumerate(names):
            field = layout[name]
            for b in range(field.width // 8):
                where[field.offset // 8 + b] = (i, b)
        delta = []
        clear = []
        for i, name in enumerate(names):
            rate = (1 << len(incs[name])) - 1
            delta.append(Signal(_bits(rate * (2 * P + 1)), name=f"delta_{name}"))
            clear.append(Signal(init=1, name=f"clear_{name}"))
        live_r = live.read_port()
        live_w = live.write_port()

        slot = Signal(range(P))      # body byte read from ``live`` this cycle
        wslot = Signal(range(P))     # body byte whose ``live`` data arrives this cycle
        snapping = Signal()          # the turn being read is a snapshot
        wsnap = Signal()
        m.d.comb += [live_r.addr.eq(slot), live_r.en.eq(1)]
        m.d.sync += [slot.eq(Mux(slot == P - 1, 0, slot + 1)), wslot.eq(slot),
                     wsnap.eq(snapping)]
        with m.If(slot == P - 1):
            m.d.sync += snapping.eq(snap_req & ~snapping)

        for i, name in enumerate(names):
            m.d.sync += delta[i].eq(delta[i] + incs[name])
        # What the byte being read needs when it arrives, decoded now from ``slot`` (a
        # visit's delta is taken, and reset, in the cycle its first byte is read).
        addend = Signal(8)            # the counter's delta at its first byte, else 0
        first = Signal()
        zero = Signal()               # the counter was cleared: ignore the RAM
        is_reg = Signal()
        reg_byte = Signal(8)
        regv = regs.as_value()
        m.d.sync += [addend.eq(0), first.eq(0), is_reg.eq(0)]
        with m.Switch(slot):
            for s, w in enumerate(where):
                with m.Case(s):
                    if w is None:
                        m.d.sync += [is_reg.eq(1), reg_byte.eq(regv[8 * s:8 * s + 8])]
                    elif w[1] == 0:
                        i = w[0]
                        m.d.sync += [addend.eq(delta[i]), first.eq(1), zero.eq(clear[i])]
                        with m.If(~snapping):
                            m.d.sync += [delta[i].eq(incs[names[i]]), clear[i].eq(0)]
        # The byte read is registered before the sum (and what goes with it a cycle more):
        # ``live`` is flip-flops and a read mux on the UP5K, and that mux, the sum's carry
        # chain and the write data's mux were in series (live_r addr -> is_reg -> zero ->
        # addend, the iCEBreaker's critical path at seed 2). The byte is read again P
        # cycles later, after its write (3 cycles after its read).
        live_q = Signal(8)
        m.d.sync += live_q.eq(collision_read(m, live_r, [live_w]))
        addend_q = Signal(8)
        first_q = Signal()
        zero_q = Signal()
        is_reg_q = Signal()
        reg_byte_q = Signal(8)
        wslot_q = Signal(range(P))
        wsnap_q = Signal()
        m.d.sync += [addend_q.eq(addend), first_q.eq(first), zero_q.eq(zero),
                     is_reg_q.eq(is_reg), reg_byte_q.eq(reg_byte), wslot_q.eq(wslot),
                     wsnap_q.eq(wsnap)]
        carry = Signal()
        total = Signal(9)
        m.d.comb += total.eq(Mux(zero_q, 0, live_q) + addend_q + (carry & ~first_q))
        m.d.sync += carry.eq(total[8])
        # The writes are registered (a cycle later; the byte is read again P cycles later).
        w_addr = Signal(range(P))
        w_data = Signal(8)
        w_live = Signal()
        w_snap = Signal()
        m.d.sync += [w_addr.eq(wslot_q), w_data.eq(Mux(is_reg_q, reg_byte_q, total[:8])),
                     w_live.eq(~wsnap_q & ~is_reg_q), w_snap.eq(wsnap_q)]
        snap_we, snap_byte, snap_data = snap_w
        m.d.comb += [live_w.addr.eq(w_addr), live_w.data.eq(w_data), live_w.en.eq(w_live),
                     snap_byte.eq(w_addr), snap_data.eq(w_data), snap_we.eq(w_snap),
                     snap_done.eq(w_snap & (w_addr == P - 1))]
        with m.If(do_reset):
            for i, name in enumerate(names):
                if name != "cycles":        # RESET clears every counter but the clock's
                    m.d.sync += [delta[i].eq(0), clear[i].eq(1)]

    def _encoder(self, m, replyq, rom_r, res_r, res_addr0, snap_req, snap_done,
                 done_result, entry, registered_reads=False, res_banks=None, res_rdata=None):
        tx = self.tx
        m.submodules.tx_crc = crcs = FrameCRCs(serial=self.serial_crc)
        cur = Signal(self.desc_layout)
        IDLE, HEAD, BODY, CRC, SNAP, START = range(6)
        phase = Signal(range(6))
        pos = Signal(3)
        result_bytes = self.classes * protocol.LOGIT_BYTES
        longest = max(1 + len(self.identity), 1 + _STATUS_BYTES, 1 + _LOAD_REPLY_BYTES,
                      1 + self.max_images * result_bytes)
        cur_len = Signal(_bits(longest))        # payload bytes: reason byte + body
        bidx = Signal(_bits(longest))
        body_left = Signal(_bits(longest))
        res_addr = Signal(_bits(self.result_words - 1))
        # res_addr + 1, a cycle behind res_addr (taken every cycle): its step reads a
        # register, not an adder whose carry chain had the step's enable on its carry input
        # (shown -> UART busy -> advance -> lane -> res_addr's carry chain, the iCEBreaker's
        # critical path at seed 1). It is up to date at every step: res_addr is set at START,
        # 8 header advances before the body, and steps every 4th body byte, each a fetch (2
        # cycles or more) apart.
        res_addr_p1 = Signal.like(res_addr)
        m.d.sync += res_addr_p1.eq(res_addr + 1)
        # A LOAD reply's body (words_loaded as a u32, then the ready byte) is selected byte
        # by byte from ``cur.arg`` (most of it constant zeros), not shifted out of a 40-bit
        # register: 40 flip-flops and their load/shift muxes fewer.
        wb = self.words_bits
        words_body = Cat(cur.arg[:wb], Const(0, 32 - wb), cur.arg[wb], Const(0, 7))
        # What tx.payload shows: a register or a CRC register (the CRCs are fed from the
        # bytes as they leave, so their final value is only known in the cycle the CRC bytes
        # are shown). No memory output reaches tx.payload: a body byte from the ROM or the
        # result RAM is read when the byte before it leaves and goes into ``byte`` the
        # cycle after (``fetch``), so the RAM's clock-to-output delay ends at ``byte``
        # instead of running on through this mux into the CRCs and the UART. With
        # ``registered_reads`` the read data is first registered as it is (``fetch_q``,
        # one cycle more), so no logic at all follows the RAM (ECP5). The extra cycles hide
        # behind the bit-serial CRCs' 8 busy cycles; with byte-parallel CRCs a memory byte
        # leaves every other (third) cycle.
        SEL_BYTE, SEL_HCRC, SEL_FCRC = range(3)
        sel = Signal(range(3))
        byte = Signal(8)
        lane = Signal(2)
        fetch = Signal()             # the memory byte goes into ``byte`` in this cycle
        if registered_reads:
            fetch_q = Signal()       # the memories' read data goes into res_q / rom_q
            banks = res_banks or [res_r]
            res_q = [Signal(32, name=f"res_q{b}", reset_less=True) for b in range(len(banks))]
            rom_q = Signal(8, reset_less=True)
            fetching = fetch_q | fetch
            fetch_start = fetch_q
            # The bank of the word read (registered with the read: it stays until ``fetch``).
            bank_rd = Signal(range(max(len(banks), 2)))
            res_data = Array(res_q)[bank_rd] if len(banks) > 1 else res_q[0]
            rom_data = rom_q
            with m.If(fetch_q):
                m.d.sync += [fetch_q.eq(0), fetch.eq(1), rom_q.eq(rom_r.data)]
                m.d.sync += [q.eq(d) for q, d in zip(res_q, res_rdata)]
        else:
            fetching = fetch_start = fetch
            res_data, rom_data = res_rdata[0], rom_r.data
        crck = Signal(2)
        crcn = Signal(2)
        cov_h = Signal()
        cov_f = Signal()
        m.d.comb += entry.eq(cur.arg)
        with m.Switch(sel):
            with m.Case(SEL_BYTE):
                m.d.comb += tx.payload.eq(byte)
            with m.Case(SEL_HCRC):
                m.d.comb += tx.payload.eq(crcs.hcrc)
            with m.Case(SEL_FCRC):
                m.d.comb += tx.payload.eq(crcs.fcrc.word_select(crck, 8))
        # ``shown``: a byte is on tx.payload. It is offered once the CRCs have taken the
        # bytes before it (bit-serial CRCs: 8 cycles a byte, less than a UART byte).
        shown = Signal()
        m.d.comb += tx.valid.eq(shown & ~crcs.busy)
        sent = tx.valid & tx.ready
        m.d.comb += [crcs.data.eq(tx.payload), crcs.valid_h.eq(sent & cov_h),
                     crcs.valid_f.eq(sent & cov_f)]

        # (Not while fetching: the memories hold their read data for ``byte``.)
        advance = (~shown | sent) & ~fetching
        m.d.comb += [rom_r.en.eq(advance), rom_r.addr.eq(bidx),
                     res_r.en.eq(advance), res_r.addr.eq(res_addr)]
        if registered_reads and len(res_banks or ()) > 1:
            with m.If(advance):
                m.d.sync += bank_rd.eq(res_addr[_RESULT_BANK_BITS:])

        def show(value, s=SEL_BYTE, h=0, f=0):
            return [shown.eq(1), byte.eq(value), sel.eq(s), cov_h.eq(h), cov_f.eq(f)]

        # A reply is taken from the queue once the last byte of the one before has left
        # (``shown`` low): nothing of the line's handshake is on the path to the header and
        # length registers loaded here.
        with m.If((phase == IDLE) & ~shown):
            with m.If(replyq.r_stream.valid):
                m.d.comb += [replyq.r_stream.ready.eq(1), crcs.start.eq(1)]
                m.d.sync += [cur.eq(replyq.r_stream.payload), phase.eq(START)]
        # The reply's lengths and addresses are derived from ``cur`` a cycle after it is
        # taken (START): the queue's read data (block RAM on iCE40) ends in ``cur`` instead of
        # running on through the length multiplier and the address mux.
        with m.If(phase == START):
            # The body's length follows from its source (one constant
            # multiplier, shifts and adds, for a result's image count).
            body = Signal.like(body_left)
            with m.Switch(cur.source):
                with m.Case(Source.WORDS):
                    m.d.comb += body.eq(_LOAD_REPLY_BYTES)
                with m.Case(Source.STATUS):
                    m.d.comb += body.eq(_STATUS_BYTES)
                with m.Case(Source.ROM):
                    m.d.comb += body.eq(len(self.identity))
                with m.Case(Source.RESULT):
                    m.d.comb += body.eq(const_mul(
                        cur.arg[self.slot_bits:self.slot_bits + self.count_bits],
                        result_bytes))
            # A result's logits, or the STATUS snapshot, both in the result RAM.
            m.d.sync += [pos.eq(0), bidx.eq(0), body_left.eq(body),
                         res_addr.eq(Mux(cur.source == Source.STATUS, self.status_base,
                                         res_addr0(cur.arg[:self.slot_bits])))]
            # STATUS: its body is first written to the snapshot RAM.
            m.d.sync += phase.eq(Mux(cur.source == Source.STATUS, SNAP, HEAD))
        with m.If(phase == SNAP):
            m.d.comb += snap_req.eq(1)
            with m.If(snap_done):
                m.d.sync += phase.eq(HEAD)
        with m.If(advance):
            m.d.sync += shown.eq(0)
            with m.Switch(phase):
                with m.Case(HEAD):
                    m.d.sync += pos.eq(pos + 1)
                    with m.Switch(pos):
                        with m.Case(0):
                            m.d.sync += show(protocol.SYNC[0])
                            m.d.sync += cur_len.eq(body_left + 1)   # shown at 4 and 5
                        with m.Case(1):
                            m.d.sync += show(protocol.SYNC[1])
                        with m.Case(2):
                            m.d.sync += show(cur.command, h=1, f=1)
                        with m.Case(3):
                            m.d.sync += show(cur.seq, h=1, f=1)
                        with m.Case(4):
                            m.d.sync += show(cur_len[:8], h=1, f=1)
                        with m.Case(5):
                            m.d.sync += show(cur_len[8:16], h=1, f=1)
                        with m.Case(6):
                            m.d.sync += show(0, SEL_HCRC)
                        with m.Case(7):
                            m.d.sync += show(cur.reason, f=1)
                            m.d.sync += [phase.eq(Mux(body_left == 0, CRC, BODY)), crcn.eq(0)]
                with m.Case(BODY):
                    m.d.sync += [bidx.eq(bidx + 1), body_left.eq(body_left - 1)]
                    with m.If(body_left == 1):
                        m.d.sync += [phase.eq(CRC), crcn.eq(0)]
                    with m.Switch(cur.source):
                        with m.Case(Source.ROM):
                            m.d.sync += [fetch_start.eq(1), sel.eq(SEL_BYTE), cov_h.eq(0),
                                         cov_f.eq(1)]
                        with m.Case(Source.RESULT, Source.STATUS):
                            m.d.sync += [fetch_start.eq(1), sel.eq(SEL_BYTE), cov_h.eq(0),
                                         cov_f.eq(1)]
                            m.d.sync += lane.eq(bidx[:2])
                            with m.If(bidx[:2] == 3):
                                m.d.sync += res_addr.eq(res_addr_p1)
                        with m.Default():
                            m.d.sync += show(words_body.word_select(bidx[:3], 8), f=1)
                with m.Case(CRC):
                    m.d.sync += show(0, SEL_FCRC)
                    m.d.sync += [crck.eq(crcn), crcn.eq(crcn + 1)]
                    with m.If(crcn == 3):
                        m.d.sync += phase.eq(IDLE)
                        # Every body byte has been read: the result entry may be reused.
                        m.d.comb += done_result.eq(cur.source == Source.RESULT)
        # The memory byte into ``byte`` (after the advance logic: the last assignment, so
        # it passes only the outermost mux in front of the register).
        with m.If(fetch):
            m.d.sync += [fetch.eq(0), shown.eq(1),
                         byte.eq(Mux(cur.source == Source.ROM, rom_data,
                                     res_data.word_select(lane, 8)))]
