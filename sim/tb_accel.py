"""cocotb testbenches of the whole generated accelerator (run inside the simulator).

The job to do comes from a JSON file named by ``SHIFTACC_JOB`` (written by
:mod:`sim.runner`): model path, image file, config, batch size, stalls, seed, where to write
results. Two tests:

``fast_run``
    Bulk path: parameters and image batches go into the harness memories through VPI, the
    harness streams them at full rate, Python waits for ``done`` and reads the logits and
    per-image cycle stamps. No Python on clock edges between frame boundaries.
``protocol_run``
    Protocol path: Python drives the parameter and image streams and monitors the logit
    stream on every cycle, with random idle cycles and backpressure.

:mod:`sim.runner` runs exactly one of them per simulation (cocotb's test filter).
Both compare with the NumPy golden model (the *checker*) and, on a mismatch, replay the first
failing image with monitors on every layer's output stream to report the first layer whose
output differs, the position and both values.

Every wait has a deadline in clock cycles (the job's ``deadline``, from
:func:`shiftacc.sim.runner.cycle_budget`): when one passes, the testbench watches every
layer's output handshake (``tap{layer}_valid/ready``) for a while, reports the last stage
that still moved data and the stage or sink it waits on (``result["stall"]``), and fails:
a stalled design never hangs the run.

Cycles per image: a stall-free bulk run reports the steady state (``cycles_per_image``: mean
interval between image completions after the first, per command). Under random stalls
that interval is not a steady-state figure (the first and last completions jitter, so it can
even come out below the stall-free value); such runs report ``cycles_per_image_stalled``
instead: cycles from each command's start to its last image, per image (pipeline fill
included), which is never below the stall-free steady state.
"""

import json
import os
import random
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge, SimTimeoutError, with_timeout
from cocotb.utils import get_sim_time

from ..hw.plan import plan_network
from ..hw.stream import beats_per_pixel
from ..hw.top import image_beats, param_words
from ..models import golden
from .harness import beats_per_word
from ..models.artifact import load_artifact

CLOCK_NS = 10


def _signed(v, bits):
    return v - (1 << bits) if v >> (bits - 1) & 1 else v


class StreamDriver:
    """Drives a valid/ready stream from Python, with random idle cycles (valid low).

    Once ``valid`` is raised the payload is held until the handshake (the stream rule).
    Handshakes are decided on values sampled at the falling edge, when everything settled.
    """

    def __init__(self, clk, valid, ready, payload, rng, p_idle):
        self.clk, self.valid, self.ready, self.payload = clk, valid, ready, payload
        self.rng, self.p_idle = rng, p_idle
        self.valid.value = 0

    async def send(self, words):
        for w in words:
            while self.rng.random() < self.p_idle:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.payload.value = w
            self.valid.value = 1
            while True:
                await FallingEdge(self.clk)
                # An always-ready port (the parameter bus) has no ready wire: every beat is taken.
                taken = True if self.ready is None else bool(self.ready.value)
                await RisingEdge(self.clk)
                if taken:
                    break
        self.valid.value = 0


class StreamMonitor:
    """Collects a stream's beats, holding ``ready`` low at random (backpressure) if it owns it."""

    def __init__(self, clk, valid, ready, payload, rng=None, p_stall=0.0, drive_ready=True):
        self.clk, self.valid, self.ready, self.payload = clk, valid, ready, payload
        self.rng, self.p_stall, self.drive_ready = rng, p_stall, drive_ready
        self.beats = []

    async def collect(self, count=None):
        while count is None or len(self.beats) < count:
            if self.drive_ready:
                self.ready.value = int(not (self.rng and self.rng.random() < self.p_stall))
            await FallingEdge(self.clk)
            if self.valid.value and self.ready.value:
                self.beats.append(int(self.payload.value))
            await RisingEdge(self.clk)
        if self.drive_ready:
            self.ready.value = 0
        return self.beats


