"""Fuzz of the host link through ``shiftacc serve`` (issue #8): the real accelerator simulated
by Verilator behind its TCP socket, driven by :mod:`shiftacc.sim.linkfuzz`.

At least 1500 noise frames (corrupted, truncated, duplicated, reordered, random bytes, random
frames), seeded, in bursts between valid INFER/STATUS/IDENTIFY requests: 0 wrong results
accepted (every INFER OK reply, duplicates included, carries the golden logits of its frame's
images), 0 hangs (every valid request answered within its wall-clock deadline), every valid
request answered exactly. A deliberately wrong reference shows that the check bites. The
server stops on SIGTERM (exit 143).

The tiny network is the one of ``test_link_serve.py`` (same generator and seed), so the two
share one cached Verilator build (a cold build of it: 60–100 s on two cores, with the
machine idle or busy; the fuzz itself about 10 s).
``SHIFTACC_LINK_SERVE_FUZZ_FRAMES`` sets the number of noise frames (default 1500).
"""

import os
import time

import numpy as np

from shiftacc.models import golden
from shiftacc.models.artifact import save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sim.linkfuzz import NOISE_KINDS, LinkFuzzer, fuzz_link
from shiftacc.sw import protocol as P

from test_link_serve import Server

FRAMES = int(os.environ.get("SHIFTACC_LINK_SERVE_FUZZ_FRAMES", "1500"))


def test_link_fuzz_through_serve(seed, tmp_path):
    t0 = time.perf_counter()
    rng = np.random.default_rng(20261122)
    model = save_artifact(tmp_path / "tiny.npz",
                          random_model(rng, size=(5, 4), blocks=1, max_width=5))
    srv = Server(tmp_path / "tiny.npz", [], tmp_path / "serve.log")
    try:
        t_up = time.perf_counter() - t0
        rep = fuzz_link(srv.url, model, FRAMES, seed, timeout=10.0, deadline=30.0)
        print(f"\nlink fuzz through shiftacc serve (server up after {t_up:.1f} s):")
        print(rep.table())
        assert rep.hangs == 0, rep.failures
        assert rep.wrong == 0, rep.failures
        assert not rep.failures, rep.failures
        assert rep.noise_frames >= FRAMES
        assert all(rep.noise[k] > 0 for k in NOISE_KINDS), rep.noise
        assert rep.valid > FRAMES // 60 and rep.answered == rep.valid
        assert rep.infer_checked > rep.valid // 2     # duplicates were executed and checked
        assert rep.device["frames_dropped"] > 0 and rep.device["frames_ok"] >= rep.answered

        # The check bites: against a reference off by one in every image, the OK replies
        # are flagged wrong, and a valid request answered wrongly never counts as answered
        # (so its deadline passes: a hang, which stops the run).
        def off_by_one(images):
            out = golden.run(model, images).copy()
            out[:, 0] += 1
            return out

        bad = fuzz_link(srv.url, model, 40, seed + 1, deadline=2.0, max_resends=2,
                        golden_fn=off_by_one)
        assert bad.wrong > 0 and bad.hangs == 1 and not bad.ok, bad.table()
        print(f"wrong reference: {bad.wrong} wrong results flagged, {bad.hangs} hang")
    finally:
        status = srv.stop()
    assert status == 143, f"serve exited {status} on SIGTERM (expected 143)"
    print(f"test wall time {time.perf_counter() - t0:.1f} s")


def test_truncated_noise_is_never_completed_by_what_follows(seed):
    # A noise frame cut inside its CRC must not become valid because the next bytes on the
    # wire equal the missing ones (seen in CI: last CRC byte = SYNC[0], cut one byte short,
    # then a frame). The fuzzer puts a filler byte in between; a parser must then drop it.
    rng = np.random.default_rng(seed)
    frames = []
    while len(frames) < 3:   # frames whose CRC starts (k = 4) .. ends (k = 1) with a sync byte
        f = P.encode_frame(P.Command.INFER, len(frames), rng.integers(0, 256, 20, np.uint8)
                           .tobytes())
        if f[-1] == P.SYNC[0] or f[-2:] == P.SYNC:
            frames.append(f)
    follow = P.encode_frame(P.Command.STATUS, 200)
    for f in frames:
        k = 1 if f[-1] == P.SYNC[0] else 2
        for pieces in ([(f[:-k], f[-k:]), (follow, b"")], [(f[:-k], f[-k:])]):
            data = LinkFuzzer._join(pieces)
            if len(pieces) == 1:
                data += follow          # what the burst's last piece is followed by
            ok = [ev.seq for ev in P.FrameParser().feed(data) if isinstance(ev, P.Frame)]
            assert ok == [200], (k, ok)
    # Without a clash nothing is inserted, and a longer cut is left alone.
    f = frames[0]
    assert LinkFuzzer._join([(f[:-1], f[-1:]), (b"\x11", b"")]) == f[:-1] + b"\x11"
    assert LinkFuzzer._join([(f[:-6], f[-6:]), (f[-6:], b"")]) == f
