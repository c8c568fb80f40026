"""The overlay engine behind the host link (issue #10): descriptor and design id, the parameter
words the link loads, the driver's plan_for/load against the pure-Python overlay device model
over a real pyserial ``loop://`` port (with line faults), and the CLI's ``--engine`` plumbing.

The reference is always ``models.golden.run`` on the artifact; the device model computes its
logits from the loaded words only (words -> ``decode_param_words`` -> ``run_overlay``).
"""

import hashlib
import json

import numpy as np
import pytest

from shiftacc.hw.overlay_program import OverlayConfig, PASS_FIELDS, compile_overlay
from shiftacc.hw.params import OVERLAY_LAYER, ParamKind, decode_word
from shiftacc.hw.plan import plan_network
from shiftacc.hw.top import param_words
from shiftacc.models import golden
from shiftacc.models.artifact import save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sw import protocol as P
from shiftacc.sw.device import DesignMismatch, Device
from shiftacc.sw.devmodel import DeviceModel, ModelPort
from shiftacc.sw.errors import EXIT_USAGE

SMALL = OverlayConfig(lanes=6, requant_units=1, fm_words=2048, weight_rows=256,
                      channel_rows=128, gather_rows=256, max_passes=8)


def _net(rng, size=(8, 8), classes=10, **kw):
    return random_model(rng, size=size, classes=classes, **kw)


def _images(rng, model, n):
    return rng.integers(0, 1 << model.input_bits, (n, *model.input_shape), dtype=np.uint8)


def _device(model, config, *, timeout=2.0, retries=3, **kw):
    dm = DeviceModel(model, compile_overlay(model, config), **kw)
    port = ModelPort(dm)
    return dm, port, Device(port, timeout=timeout, retries=retries, url="loop://")


# --- descriptor and design id ----------------------------------------------------------------

def test_dataflow_descriptor_is_unchanged(np_rng):
    """A dataflow design id is still the hash of {link_version, topology, config, stages}."""
    model = _net(np_rng)
    plan = plan_network(model)
    expected = {"link_version": P.LINK_VERSION, "topology": P.topology(model),
                "config": plan.config,
                "stages": [[s.kind, s.layer, s.lanes_in, s.lanes_out] for s in plan.stages]}
    text = json.dumps(expected, sort_keys=True, separators=(",", ":"))
    assert P.descriptor(model, plan) == expected
    assert P.design_id(P.descriptor(model, plan)) == int.from_bytes(
        hashlib.sha256(text.encode()).digest()[:8], "little")


def test_overlay_descriptor_depends_on_io_and_config_only(np_rng):
    a = _net(np_rng, size=(7, 9), blocks=1)
    b = _net(np_rng, size=(7, 9), blocks=3)
    assert P.topology(a) != P.topology(b)
    da, db = (P.descriptor(m, compile_overlay(m, SMALL)) for m in (a, b))
    assert da == {"link_version": P.LINK_VERSION, "engine": "overlay",
                  "config": {"lanes": 6, "requant_units": 1, "fm_words": 2048,
                             "weight_rows": 256, "channel_rows": 128, "gather_rows": 256,
                             "max_passes": 8, "primitives": "generic"},
                  "io": {"input": [7, 9, 1], "input_bits": 8, "classes": 10}}
    assert P.design_id(da) == P.design_id(db)
    other = P.descriptor(a, compile_overlay(a, OverlayConfig(lanes=8)))
    assert P.design_id(other) != P.design_id(da)
    # The blob round-trips and the parser accepts an overlay descriptor (no topology).
    assert P.parse_descriptor_blob(P.descriptor_blob(da)) == da
    with pytest.raises(ValueError, match="unknown engine"):
        P.parse_descriptor_blob(P.descriptor_blob({**da, "engine": "systolic"}))


# --- parameter words ---------------------------------------------------------------------------