class AcceleratorTB:
    """Owns clock, reset, the bulk and protocol paths, the golden model and the checker."""

    def __init__(self, dut):
        self.dut = dut
        self.job = json.loads(Path(os.environ["SHIFTACC_JOB"]).read_text())
        self.model = load_artifact(self.job["model"])
        self.plan = plan_network(self.model, self.job["config"])
        self.images = np.load(self.job["images"])
        self.seed = int(self.job.get("seed", 1))
        self.rng = random.Random(self.seed)
        dut._log.info(f"seed {self.seed} (SHIFTACC_SEED reproduces it)")
        self.golden, self.taps = golden.run(self.model, self.images, taps=True)
        self.words = param_words(self.model, self.plan)
        # Fault injection for the testbench's own tests: flip data bits of one parameter
        # word so the hardware computes something else and the checker must catch it.
        corrupt = self.job.get("corrupt_param")
        if corrupt:
            index, xor = corrupt
            self.words[index] ^= int(xor) << 48
        self.lanes = self.plan.input_lanes
        self.bits = self.model.input_bits
        self.beats = image_beats(self.images.astype(np.int64), self.lanes, self.bits)
        self.classes = len(self.model.classes)
        self.beats_per_word = beats_per_word(self.lanes * self.bits)
        self.cycles = 0
        # Deadlines in cycles (see sim.runner.cycle_budget); generous defaults for old jobs.
        self.deadline = {"per_image": 16 * self.plan.predicted_cycles_per_image + 1000,
                         "fill": 16 * sum(st.cycles for st in self.plan.stages) + 10_000,
                         "params": 4 * len(self.words) + 1000, **self.job.get("deadline", {})}
        self.stall = None

    def batch_deadline(self, count):
        """Cycles ``count`` images may take, from the command to the last logit."""
        return int(self.deadline["fill"] + count * self.deadline["per_image"])

    async def start(self):
        cocotb.start_soon(Clock(self.dut.clk, CLOCK_NS, unit="ns").start())
        d = self.dut
        # Drive every input: a 4-state simulator would otherwise start them at X.
        for sig in (d.mode, d.load_params, d.run, d.ext_params__valid, d.ext_images__valid,
                    d.ext_logits__ready, d.stall_level, d.n_params, d.n_images,
                    d.ext_params__payload, d.ext_images__payload, d.hold_logits):
            sig.value = 0
        d.stall_seed.value = self.seed & 0xFFFFFFFF
        d.rst.value = 1
        await ClockCycles(d.clk, 3)
        d.rst.value = 0
        await RisingEdge(d.clk)

    async def _command(self, which, what, deadline, **regs):
        """Pulse a harness command and wait, at most ``deadline`` cycles, for ``done``.

        Raises
        ------
        AssertionError
            The deadline passed; :attr:`stall` holds the diagnosis (:meth:`diagnose_stall`).
        """
        d = self.dut
        for k, v in regs.items():
            getattr(d, k).value = v
        which.value = 1
        await RisingEdge(d.clk)
        which.value = 0
        await RisingEdge(d.clk)
        if not d.done.value:
            try:
                await with_timeout(RisingEdge(d.done), deadline * CLOCK_NS, "ns")
            except SimTimeoutError:
                self.cycles += int(d.cycles.value) + 2
                await self.diagnose_stall(what, deadline, bulk=True)
        # `done` and the last memory writes land on the same edge; on an event-driven simulator
        # (Icarus) the callback on `done` can run before the memory update, so let one more
        # edge pass before reading the memories.
        await RisingEdge(d.clk)
        self.cycles += int(d.cycles.value) + 3

    async def load_params_bulk(self):
        d = self.dut
        d.mode.value = 1
        mem = d.param_mem
        for i, w in enumerate(self.words):
            mem[i].value = w
        await self._command(d.load_params, "parameter load", self.deadline["params"],
                            n_params=len(self.words))

    async def run_bulk(self, first, count, stall_level):
        """Stream images [first, first+count) through the harness; returns logits, stamps."""
        d = self.dut
        d.mode.value = 1
        d.stall_level.value = stall_level
        mem = d.image_mem
        flat = self.beats[first:first + count].reshape(-1)
        k = self.beats_per_word
        beat_bits = self.lanes * self.bits
        t0 = time.perf_counter()
        for i in range(0, len(flat), k):
            word = 0
            for j, v in enumerate(flat[i:i + k]):
                word |= int(v) << (j * beat_bits)
            mem[i // k].value = word
        t1 = time.perf_counter()
        d.hold_logits.value = int(bool(self.job.get("hold_logits")))
        await self._command(d.run, f"images {first}..{first + count - 1}",
                            self.batch_deadline(count), n_images=count)
        t2 = time.perf_counter()
        lm, sm = d.logit_mem, d.stamp_mem
        raw = [str(lm[n].value) for n in range(count)]
        bad = [n for n, v in enumerate(raw) if set(v) - {"0", "1"}]
        if bad:
            raise AssertionError(f"logits of images {[first + n for n in bad]} hold unknown "
                                 f"bits (X/Z), e.g. {raw[bad[0]]}: some state was read before "
                                 f"it was written")
        words = [int(v, 2) for v in raw]
        logits = np.array([[_signed((w >> (32 * c)) & 0xFFFFFFFF, 32)
                            for c in range(self.classes)] for w in words], np.int64)
        stamps = [int(sm[n].value) for n in range(count)]
        t3 = time.perf_counter()
        self.dut._log.info(f"images {first}..{first + count - 1}: load {t1 - t0:.3f} s, "
                           f"run {t2 - t1:.3f} s, read back {t3 - t2:.3f} s")
        return logits, stamps

    async def run_protocol(self, indices, p_idle, p_stall, monitor_taps=False):
        """Drive params and images from Python with stalls; returns (logits, tap beats).

        With ``monitor_taps`` every layer's output stream is recorded too (for divergence
        reports); that costs a coroutine per layer per cycle, so only replays use it.
        """
        d = self.dut
        d.mode.value = 0
        await RisingEdge(d.clk)
        pdrv = StreamDriver(d.clk, d.ext_params__valid, None,
                            d.ext_params__payload, self.rng, p_idle)
        try:
            await with_timeout(pdrv.send(self.words), self.deadline["params"] * CLOCK_NS, "ns")
        except SimTimeoutError:
            await self.diagnose_stall("parameter load (protocol path)",
                                      self.deadline["params"], bulk=False)
        await ClockCycles(d.clk, 2)
        idrv = StreamDriver(d.clk, d.ext_images__valid, d.ext_images__ready,
                            d.ext_images__payload, self.rng, p_idle)
        top = self.lanes * self.bits
        words = []
        for n in indices:
            for b, v in enumerate(self.beats[n]):
                words.append(int(v) | (int(b == self.beats.shape[1] - 1) << top))
        # hold_logits (fault injection): the sink never takes a logit.
        mon = StreamMonitor(d.clk, d.ext_logits__valid, d.ext_logits__ready,
                            d.ext_logits__payload, self.rng,
                            1.0 if self.job.get("hold_logits") else p_stall)
        taps, tap_tasks = {}, []
        for layer in (self.plan_taps() if monitor_taps else []):
            t = StreamMonitor(d.clk, getattr(d.accel, f"tap{layer}_valid"),
                              getattr(d.accel, f"tap{layer}_ready"),
                              getattr(d.accel, f"tap{layer}_payload"), drive_ready=False)
            taps[layer] = t
            tap_tasks.append(cocotb.start_soon(t.collect()))
        t0 = get_sim_time("ns")
        mon_task = cocotb.start_soon(mon.collect(len(indices) * self.classes))
        send_task = cocotb.start_soon(idrv.send(words))
        limit = self.batch_deadline(len(indices))
        try:
            await with_timeout(mon_task, limit * CLOCK_NS, "ns")
        except SimTimeoutError:
            self.cycles += int((get_sim_time("ns") - t0) // CLOCK_NS)
            send_task.cancel()
            mon_task.cancel()
            for task in tap_tasks:
                task.cancel()
            await self.diagnose_stall(f"images {indices[0]}..{indices[-1]} (protocol path)",
                                      limit, bulk=False, logits_taken=len(mon.beats))
        send_task.cancel()
        await ClockCycles(d.clk, 4)
        t1 = get_sim_time("ns")
        for task in tap_tasks:
            task.cancel()
        self.cycles += int((t1 - t0) // CLOCK_NS)
        beats = mon.beats
        logits = np.array([[_signed(beats[n * self.classes + k] & 0xFFFFFFFF, 32)
                            for k in range(self.classes)] for n in range(len(indices))],
                          np.int64)
        return logits, {k: t.beats for k, t in taps.items()}

    async def diagnose_stall(self, what, deadline, bulk, logits_taken=None):
        """A deadline passed: find the last stage that still moved data, record it, fail.

        The handshakes along the pipeline are watched for a while: the image input, every
        layer's output (``tap{layer}_valid/ready``) and the logit output. If data still moves
        somewhere, the last stage that moved it is reported (the deadline was too short for a
        slow stage). If nothing moves, the furthest point that holds valid data which is not
        taken marks the stall: the stage that produced it is the last that moved data, and
        the stage after it (or the logit sink) is the one that stopped taking it.

        Raises
        ------
        AssertionError
            Always; :attr:`stall` and the result file hold the diagnosis.
        """
        d = self.dut
        layers = self.plan_taps()
        ops = {k: self.model.layers[k].op for k in layers}
        # (label, valid, ready) from the input to the output, in pipeline order.
        points = [("input", "the image input", d.source_valid, d.source_ready)]
        points += [(k, f"layer {k} ({ops[k]})", getattr(d.accel, f"tap{k}_valid"),
                    getattr(d.accel, f"tap{k}_ready")) for k in layers]
        points.append(("output", "the logit output", d.sink_valid, d.sink_ready))
        watch = int(min(4000, max(200, 2 * self.plan.predicted_cycles_per_image)))
        moved = [0] * len(points)
        for _ in range(watch):
            await FallingEdge(d.clk)
            for n, (_, _, v, r) in enumerate(points):
                if v.value and r.value:
                    moved[n] += 1
            await RisingEdge(d.clk)
        self.cycles += watch
        await FallingEdge(d.clk)
        state = [(int(v.value), int(r.value)) for _, _, v, r in points]
        last_layer = layers[-1] if layers else None

        def producer(n):
            """The stage that puts data on point n."""
            key = points[n][0]
            if key == "input":
                return "the image source"
            if key == "output":
                return (f"layer {last_layer} ({ops[last_layer]}, the classifier, through its "
                        f"output buffer)")
            return points[n][1]

        def consumer(n):
            """The stage that takes data from point n."""
            if n + 1 < len(points) - 1:
                return f"{points[n + 1][1]}, which takes no more input"
            if points[n][0] == "output":
                return "the logit sink, which does not take the logits (ready low)"
            return "the buffer before the logit output"

        moving = [n for n in range(len(points)) if moved[n]]
        waiting = [n for n in range(len(points)) if state[n][0] and not state[n][1]]
        if moving:
            n = moving[-1]
            last, waits = producer(n), None
            message = (f"deadline of {deadline} cycles passed during {what} while data still "
                       f"moved (the last stage that moved data is {last}): the design is "
                       f"slower than its cycle model predicts")
        elif waiting:
            n = waiting[-1]
            last, waits = producer(n), consumer(n)
            message = (f"stalled during {what}: nothing moved for {deadline} + {watch} cycles; "
                       f"the last stage that moved data is {last}; it waits on {waits}")
        else:
            n, last = None, None
            waits = "nothing: no stage holds data that is not taken"
            message = (f"stalled during {what}: nothing moved for {deadline} + {watch} cycles "
                       f"and no stage offers data: some stage swallowed data or waits for "
                       f"input that already went in")
        self.stall = {
            "message": message, "during": what, "deadline_cycles": deadline,
            "watched_cycles": watch, "still_moving": bool(moving), "last_moving": last,
            "last_moving_layer": points[n][0] if n is not None and isinstance(points[n][0], int)
            else (last_layer if n is not None and points[n][0] == "output" else None),
            "waits_on": waits,
            "points": [{"at": p[1], "valid": st[0], "ready": st[1], "beats_while_watched": mv}
                       for p, st, mv in zip(points, state, moved)]}
        if bulk:
            self.stall.update(beats_in=int(d.beats_in.value), images_out=int(d.images_out.value))
        if logits_taken is not None:
            self.stall["logits_taken"] = logits_taken
        d._log.error(message)
        _write_result(self, {"stall": self.stall, "sim_cycles": self.cycles,
                             "golden_mismatches": None, "logits": None})
        raise AssertionError(message)

    def plan_taps(self):
        """Layers whose output stream carries a tap (every layer but a fused subsample)."""
        return sorted({s.layer for s in self.plan.stages
                       if s.layer is not None and s.kind != "subsample"})

    def divergence(self, image_index, tap_beats):
        """First layer whose hardware output differs from golden, with position and values."""
        last_stage = {}
        for s in self.plan.stages:
            if s.layer is not None and s.kind != "subsample":
                last_stage[s.layer] = s
        for layer in self.plan_taps():
            s = last_stage[layer]
            gold = self.taps[layer][image_index]
            if s.kind == "shift" and s.stride == 2:
                gold = gold[::2, ::2, :]
            h, w, c = gold.shape
            nb = beats_per_pixel(c, s.lanes_out)
            beats = tap_beats.get(layer, [])
            mask = (1 << s.bits_out) - 1
            vals = np.zeros((h * w * nb * s.lanes_out,), np.int64)
            for b, v in enumerate(beats[:h * w * nb]):
                for l in range(s.lanes_out):
                    x = (v >> (l * s.bits_out)) & mask
                    vals[b * s.lanes_out + l] = _signed(x, s.bits_out) if s.signed else x
            hwv = vals.reshape(h, w, nb * s.lanes_out)[..., :c]
            if len(beats) < h * w * nb:
                return {"layer": layer, "op": self.model.layers[layer].op,
                        "problem": f"only {len(beats)} of {h * w * nb} beats came out"}
            diff = np.argwhere(hwv != gold)
            if len(diff):
                y, x, ch = (int(v) for v in diff[0])
                return {"layer": layer, "op": self.model.layers[layer].op,
                        "position": [y, x, ch], "hardware": int(hwv[y, x, ch]),
                        "golden": int(gold[y, x, ch]),
                        "differing_values": int(len(diff))}
        return None


def _write_result(tb, result):
    Path(tb.job["result"]).write_text(json.dumps(result))


async def _check_and_report(tb, logits, wall, extra):
    """The checker: compare every image with golden, write the result, fail on a mismatch.

    On a mismatch the first failing image is replayed with every layer's output monitored,
    and the first layer that differs (position, hardware and golden values) is reported.
    """
    bad = [n for n in range(len(logits)) if not np.array_equal(logits[n], tb.golden[n])]
    result = {"logits": logits.tolist(), "golden_mismatches": len(bad),
              "mismatched_images": bad[:100], "sim_cycles": tb.cycles,
              "sim_wall_seconds": wall, **extra}
    if bad:
        _, tap_beats = await tb.run_protocol([bad[0]], 0.0, 0.0, monitor_taps=True)
        result["first_mismatch"] = {"image": bad[0], "hardware": logits[bad[0]].tolist(),
                                    "golden": tb.golden[bad[0]].tolist(),
                                    "divergence": tb.divergence(bad[0], tap_beats)}
    _write_result(tb, result)
    assert not bad, f"{len(bad)} images differ from golden; first: {result['first_mismatch']}"


@cocotb.test()
async def fast_run(dut):
    """Whole network, many images, bulk path; logits must equal golden exactly."""
    tb = AcceleratorTB(dut)
    t_wall = time.perf_counter()
    await tb.start()
    await tb.load_params_bulk()
    n = len(tb.images)
    batch = int(tb.job["batch_images"])
    stall = int(tb.job.get("stall_level", 0))
    all_logits, steady, whole, latency = [], [], [], None
    for first in range(0, n, batch):
        count = min(batch, n - first)
        logits, stamps = await tb.run_bulk(first, count, stall)
        all_logits.append(logits)
        latency = stamps[0] + 1 if latency is None else latency
        if tb.job.get("progress"):
            Path(tb.job["progress"]).write_text(json.dumps({"done": first + count}))
        # From the command to the last image's last logit (pipeline fill included).
        whole.append((stamps[-1] + 1, count))
        if count >= 3:
            # Steady state: skip the pipeline fill (first image), images back to back.
            steady.append((stamps[-1] - stamps[0], count - 1))
    logits = np.concatenate(all_logits)
    # first_image_cycles: the first image's latency from the command (pipeline fill).
    extra = {"stall_level": stall, "first_image_cycles": latency}
    if steady and stall == 0:
        # Only a stall-free run measures the steady state.
        extra["cycles_per_image"] = sum(c for c, _ in steady) / sum(k for _, k in steady)
    elif stall:
        extra["cycles_per_image_stalled"] = sum(c for c, _ in whole) / sum(k for _, k in whole)
    await _check_and_report(tb, logits, time.perf_counter() - t_wall, extra)


@cocotb.test()
async def protocol_run(dut):
    """Whole network driven cycle by cycle from Python, random stalls on every stream."""
    tb = AcceleratorTB(dut)
    t_wall = time.perf_counter()
    await tb.start()
    n = len(tb.images)
    p = float(tb.job.get("p_stall", 0.3))
    logits, _ = await tb.run_protocol(list(range(n)), p, p)
    await _check_and_report(tb, logits, time.perf_counter() - t_wall, {})
