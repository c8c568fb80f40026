"""Simulation top: the accelerator plus HDL-side memories for the fast whole-network path.

Python touching every clock edge caps cocotb near 10k cycles/s, so the fast path keeps Python
at frame boundaries: the testbench writes parameter words and a batch of images straight into
memories of this harness (through VPI, no clock edges), pulses a command, and waits for
``done``; the harness streams everything into the accelerator at full rate, stores the logits
and a cycle stamp per image, and raises ``done``. An LFSR in the harness can still inject
random idle cycles on the image stream and backpressure on the logit stream (``stall_level``),
so even bulk runs exercise valid/ready stalls.

The memories are sized for ``batch_images`` images (the *capacity*); how many images one
``run`` command streams is the run-time register ``n_images`` (1 to the capacity), so one
build serves every image count and batch size up to the capacity.

With ``mode = 0`` the accelerator's own streams are wired to the ``ext_*`` ports instead, for
the protocol-level testbench that drives and monitors them from Python with random stalls.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from ..hw.params import PARAM_LAYOUT, param_bus_signature
from ..hw.stream import beats_per_pixel, pixel_stream

__all__ = ["SimHarness", "beats_per_word"]


def beats_per_word(beat_bits):
    """Input beats packed into one image-memory word (a power of two, words <= 256 bits)."""
    return 1 << max(0, (256 // beat_bits).bit_length() - 1)


class SimHarness(wiring.Component):
    """Accelerator + bulk memories + command/status registers.

    Parameters
    ----------
    accel : hw.top.Accelerator
    batch_images : int
        Capacity: the most images one ``run`` command may stream (sizes the image, logit and
        stamp memories). ``n_images`` chooses the count at run time.
    param_words : int
        Depth of the parameter memory.

    Attributes
    ----------
    mode : In(1)
        0: ``ext_*`` streams drive the accelerator (protocol TB); 1: bulk memories do.
    load_params, run : In(1)
        One-cycle command pulses: stream ``n_params`` parameter words / ``n_images`` images.
    stall_level : In(8)
        Probability x/256 of an idle cycle on the image stream and of ``ready`` low on the
        logit stream in bulk mode (0: no stalls, for cycle measurements).
    stall_seed : In(32)
        LFSR seed, loaded with each command (must be non-zero for stalls to be random).
    hold_logits : In(1)
        Fault injection for the testbench's own tests: hold the logit stream's ``ready`` low
        in bulk mode (a sink that never takes data), so the accelerator stalls for good.
    busy, done : Out(1)
        A command is running / the last command finished.
    cycles : Out(32)
        Cycles since the last command started (frozen when it finishes).
    beats_in : Out(32)
        Input beats the accelerator took during the last ``run`` command.
    images_out : Out(32)
        Images whose logits came out during the last ``run`` command.
    source_valid, source_ready, sink_valid, sink_ready : Out(1)
        Copies of the accelerator's image input and logit output handshakes (either mode),
        for the testbench's stall diagnosis.
    """

    def __init__(self, accel, *, batch_images, param_words):
        self.accel = accel
        model = accel.model
        h, w, c = model.input_shape
        self.lanes = accel.plan.input_lanes
        self.bits = model.input_bits
        self.beats_per_image = h * w * beats_per_pixel(c, self.lanes)
        self.classes = len(model.classes)
        self.batch_images = batch_images
        # Each VPI access from the testbench costs microseconds, so memories are wide: an
        # image word packs `beats_per_word` input beats, a logit word holds a whole image's
        # logits. That keeps Python's share of a bulk run small.
        beat_bits = self.lanes * self.bits
        self.beats_per_word = beats_per_word(beat_bits)
        self.image_depth = -(-batch_images * self.beats_per_image // self.beats_per_word)
        self.param_depth = max(1, param_words)
        super().__init__({
            "mode": In(1),
            "load_params": In(1),
            "run": In(1),
            "n_params": In(32),
            "n_images": In(32),
            "stall_level": In(8),
            "stall_seed": In(32),
            "hold_logits": In(1),
            "busy": Out(1),
            "done": Out(1),
            "cycles": Out(32),
            "beats_in": Out(32),
            "images_out": Out(32),
            "source_valid": Out(1),
            "source_ready": Out(1),
            "sink_valid": Out(1),
            "sink_ready": Out(1),
            "ext_params": In(param_bus_signature()),
            "ext_images": In(pixel_stream(self.lanes, self.bits)),
            "ext_logits": Out(pixel_stream(1, 32, is_signed=True)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = accel = self.accel
        m.submodules.param_mem = param_mem = memory.Memory(
            shape=PARAM_LAYOUT.size, depth=self.param_depth, init=[])
        m.submodules.image_mem = image_mem = memory.Memory(
            shape=self.lanes * self.bits * self.beats_per_word, depth=self.image_depth, init=[])
        m.submodules.logit_mem = logit_mem = memory.Memory(
            shape=32 * self.classes, depth=self.batch_images, init=[])
        m.submodules.stamp_mem = stamp_mem = memory.Memory(
            shape=32, depth=self.batch_images, init=[])

        # 32-bit Galois LFSR: two pseudo-random bytes per cycle decide the stalls.
        lfsr = Signal(32, init=1)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], 0) ^ (0x80200003 * lfsr[0]))
        go_in = lfsr[0:8] >= self.stall_level
        go_out = lfsr[8:16] >= self.stall_level

        doing_params = Signal()
        doing_run = Signal()
        m.d.comb += self.busy.eq(doing_params | doing_run)
        with m.If(self.load_params | self.run):
            m.d.sync += [self.cycles.eq(0), self.done.eq(0), lfsr.eq(self.stall_seed | 1)]
        with m.Elif(self.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # -- parameters: memory -> accel.params (the accelerator is always ready for them) --
        p_rd = param_mem.read_port()
        p_idx = Signal(32)
        p_valid = Signal()
        with m.If(self.load_params):
            m.d.sync += [p_idx.eq(0), doing_params.eq(self.n_params != 0),
                         self.done.eq(self.n_params == 0)]
        with m.Elif(doing_params):
            m.d.comb += p_rd.addr.eq(p_idx)
            m.d.sync += [p_idx.eq(p_idx + 1), p_valid.eq(1)]
            with m.If(p_idx + 1 == self.n_params):
                m.d.sync += doing_params.eq(0)
        with m.Else():
            m.d.sync += p_valid.eq(0)
        with m.If(p_valid & ~doing_params):
            m.d.sync += self.done.eq(1)

        # -- images: memory -> accel.images, one beat per cycle unless the LFSR idles --
        i_rd = image_mem.read_port()
        i_addr = Signal(32)
        i_total = Signal(32)
        i_beat = Signal(range(self.beats_per_image))
        b_valid = Signal()
        b_last = Signal()
        k_bits = self.beats_per_word.bit_length() - 1
        b_sub = Signal(max(1, k_bits))
        b_ready = Signal()
        advance = ~b_valid | b_ready
        m.d.comb += i_rd.en.eq(0)
        with m.If(self.run):
            m.d.sync += [i_addr.eq(0), i_beat.eq(0), b_valid.eq(0),
                         i_total.eq(self.n_images * self.beats_per_image)]
        with m.Elif(advance):
            # Once valid is raised it stays, with the memory output held (read enable low),
            # until the beat is taken: the stream rule.
            with m.If(doing_run & (i_addr < i_total) & go_in):
                m.d.comb += [i_rd.en.eq(1), i_rd.addr.eq(i_addr >> k_bits)]
                if k_bits:
                    m.d.sync += b_sub.eq(i_addr[:k_bits])
                m.d.sync += [i_addr.eq(i_addr + 1), b_valid.eq(1),
                             b_last.eq(i_beat == self.beats_per_image - 1),
                             i_beat.eq(_wrap_inc(i_beat, self.beats_per_image))]
            with m.Else():
                m.d.sync += b_valid.eq(0)

        # -- logits: accel.logits -> memory, with random backpressure --
        l_wr = logit_mem.write_port(granularity=32)
        s_wr = stamp_mem.write_port()
        l_idx = Signal(range(self.classes))
        img_idx = Signal(32)
        out_ready = Signal()
        with m.If(self.run):
            m.d.sync += [l_idx.eq(0), img_idx.eq(0), doing_run.eq(self.n_images != 0),
                         self.done.eq(self.n_images == 0)]
        m.d.comb += [out_ready.eq(doing_run & go_out & ~self.hold_logits),
                     self.images_out.eq(img_idx)]
        take = Signal()
        with m.If(self.mode):
            m.d.comb += [
                accel.params.valid.eq(p_valid),
                accel.params.payload.eq(p_rd.data),
                accel.images.valid.eq(b_valid),
                accel.images.payload.data.eq(
                    i_rd.data.word_select(b_sub, self.lanes * self.bits) if k_bits else i_rd.data),
                accel.images.payload.last.eq(b_last),
                b_ready.eq(accel.images.ready),
                accel.logits.ready.eq(out_ready),
                take.eq(accel.logits.valid & out_ready),
            ]
        with m.Else():
            wiring.connect(m, wiring.flipped(self.ext_params), accel.params)
            wiring.connect(m, wiring.flipped(self.ext_images), accel.images)
            wiring.connect(m, accel.logits, wiring.flipped(self.ext_logits))
        m.d.comb += [self.source_valid.eq(accel.images.valid),
                     self.source_ready.eq(accel.images.ready),
                     self.sink_valid.eq(accel.logits.valid),
                     self.sink_ready.eq(accel.logits.ready)]
        with m.If(self.run):
            m.d.sync += self.beats_in.eq(0)
        with m.Elif(b_valid & b_ready & self.mode):
            m.d.sync += self.beats_in.eq(self.beats_in + 1)
        with m.If(take):
            # One logit word per image; the class index picks the 32-bit slice to write.
            m.d.comb += [l_wr.en.eq(1 << l_idx), l_wr.addr.eq(img_idx),
                         l_wr.data.eq(Cat(*[accel.logits.payload.data[0]] * self.classes))]
            m.d.sync += l_idx.eq(_wrap_inc(l_idx, self.classes))
            with m.If(accel.logits.payload.last):
                m.d.comb += [s_wr.en.eq(1), s_wr.addr.eq(img_idx), s_wr.data.eq(self.cycles)]
                m.d.sync += img_idx.eq(img_idx + 1)
                with m.If(img_idx + 1 == self.n_images):
                    m.d.sync += [doing_run.eq(0), self.done.eq(1)]
        return m


def _wrap_inc(counter, modulo):
    """``counter + 1`` modulo ``modulo`` (a beat counter within one image)."""
    return Mux(counter == modulo - 1, 0, counter + 1)