def test_param_words_cover_the_config_and_carry_the_plan(np_rng):
    """Every model of one config loads the same word count and address space (what the link
    engine fixes at elaboration), and the words hold exactly the plan's values."""
    space = {ParamKind.PROGRAM: (SMALL.max_passes, len(PASS_FIELDS)),
             ParamKind.GATHER: (SMALL.gather_rows, 1),
             ParamKind.WEIGHT: (SMALL.weight_rows, SMALL.lanes),
             ParamKind.BIAS: (SMALL.channel_rows, 1), ParamKind.M: (SMALL.channel_rows, 1),
             ParamKind.SH: (SMALL.channel_rows, 1), ParamKind.QMAX: (SMALL.channel_rows, 1)}
    total = sum(r * l for r, l in space.values())
    limits = {(OVERLAY_LAYER, int(k.value)): v for k, v in space.items()}
    for blocks in (1, 2, 3):
        model = _net(np_rng, blocks=blocks)
        plan = compile_overlay(model, SMALL)
        words = param_words(model, plan)
        assert len(words) == total
        assert P.param_limits(words) == limits
        got = {}
        for w in words:
            layer, kind, row, lane, value = decode_word(w)
            assert layer == OVERLAY_LAYER
            key = (kind, int(row), int(lane))
            assert key not in got, f"{key} written twice"
            got[key] = int(value)
        plan_words = {}
        for w in plan.param_words():
            _, kind, row, lane, value = decode_word(w)
            plan_words[(kind, int(row), int(lane))] = int(value)
        for key, value in got.items():
            assert value == plan_words.get(key, 0), key
        # The program's END row is written, and the rows after it are zeros (op 0 = END).
        n = len(plan.passes)
        assert got[(ParamKind.PROGRAM, n - 1, 0)] == 1 and got[(ParamKind.PROGRAM, n, 0)] == 0


# --- the driver against the overlay device model over loop:// -----------------------------------

@pytest.mark.parametrize("config", [OverlayConfig(), SMALL], ids=["default", "small"])
def test_load_infer_equals_golden(np_rng, config):
    """A random v1 network and a digits-shaped one (8x8x1, 10 classes), each on its own device."""
    nets = [_net(np_rng, size=(int(np_rng.integers(4, 10)), int(np_rng.integers(4, 10))),
                 in_channels=int(np_rng.integers(1, 4)), classes=int(np_rng.integers(2, 12)),
                 blocks=int(np_rng.integers(1, 4))),
            _net(np_rng, size=(8, 8), classes=10, blocks=2)]
    for model in nets:
        dm, _, dev = _device(model, config)
        with dev:
            ident = dev.identify()
            assert ident.engine == "overlay" and ident.input_shape == model.input_shape
            assert dev.load(model)["words"] == ident.param_words
            images = _images(np_rng, model, 37)
            np.testing.assert_array_equal(dev.infer(images), golden.run(model, images))
            assert dev.status()["images_done"] == 37
        assert not dm.drops, f"frames dropped: {dm.drops}"


def test_another_topology_loads_on_the_same_device(np_rng):
    """One overlay 'bitstream' (built for model a) runs b and c, other topologies, same I/O."""
    a = _net(np_rng, blocks=1)
    b = _net(np_rng, blocks=3)
    c = _net(np_rng, blocks=2, act_bits=4 if a.act_bits == 8 else 8)
    dm, _, dev = _device(a, SMALL)
    images = _images(np_rng, a, 20)
    with dev:
        for model in (a, b, c, a):
            plan = dev.plan_for(model)
            assert plan.engine == "overlay" and plan.config == SMALL
            dev.load(model)
            np.testing.assert_array_equal(dev.infer(images), golden.run(model, images))
    assert not dm.drops, f"frames dropped: {dm.drops}"
    assert golden.run(a, images).tolist() != golden.run(b, images).tolist()


def test_load_infer_exact_under_line_faults(np_rng):
    model = _net(np_rng, blocks=2)
    images = _images(np_rng, model, 40)
    dm, port, dev = _device(model, SMALL, timeout=0.3, retries=4)
    with dev:
        dev.identify()
        port.corrupt_request_byte(after=2000, mask=0x10)   # inside a LOAD_PARAMS payload
        port.drop_reply_bytes(3, after=40)                  # a load reply
        load = dev.load(model)
        assert load["retries"] >= 1
        port.corrupt_reply_byte(after=30, mask=0x80)        # an INFER reply
        port.drop_request_bytes(5, after=100)               # an INFER request
        np.testing.assert_array_equal(dev.infer(images), golden.run(model, images))
    assert P.Reason.PAYLOAD_CRC in dm.drops


