"""Steady-state throughput of ShiftUnit, MaxPool2 and ChannelMap in amaranth.sim (no stalls).

Drives several images back to back with the producer always valid and the consumer always
ready, records the clock edge of every accepted input beat and every output beat, and prints
the rates over the images in the middle of the run (the first and last image are excluded so
the pipeline fill and drain do not count). Every output is also checked against the golden op.

Run: ``python benchmarks/bench_shift_unit.py``
"""

import time
from pathlib import Path

import numpy as np


from shiftacc.hw.channel_map import Replicate                    
from shiftacc.hw.maxpool import MaxPool2                         
from shiftacc.hw.params import shift_param_words                 
from shiftacc.hw.shift_unit import ShiftUnit                     
from shiftacc.models import golden                               
from shiftacc.sim.streamtb import (beats_to_pixels, pixels_to_beats, run_sim,
                            send_params)


def measure(dut, in_beats, out_count, params=()):
    """Return (cycle of each accepted input beat, cycle and payload of each output beat)."""
    st = {"cycle": 0, "in": [], "out": [], "payload": []}

    async def tb_in(ctx):
        if params:
            await send_params(ctx, dut.params, params)
        for beat in in_beats:
            ctx.set(dut.i.payload, beat)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            st["in"].append(st["cycle"])
        ctx.set(dut.i.valid, 0)

    async def tb_out(ctx):
        ctx.set(dut.o.ready, 1)
        while len(st["out"]) < out_count:
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            st["cycle"] += 1
            if valid:
                st["out"].append(st["cycle"])
                st["payload"].append(payload)

    run_sim(dut, tb_in, tb_out)
    return st["in"], st["out"], st["payload"]


def rate(stamps, first, last):
    """Events per cycle between event index ``first`` and ``last`` (inclusive)."""
    return (last - first) / max(1, stamps[last] - stamps[first])


def bench_shift(w, h, c, p, r, s, n=4):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, h, w, c))
    shifts = rng.integers(-r, r + 1, (c, 2))
    dut = ShiftUnit(width=w, height=h, channels=c, lanes=p, bits=8, radius=r, stride=s)
    nb, ho, wo = dut.nb, -(-h // s), -(-w // s)
    per_in, per_out = h * w * nb, ho * wo * nb
    t0 = time.time()
    cin, cout, out = measure(dut, pixels_to_beats(images, p, 8, None), n * per_out,
                             shift_param_words(0, shifts, p))
    got, _ = beats_to_pixels(out, n, ho, wo, c, p)
    ok = np.array_equal(got, golden.shift(images, shifts)[:, ::s, ::s, :])
    in_rate = rate(cin, per_in, (n - 1) * per_in - 1)
    out_rate = rate(cout, per_out, (n - 1) * per_out - 1)
    total = cout[-1] - cin[0] + 1
    print(f"ShiftUnit  W={w:2} H={h:2} C={c:2} P={p} R={r} stride={s} N={n}: "
          f"input {in_rate:.4f} beats/cycle, output {out_rate:.4f} beats/cycle "
          f"(ideal {per_out / per_in:.4f}), "
          f"{total} cycles total for {n * per_in} input beats "
          f"(fill {total - n * per_in}), golden {'OK' if ok else 'MISMATCH'} "
          f"[{time.time() - t0:.1f}s]")
    return ok


def bench_maxpool(w, h, c, p, n=4):
    images = np.random.default_rng(2).integers(0, 256, (n, h, w, c))
    dut = MaxPool2(width=w, height=h, channels=c, lanes=p, bits=8)
    nb = dut.nb
    per_in, per_out = h * w * nb, (h // 2) * (w // 2) * nb
    cin, cout, out = measure(dut, pixels_to_beats(images, p, 8, None), n * per_out)
    got, _ = beats_to_pixels(out, n, h // 2, w // 2, c, p)
    ok = np.array_equal(got, golden.maxpool2(images))
    in_rate = rate(cin, per_in, (n - 1) * per_in - 1)
    print(f"MaxPool2   W={w:2} H={h:2} C={c:2} P={p} N={n}: input {in_rate:.4f} beats/cycle, "
          f"{cout[-1] - cin[0] + 1} cycles to the last output for {n * per_in} input beats, "
          f"golden {'OK' if ok else 'MISMATCH'}")
    return ok


def bench_replicate(h, w, c, e, pi, po, n=4):
    images = np.random.default_rng(3).integers(0, 256, (n, h, w, c))
    dut = Replicate(channels=c, factor=e, lanes_in=pi, lanes_out=po, bits=8)
    per_px = max(dut.nb_in, dut.nb_out)
    npx = h * w
    cin, cout, out = measure(dut, pixels_to_beats(images, pi, 8, None), n * npx * dut.nb_out)
    got, _ = beats_to_pixels(out, n, h, w, c * e, po)
    ok = np.array_equal(got, golden.replicate(images, e))
    # pixels per cycle over the middle images, on the output side
    first, last = npx * dut.nb_out, (n - 1) * npx * dut.nb_out - 1
    px_rate = (last - first) / dut.nb_out / max(1, cout[last] - cout[first])
    print(f"Replicate  C={c} E={e} Pin={pi} Pout={po} ({dut.nb_in}->{dut.nb_out} beats/pixel): "
          f"{px_rate:.4f} pixels/cycle, ideal 1/{per_px} = {1 / per_px:.4f}, "
          f"golden {'OK' if ok else 'MISMATCH'}")
    return ok


def main():
    ok = True
    for args in [(8, 8, 9, 3, 1, 1), (16, 16, 16, 4, 1, 1), (7, 5, 5, 2, 2, 1),
                 (3, 3, 4, 4, 1, 1), (1, 6, 2, 1, 1, 1), (8, 8, 8, 4, 1, 2), (9, 7, 6, 4, 2, 2)]:
        ok &= bench_shift(*args)
    for args in [(8, 8, 16, 4), (7, 5, 3, 2), (2, 2, 1, 1)]:
        ok &= bench_maxpool(*args)
    for args in [(4, 4, 1, 9, 1, 3), (4, 4, 3, 3, 3, 3), (4, 4, 16, 1, 4, 2),
                 (4, 4, 5, 1, 5, 1)]:
        ok &= bench_replicate(*args)
    if not ok:
        raise SystemExit("golden mismatch")


if __name__ == "__main__":
    main()
