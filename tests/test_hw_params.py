"""params.bin round trip: every beat of a random model decodes to the artifact's value at the
address hw/params.py defines, and every artifact value is sent exactly once."""

import numpy as np
import pytest

from shiftacc.hw.params import (PARAM_BYTES, PARAM_LAYOUT, ParamKind, decode_word, encode_word)
from shiftacc.hw.top import param_words
from shiftacc.models.netgen import random_model
from shiftacc.sim.streamtb import make_rng


def _signed(v, bits):
    return v - (1 << bits) if v >> (bits - 1) & 1 else v


@pytest.mark.parametrize("case", range(4))
def test_params_bin_round_trip(case, plan_within):
    rng, seed = make_rng(f"test_params_bin_round_trip[{case}]")
    np_rng = np.random.default_rng(seed)
    model = random_model(np_rng, size=(rng.randint(3, 8), rng.randint(3, 8)),
                         blocks=rng.randint(1, 3))
    plan = plan_within(model, rng.randint(8, 120))
    words = param_words(model, plan)
    # The byte form written to params.bin reads back to the same words.
    blob = b"".join(w.to_bytes(PARAM_BYTES, "little") for w in words)
    assert [int.from_bytes(blob[k:k + PARAM_BYTES], "little")
            for k in range(0, len(blob), PARAM_BYTES)] == words

    stages = {s.layer: s for s in plan.stages if s.kind in ("conv", "shift", "gap")}
    seen = set()
    for w in words:
        layer, kind, row, lane, data = decode_word(w)
        assert layer in stages, f"beat for layer {layer}, which has no parameters"
        st, lay = stages[layer], model.layers[layer]
        key = (layer, kind, row, lane)
        assert key not in seen, f"address {key} written twice"
        seen.add(key)
        if st.kind == "conv":
            p_in, p_out = st.lanes_in, st.lanes_out
            nbi = -(-lay.cin // p_in)
            if kind == ParamKind.WEIGHT:
                o = (row // nbi) * p_out + lane // p_in
                i = (row % nbi) * p_in + lane % p_in
                assert _signed(data, 32) == int(lay.weight[o, i]), (key, o, i)
            else:
                o = row * p_out + lane
                want = {ParamKind.BIAS: lay.bias, ParamKind.M: lay.m, ParamKind.SH: lay.sh}[kind]
                assert want is not None, f"{kind} beat for the classifier"
                assert _signed(data, 32) == int(want[o]), (key, o)
        elif st.kind == "shift":
            assert kind == ParamKind.SHIFT
            c = row * st.lanes_in + lane
            dy, dx = _signed(data & 0xFF, 8), _signed(data >> 8 & 0xFF, 8)
            assert (dy, dx) == tuple(int(v) for v in lay.shifts[c]), (key, c)
            assert data >> 16 == 0
        else:
            assert (row, lane) == (0, 0) and kind in (ParamKind.M, ParamKind.SH)
            assert data == int(lay.m if kind == ParamKind.M else lay.sh)
    # Every artifact value went out exactly once.
    want = 0
    for layer, st in stages.items():
        lay = model.layers[layer]
        if st.kind == "conv":
            want += lay.cin * lay.cout + lay.cout * (3 if lay.m is not None else 1)
        elif st.kind == "shift":
            want += len(lay.shifts)
        else:
            want += 2
    assert len(seen) == len(words) == want


def test_encode_decode_fields():
    rng, _ = make_rng("test_encode_decode_fields")
    for _ in range(200):
        f = (rng.randrange(256), ParamKind(rng.randrange(5)), rng.randrange(65536),
             rng.randrange(65536), rng.randrange(-(1 << 31), 1 << 32))
        w = encode_word(*f)
        assert 0 <= w < 1 << PARAM_LAYOUT.size
        assert decode_word(w) == f[:4] + (f[4] & 0xFFFFFFFF,)
        # The layout itself is the definition: fields land where PARAM_LAYOUT puts them.
        view = PARAM_LAYOUT.from_bits(w)
        assert (view.layer, view.kind, view.row, view.lane) == f[:4]
    for bad in [(256, 0, 0, 0, 0), (0, 0, 65536, 0, 0), (0, 0, 0, 65536, 0), (0, 0, 0, 0, 1 << 32),
                (-1, 0, 0, 0, 0)]:
        with pytest.raises(ValueError):
            encode_word(bad[0], ParamKind(bad[1]), *bad[2:])
    with pytest.raises(ValueError):
        decode_word(200 << 8)                     # kind 200 is no ParamKind


@pytest.mark.parametrize("case", range(2))
def test_accelerator_param_stream_per_block(case, plan_within):
    """Every block's parameter port carries exactly the beats of its own layer, in order, and
    nothing else (the per-block registered stream of ``Accelerator``): no beat is lost or
    duplicated, and a beat of another layer (or of no layer) never reaches it."""
    from amaranth.sim import Simulator

    from shiftacc.hw.top import Accelerator
    rng, seed = make_rng(f"test_accelerator_param_stream_per_block[{case}]")
    model = random_model(np.random.default_rng(seed), size=(rng.randint(3, 6),
                                                             rng.randint(3, 6)), blocks=1)
    plan = plan_within(model, rng.randint(8, 40))
    words = param_words(model, plan)
    words = rng.sample(words, min(len(words), 60))
    words += [encode_word(200, ParamKind.M, 0, 0, 5), encode_word(255, ParamKind.WEIGHT, 1, 2, 3)]
    rng.shuffle(words)
    acc = Accelerator(model, plan)
    sim = Simulator(acc)
    sim.add_clock(1e-6)
    got = None

    async def bench(ctx):
        nonlocal got
        ports = acc.param_ports
        assert len({layer for _, layer, _ in ports}) == len(ports) > 0
        got = {name: [] for name, _, _ in ports}
        pending = list(words)
        for _ in range(4 * len(words) + 8):
            if pending and rng.random() < 0.7:
                ctx.set(acc.params.valid, 1)
                ctx.set(acc.params.payload.as_value(), pending.pop(0))
            else:
                ctx.set(acc.params.valid, 0)
            await ctx.tick()
            for name, _, port in ports:
                if ctx.get(port.valid):
                    got[name].append(ctx.get(port.payload.as_value()))
        assert not pending

    sim.add_testbench(bench)
    sim.run()
    for name, layer, _ in acc.param_ports:
        assert got[name] == [w for w in words if decode_word(w)[0] == layer], name