def test_a_wrong_word_gives_wrong_logits(np_rng):
    """The device model's logits come from the loaded words: an altered weight word shows.

    A random network can be degenerate (the same logits for every image, every channel dead
    after a ReLU), and then no weight changes anything; so the network is drawn until its
    logits vary over the images, and the weights of its first pass are altered one at a time
    (data bit 6: the weight moves by 64) until one shows. A device model that ignored the
    loaded words would show none."""
    for _ in range(20):
        model = _net(np_rng, blocks=1)
        images = _images(np_rng, model, 64)
        want = golden.run(model, images)
        if len(np.unique(want, axis=0)) > 1:
            break
    else:
        raise AssertionError("no random network with logits that depend on the image")
    plan = compile_overlay(model, SMALL)
    dm = DeviceModel(model, plan)
    with Device(ModelPort(dm), timeout=1.0, url="loop://") as dev:
        dev.load(model)   # the driver sends the right words; the "device" then gets a bad one
    good = list(dm._loaded)
    assert (dm._logits(images) == want).all()
    weights = [i for i, w in enumerate(good)
               if decode_word(w)[1] == ParamKind.WEIGHT and decode_word(w)[4] != 0]
    for k in weights[:64]:
        dm._loaded = list(good)
        dm._loaded[k] ^= 1 << 54
        dm._net = dm._rebuild()
        if (dm._logits(images) != want).any():
            return
    raise AssertionError(f"none of {len(weights[:64])} altered weight words changed a logit")


def test_refusals_in_words(np_rng):
    a = _net(np_rng, blocks=1)
    small = OverlayConfig(lanes=4, max_passes=4)
    _, _, dev = _device(a, small)
    with dev:
        v2 = _net(np_rng, blocks=1, attention=("channel_attention",))
        with pytest.raises(DesignMismatch, match=r"does not fit the overlay design on loop://"
                           r".*layer \d+ \(channel_attention\): the overlay engine runs "
                           r"version-1 ops only") as e:
            dev.load(v2)
        assert e.value.status == EXIT_USAGE
        deep = _net(np_rng, blocks=4)
        with pytest.raises(DesignMismatch, match="over max_passes = 4"):
            dev.plan_for(deep)
        other_io = _net(np_rng, classes=4, blocks=1)
        with pytest.raises(DesignMismatch, match="classes is 10 on the device, 4 in the model"):
            dev.load(other_io)
        other_shape = _net(np_rng, size=(6, 8), blocks=1)
        with pytest.raises(DesignMismatch, match=r"input shape is \[8, 8, 1\] on the device, "
                                                 r"\[6, 8, 1\] in the model"):
            dev.plan_for(other_shape)
        dev.load(a)      # still usable after refusals: nothing was sent for them
        images = _images(np_rng, a, 5)
        np.testing.assert_array_equal(dev.infer(images), golden.run(a, images))


def test_dataflow_device_refuses_another_topology_still(np_rng):
    a, b = _net(np_rng, blocks=1), _net(np_rng, blocks=2)
    dm = DeviceModel(a, plan_network(a))
    with Device(ModelPort(dm), timeout=1.0, url="loop://") as dev:
        assert dev.identify().engine == "dataflow"
        with pytest.raises(DesignMismatch, match="the device has"):
            dev.plan_for(b)


# --- CLI ---------------------------------------------------------------------------------------

def _main(monkeypatch):
    """``shiftacc.sw.cli.main`` (generate/sim/serve declare ``--engine`` themselves)."""
    from shiftacc.sw import cli
    return cli.main


def test_cli_engine_combinations(np_rng, tmp_path, monkeypatch, capsys):
    main = _main(monkeypatch)
    model = _net(np_rng, blocks=1)
    path = tmp_path / "m.npz"
    save_artifact(path, model)
    cfg = tmp_path / "par.json"
    cfg.write_text("{}")
    ov = tmp_path / "ov.json"
    ov.write_text(json.dumps({"lanes": 8, "fm_words": 32}))
    cases = [
        (["generate", str(path), "--out", str(tmp_path / "g"), "--lanes", "8"],
         "--lanes configure the overlay engine; add --engine overlay"),
        (["serve", str(path), "--requant-units", "1", "--port", "0"],
         "--requant-units configure the overlay engine"),
        (["generate", str(path), "--out", str(tmp_path / "g"), "--engine", "overlay",
          "--config", str(cfg)], "is the dataflow planner's parallelism config"),
        (["generate", str(path), "--out", str(tmp_path / "g"), "--engine", "overlay",
          "--lanes", "7"], "lanes must be even"),
        (["generate", str(path), "--out", str(tmp_path / "g"), "--engine", "overlay",
          "--overlay-config", '{"lanez": 4}'], "unknown overlay config field(s) lanez"),
        (["generate", str(path), "--out", str(tmp_path / "g"), "--engine", "overlay",
          "--overlay-config", "{lanes"], "--overlay-config is not valid JSON"),
        (["serve", str(path), "--engine", "overlay", "--overlay-config", str(ov),
          "--port", "0"],
         "the model does not fit the overlay engine: input: the image 8x8x1 needs "
         "8*8*2/2 = 64 words per bank, over fm_words = 32"),
        (["sim", str(path), "--engine", "overlay", "--images", str(tmp_path / "x.npy"),
          "--protocol", "--stall-level", "3"],
         # --stall-level works on the overlay (stalls on the link's byte streams); --protocol
         # is the dataflow harness's own path
         "--protocol: options of the dataflow harness"),
    ]
    for argv, words in cases:
        assert main(argv) == EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert words in err, (argv, err)


