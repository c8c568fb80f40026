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
"""

import json
import os
import random
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge
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
                taken = bool(self.ready.value)
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

    async def start(self):
        cocotb.start_soon(Clock(self.dut.clk, CLOCK_NS, unit="ns").start())
        d = self.dut
        # Drive every input: a 4-state simulator would otherwise start them at X.
        for sig in (d.mode, d.load_params, d.run, d.ext_params__valid, d.ext_images__valid,
                    d.ext_logits__ready, d.stall_level, d.n_params, d.n_images,
                    d.ext_params__payload, d.ext_images__payload):
            sig.value = 0
        d.stall_seed.value = self.seed & 0xFFFFFFFF
        d.rst.value = 1
        await ClockCycles(d.clk, 3)
        d.rst.value = 0
        await RisingEdge(d.clk)

    async def _command(self, which, **regs):
        d = self.dut
        for k, v in regs.items():
            getattr(d, k).value = v
        which.value = 1
        await RisingEdge(d.clk)
        which.value = 0
        await RisingEdge(d.clk)
        if not d.done.value:
            await RisingEdge(d.done)
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
        await self._command(d.load_params, n_params=len(self.words))

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
        await self._command(d.run, n_images=count)
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
        pdrv = StreamDriver(d.clk, d.ext_params__valid, d.ext_params__ready,
                            d.ext_params__payload, self.rng, p_idle)
        await pdrv.send(self.words)
        await ClockCycles(d.clk, 2)
        idrv = StreamDriver(d.clk, d.ext_images__valid, d.ext_images__ready,
                            d.ext_images__payload, self.rng, p_idle)
        top = self.lanes * self.bits
        words = []
        for n in indices:
            for b, v in enumerate(self.beats[n]):
                words.append(int(v) | (int(b == self.beats.shape[1] - 1) << top))
        mon = StreamMonitor(d.clk, d.ext_logits__valid, d.ext_logits__ready,
                            d.ext_logits__payload, self.rng, p_stall)
        taps, tap_tasks = {}, []
        for layer in (self.plan_taps() if monitor_taps else []):
            t = StreamMonitor(d.clk, getattr(d.accel, f"tap{layer}_valid"),
                              getattr(d.accel, f"tap{layer}_ready"),
                              getattr(d.accel, f"tap{layer}_payload"), drive_ready=False)
            taps[layer] = t
            tap_tasks.append(cocotb.start_soon(t.collect()))
        t0 = get_sim_time("ns")
        mon_task = cocotb.start_soon(mon.collect(len(indices) * self.classes))
        await idrv.send(words)
        await mon_task
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
    all_logits, steady = [], []
    for first in range(0, n, batch):
        count = min(batch, n - first)
        logits, stamps = await tb.run_bulk(first, count, stall)
        all_logits.append(logits)
        if tb.job.get("progress"):
            Path(tb.job["progress"]).write_text(json.dumps({"done": first + count}))
        if count >= 3:
            # Steady state: skip the pipeline fill (first image), images back to back.
            steady.append(((stamps[-1] - stamps[0]) / (count - 1), count - 1))
    logits = np.concatenate(all_logits)
    extra = {"stall_level": stall}
    if steady:
        tot = sum(k for _, k in steady)
        extra["cycles_per_image"] = sum(c * k for c, k in steady) / tot
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
