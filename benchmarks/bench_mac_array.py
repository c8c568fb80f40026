"""Steady-state throughput of MacArray and GlobalAvgPool in amaranth.sim (no stalls).

Usage::

    python benchmarks/bench_mac_array.py

For each MacArray shape it streams N pixels with ``valid`` always high and ``ready`` always
high, records the cycle at which every output pixel completes, and over the steady-state
window (first and last few pixels dropped) prints

* cycles per pixel (ideal: ``NBi · NBo``),
* multiplier utilization = MAC slots used ÷ (P_in · P_out · cycles), where a pixel uses
  ``NBi · NBo · P_in · P_out`` slots (the array is busy every cycle when this is 1.0),
* MAC-lane efficiency = useful MACs (``cin · cout`` per pixel) ÷ (P_in · P_out · cycles), which
  is below 1 only by the padding of channel counts that are not multiples of P,
* MAC efficiency over every multiplier the block instantiates (the MAC lanes and the Requant
  lanes, as DESIGN.md §3 counts them): useful MACs ÷ ((P_in · P_out + Requant lanes) · cycles).

For GlobalAvgPool it prints cycles per image back to back and the overhead over the
``H · W · NB`` input beats.
"""

import os
import random


from amaranth.sim import Simulator

from shiftacc.hw.gap import GlobalAvgPool
from shiftacc.hw.mac_array import MacArray
from shiftacc.hw.params import conv_param_words, gap_param_words

MAC_SHAPES = [  # (cin, cout, p_in, p_out)
    (1, 1, 1, 1),
    (8, 8, 8, 8),
    (9, 16, 3, 4),
    (16, 16, 4, 4),
    (16, 10, 4, 2),
    (32, 32, 4, 8),
    (10, 7, 3, 2),
]
GAP_SHAPES = [  # (height, width, channels, lanes)
    (1, 1, 16, 4),
    (4, 4, 16, 4),
    (8, 8, 32, 8),
]


def _simulate(dut, words, beats, n_out, out_lanes):
    """Load params, stream ``beats`` with no stalls; return the cycle of each output beat."""
    stamps = []
    state = {"cycle": 0, "done": False}

    async def clock(ctx):
        while not state["done"]:
            await ctx.tick()
            state["cycle"] += 1

    async def producer(ctx):
        for word in words:
            ctx.set(dut.params.payload.as_value(), word)
            ctx.set(dut.params.valid, 1)
            await ctx.tick()
        ctx.set(dut.params.valid, 0)
        for beat in beats:
            ctx.set(dut.i.payload, beat)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        while len(stamps) < n_out:
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            if valid:
                stamps.append(state["cycle"])
        state["done"] = True

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in (clock, producer, consumer):
        sim.add_testbench(tb)
    sim.run()
    return stamps


def bench_mac(cin, cout, p_in, p_out, n_pix=96, seed=1):
    rng = random.Random(seed)
    dut = MacArray(cin=cin, cout=cout, p_in=p_in, p_out=p_out, in_bits=8, weight_bits=8,
                   act_bits=8)
    weight = [[rng.randint(-128, 127) for _ in range(cin)] for _ in range(cout)]
    bias = [rng.randint(-1000, 1000) for _ in range(cout)]
    words = conv_param_words(0, weight, bias, [1000] * cout, [16] * cout, p_in, p_out)
    beats = []
    for n in range(n_pix):
        for b in range(dut.nbi):
            beats.append({"data": [rng.randrange(256) for _ in range(p_in)],
                          "last": int(b == dut.nbi - 1 and n == n_pix - 1)})
    stamps = _simulate(dut, words, beats, n_pix * dut.nbo, p_out)
    ends = stamps[dut.nbo - 1::dut.nbo]                # cycle each output pixel completes
    lo, hi = 8, n_pix - 8                              # steady-state window
    cycles = ends[hi] - ends[lo]
    pixels = hi - lo
    slots = p_in * p_out * cycles
    util = pixels * dut.cycles_per_pixel * p_in * p_out / slots
    eff = pixels * cin * cout / slots
    eff_all = pixels * cin * cout / ((p_in * p_out + dut.rq_lanes) * cycles)
    return dut, cycles / pixels, util, eff, eff_all


def bench_gap(height, width, channels, lanes, n_img=12, seed=2):
    rng = random.Random(seed)
    dut = GlobalAvgPool(width=width, height=height, channels=channels, lanes=lanes,
                        in_bits=8, act_bits=8)
    beats = []
    for n in range(n_img):
        for p in range(height * width):
            for b in range(dut.nb):
                beats.append({"data": [rng.randrange(256) for _ in range(lanes)],
                              "last": int(p == height * width - 1 and b == dut.nb - 1)})
    stamps = _simulate(dut, gap_param_words(0, 3000, 16), beats, n_img * dut.nb, lanes)
    ends = stamps[dut.nb - 1::dut.nb]
    lo, hi = 2, n_img - 2
    return dut, (ends[hi] - ends[lo]) / (hi - lo)


def main():
    print("## MacArray, no stalls (8-bit activations and weights)\n")
    print("| cin | cout | P_in | P_out | NBi·NBo | cycles/pixel | MAC-lane utilization "
          "| MAC-lane efficiency | Requant lanes | MAC efficiency, all multipliers | latency |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape in MAC_SHAPES:
        dut, cpp, util, eff, eff_all = bench_mac(*shape)
        print(f"| {' | '.join(map(str, shape))} | {dut.cycles_per_pixel} | {cpp:.3f} "
              f"| {util:.4f} | {eff:.4f} | {dut.rq_lanes} | {eff_all:.4f} | {dut.latency} |")
    print("\n## GlobalAvgPool, images back to back, no stalls\n")
    print("| H | W | C | P | input beats/image | cycles/image | overhead | Requant lanes "
          "| latency |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape in GAP_SHAPES:
        dut, cpi = bench_gap(*shape)
        beats = shape[0] * shape[1] * dut.nb
        print(f"| {' | '.join(map(str, shape))} | {beats} | {cpi:.2f} | {cpi - beats:.2f} "
              f"| {dut.rq_lanes} | {dut.latency} |")


if __name__ == "__main__":
    main()