def test_cli_generate_overlay(np_rng, tmp_path, monkeypatch, capsys):
    """generate --engine overlay: the engine's Verilog (no model in it), the words of the whole
    memory space in params.bin, an overlay summary."""
    main = _main(monkeypatch)
    model = _net(np_rng, blocks=1, max_width=12)
    path = tmp_path / "m.npz"
    save_artifact(path, model)
    out = tmp_path / "gen"
    cfg = {"lanes": 4, "fm_words": 512, "weight_rows": 128, "channel_rows": 64,
           "gather_rows": 64, "max_passes": 5}
    assert main(["-q", "generate", str(path), "--out", str(out), "--engine", "overlay",
                 "--overlay-config", json.dumps(cfg), "--requant-units", "1"]) == 0
    summ = json.loads((out / "summary.json").read_text())
    assert summ["engine"] == "overlay" and summ["config"]["requant_units"] == 1
    assert {k: summ["config"][k] for k in cfg} == cfg
    assert summ["io"] == {"input": [8, 8, 1], "input_bits": 8, "classes": 10}
    # 4 MAC lanes; the requant unit's product is two 16-bit halves (two multipliers).
    assert summ["multipliers"] == 4 + 2 * 1
    words = 5 * len(PASS_FIELDS) + 64 + 128 * 4 + 4 * 64
    assert summ["param_words"] == words
    assert (out / "params.bin").stat().st_size == 10 * words
    assert "module shiftacc_top" in (out / "shiftacc_top.v").read_text()


def test_link_top_builds_the_overlay_engine(np_rng):
    """LinkTop of an overlay plan holds an OverlayEngine of the plan's config; a model with
    input bits below 8 is zero-extended into the engine's 8-bit image port."""
    import copy
    from amaranth.sim import Simulator
    from shiftacc.hw.board import LinkTop
    from shiftacc.hw.overlay import OverlayEngine
    model = copy.deepcopy(_net(np_rng, blocks=1, max_width=12))
    model.input_bits = 4
    config = OverlayConfig(lanes=2, fm_words=512, weight_rows=192, channel_rows=64,
                           gather_rows=64, max_passes=5)
    top = LinkTop(model, compile_overlay(model, config), clock_hz=12_000_000, baud=0,
                  uart=False)
    assert isinstance(top.accelerator, OverlayEngine)
    assert top.engine.images.payload.data.shape().elem_shape.width == 4
    Simulator(top)    # elaborates the whole top (a port mismatch fails here)


@pytest.mark.slow
def test_serve_overlay_runs_two_topologies(tmp_path):
    """``shiftacc serve --engine overlay`` (Verilator: LinkTop + OverlayEngine) and the driver
    over socket://: two models of one I/O, other topologies, exact on the same server."""
    import re
    import signal
    import subprocess
    import sys
    import threading
    rng = np.random.default_rng(20261123)
    a = _net(rng, size=(5, 6), blocks=1, max_width=8)
    b = _net(rng, size=(5, 6), blocks=2, max_width=8)
    save_artifact(tmp_path / "a.npz", a)
    cfg = {"lanes": 4, "fm_words": 256, "weight_rows": 64, "channel_rows": 32,
           "gather_rows": 32, "max_passes": 5}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "shiftacc", "serve", str(tmp_path / "a.npz"),
                             "--port", "0", "-q", "--engine", "overlay", "--overlay-config",
                             json.dumps(cfg)], stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    try:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("line", proc.stdout.readline()),
                             daemon=True)
        t.start()
        t.join(900)
        m = re.search(r"socket://[0-9.]+:\d+", box.get("line", ""))
        assert m, f"serve did not announce its socket: {box.get('line')!r}; see {log.name}"
        images = _images(rng, a, 30)
        with Device.open(m.group(0), timeout=20.0) as dev:
            ident = dev.identify()
            assert ident.engine == "overlay"
            assert ident.design_id == P.design_id(P.descriptor(b, compile_overlay(
                b, OverlayConfig(**cfg))))
            for model in (a, b):
                dev.load(model)
                np.testing.assert_array_equal(dev.infer(images), golden.run(model, images))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                import os
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        proc.stdout.close()
        log.close()
