"""The host driver (sw/device.py) over a real pyserial ``loop://`` port against the pure-Python
device model (sw/devmodel.py), both built from sw/protocol.py: identity, exact logits against
the golden model, refusals, retries under injected line faults, bounded timeouts; and the
device model itself against hand-made corrupt frames."""

import copy
import time
import zlib

import numpy as np
import pytest

from shiftacc.hw.plan import load_config, plan_network
from shiftacc.hw.params import ParamKind, encode_word
from shiftacc.hw.top import param_words
from shiftacc.models import golden
from shiftacc.models.netgen import random_model
from shiftacc.sim.streamtb import derive_seed, make_rng
from shiftacc.sw import protocol as P
from shiftacc.sw.device import (DesignMismatch, Device, DeviceError, LinkError, LinkTimeout,
                                ProtocolError)
from shiftacc.sw.devmodel import DeviceModel, ModelPort
from shiftacc.sw.errors import EXIT_LINK, EXIT_USAGE

R = P.Reason


def _digits_like(seed, **kw):
    """A tiny digits-like model: 8x8x1 images, 8-bit pixels, 10 classes."""
    return random_model(np.random.default_rng(seed), size=(8, 8), classes=10, **kw)


@pytest.fixture(scope="module")
def net():
    model = _digits_like(derive_seed("test_device.net"))
    return model, plan_network(model)


def _device(net, *, timeout=0.5, retries=3, **kw):
    model, plan = net
    dm = DeviceModel(model, plan, **kw)
    port = ModelPort(dm)
    return dm, port, Device(port, timeout=timeout, retries=retries, url="loop://")


def _images(seed, n, bits=8):
    return np.random.default_rng(seed).integers(0, 1 << bits, (n, 8, 8, 1), dtype=np.uint8)


def _replies(raw):
    """Parse reply bytes into (command, seq, reason) triples."""
    out = []
    for ev in P.FrameParser().feed(raw):
        assert isinstance(ev, P.Frame), f"the device sent a damaged frame: {ev}"
        out.append((ev.command, ev.seq, R(ev.payload[0])))
    return out


# --- CRCs ------------------------------------------------------------------------------------

def _crc8_smbus(data):
    """CRC-8/SMBUS by hand: poly 0x07, init 0, no reflection, no final xor."""
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def test_crcs_match_amaranth_algorithms():
    rng, _ = make_rng("test_crcs_match_amaranth_algorithms")
    algo = P.FRAME_CRC()
    for _ in range(40):
        header = bytes(rng.randrange(256) for _ in range(P.HEADER_BYTES))
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        # The zlib shortcut is exactly amaranth's CRC32_ETHERNET.
        assert P.frame_crc(header, payload) == algo.compute(header + payload)
        assert P.header_crc(header) == _crc8_smbus(header)
    # Catalogue check values ("123456789").
    assert P.header_crc(b"1234") == _crc8_smbus(b"1234")
    assert _crc8_smbus(b"123456789") == 0xF4 == P.HEADER_CRC().compute(b"123456789")
    assert P.frame_crc(b"1234", b"56789") == 0xCBF43926 == zlib.crc32(b"123456789")


# --- identity --------------------------------------------------------------------------------

def test_identify(net):
    model, plan = net
    dm, port, dev = _device(net)
    with dev:
        ident = dev.identify()
    assert ident.link_version == P.LINK_VERSION
    assert ident.design_id == P.design_id(P.descriptor(model, plan)) == dm.design_id
    assert ident.descriptor == P.descriptor(model, plan) | {"config": plan.config}
    assert (ident.clock_hz, ident.baud, ident.slots) == (48_000_000, 3_000_000, 4)
    assert ident.max_payload == max(1024, 64) and ident.image_bytes == 64
    assert (ident.classes, ident.input_bits) == (10, 8)
    assert ident.param_words == len(param_words(model, plan))
    assert ident.watchdog_cycles == max(64 * 10 * 48_000_000 // 3_000_000, 48_000_000 // 100)
    assert ident.input_shape == (8, 8, 1)
    # A byte-stream device (no UART) and other limits are reported as built.
    _, _, dev = _device(net, baud=0, clock_hz=1_000_000, slots=7, max_payload=200)
    with dev:
        ident = dev.identify()
    assert (ident.baud, ident.clock_hz, ident.slots, ident.max_payload) == (0, 1_000_000, 7, 200)
    assert ident.watchdog_cycles == max(640, 1_000_000 // 100)


def test_other_link_version_refused(net):
    class V2(DeviceModel):
        def identify_body(self):
            return bytes((P.LINK_VERSION + 1,)) + super().identify_body()[1:]
    port = ModelPort(V2(*net))
    with Device(port, timeout=0.5, url="loop://") as dev:
        with pytest.raises(DesignMismatch, match=f"link version {P.LINK_VERSION + 1}") as e:
            dev.identify()
    assert e.value.status == EXIT_USAGE


# --- load + infer ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 37, 150])
def test_load_and_infer_exact(net, n, seed):
    model, _ = net
    dm, port, dev = _device(net)
    with dev:
        report = dev.load(model)
        assert report["words"] == dev.identity.param_words and report["retries"] == 0
        assert report["bytes"] > report["words"] * P.PARAM_WORD_BYTES
        k = dev.identity.images_per_frame
        assert k == 16
        images = _images(seed, n)
        logits = dev.infer(images, progress=(n == 150))
        stats = dev.stats()
    assert logits.shape == (n, 10)
    np.testing.assert_array_equal(logits, golden.run(model, images))
    assert stats["retries"] == 0 and stats["images"] == n
    assert dm.executed["INFER"] == -(-n // k)        # 150: 10 frames, more than slots * k
    assert stats["bytes_sent"] > n * 64


def test_logits_come_from_the_loaded_parameters(net, seed):
    """Loading other weights of the same topology changes the device's logits (the device
    model decodes the words it received; it does not read the model's arrays)."""
    model, _ = net
    other = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    for layer in other.layers:
        if layer.op == "conv1x1":
            wmax = (1 << (model.weight_bits - 1)) - 1
            layer.weight = rng.integers(-wmax, wmax + 1, layer.weight.shape).astype(np.int8)
        if layer.op == "shift":
            layer.shifts = rng.integers(-1, 2, layer.shifts.shape).astype(np.int8)
    images = _images(seed, 40)
    want_other, want = golden.run(other, images), golden.run(model, images)
    assert (want_other != want).any()
    _, _, dev = _device(net)
    with dev:
        dev.load(other)
        np.testing.assert_array_equal(dev.infer(images), want_other)
        dev.load(model)
        np.testing.assert_array_equal(dev.infer(images), want)
        st = dev.status()
    assert st["flags"]["params_ready"] and st["words_loaded"] == dev.identity.param_words
    assert st["images_done"] == 80 and st["frames_dropped"] == 0


def test_status_and_reset(net, seed):
    model, _ = net
    _, _, dev = _device(net)
    with dev:
        dev.load(model)
        dev.infer(_images(seed, 3))
        before = dev.status()
        dev.reset()
        after = dev.status()
        with pytest.raises(DeviceError, match="PARAMS_INCOMPLETE"):
            dev.infer(_images(seed, 3))
    assert before["flags"]["params_ready"] and before["images_done"] == 3
    assert not after["flags"]["params_ready"] and after["words_loaded"] == 0
    assert after["images_done"] == 0 and after["cycles"] > before["cycles"]
    # As the gateware (test_link.py's RESET case): RESET clears the counters where it
    # executes and is not counted itself; the STATUS counts itself.
    assert after["frames_ok"] == 1 and after["frames_dropped"] == 0


def test_infer_before_load_is_refused(net, seed):
    dm, _, dev = _device(net)
    with dev:
        with pytest.raises(DeviceError) as e:
            dev.infer(_images(seed, 5))
    assert e.value.reason is R.PARAMS_INCOMPLETE and e.value.command is P.Command.INFER
    assert P.REASON_TEXT[R.PARAMS_INCOMPLETE] in str(e.value)
    assert "INFER" in str(e.value) and "images 0–4" in str(e.value)
    assert e.value.status == EXIT_LINK
    assert dm.drops == [R.PARAMS_INCOMPLETE]


# --- refusals before anything is sent --------------------------------------------------------

def test_other_topology_is_refused(net):
    model, _ = net
    _, _, dev = _device(net)
    other = copy.deepcopy(model)
    other.classes = other.classes[:7]
    other.layers[-1].weight = other.layers[-1].weight[:7]
    other.layers[-1].bias = other.layers[-1].bias[:7]
    diffs = P.topology_differences(P.topology(model), P.topology(other))
    assert diffs
    with dev:
        dev.identify()
        sent = dev.stats()["bytes_sent"]
        with pytest.raises(DesignMismatch) as e:
            dev.load(other)
        assert dev.stats()["bytes_sent"] == sent        # no LOAD_BEGIN went out
    assert "classes is 10 on the device, 7 in the model" in str(e.value)
    assert all(d in str(e.value) for d in diffs)
    assert e.value.status == EXIT_USAGE
    # A different network altogether: named layer by layer.
    with pytest.raises(DesignMismatch, match="on the device"):
        _device(net)[2].plan_for(_digits_like(derive_seed("test_device.other"), blocks=1))


def test_plan_difference_is_named(net):
    """Equal topology, but the device's plan is not what this planner builds from its config:
    the message says the plan differs and names the stage."""
    model, plan = net
    dm = DeviceModel(model, plan)
    dm.descriptor = copy.deepcopy(dm.descriptor)
    dm.descriptor["stages"][3][3] += 1
    dm.design_id = P.design_id(dm.descriptor)
    dm._blob = P.descriptor_blob(dm.descriptor)
    with Device(ModelPort(dm), timeout=0.5, url="loop://") as dev:
        with pytest.raises(DesignMismatch, match=r"plan differs.*stage 3"):
            dev.plan_for(model)


def test_config_travels_with_the_design(seed):
    """A device built with a non-default config: the driver rebuilds the same plan from the
    config in the descriptor (no config file on the host) and loads exactly."""
    model = _digits_like(seed)
    plan = plan_network(model, load_config(overrides={"max_multipliers": 40}))
    assert plan.stages != plan_network(model).stages
    port = ModelPort(DeviceModel(model, plan))
    with Device(port, timeout=0.5, url="loop://") as dev:
        assert [s.to_dict() for s in dev.plan_for(model).stages] == \
            [s.to_dict() for s in plan.stages]
        dev.load(model)
        images = _images(seed, 20)
        np.testing.assert_array_equal(dev.infer(images), golden.run(model, images))


def test_bad_images_refused_before_sending(net):
    _, _, dev = _device(net)
    with dev:
        dev.identify()
        sent = dev.stats()["bytes_sent"]
        with pytest.raises(ValueError, match=r"shape \[4, 8, 9, 1\].*\[N, 8, 8, 1\]"):
            dev.infer(np.zeros((4, 8, 9, 1), np.uint8))
        with pytest.raises(ValueError, match="shape"):
            dev.infer(np.zeros((4, 8, 8, 3), np.uint8))
        over = np.zeros((2, 8, 8, 1), np.int32)
        over[1, 3, 4, 0] = 256
        with pytest.raises(ValueError, match=r"\[0, 256\].*8-bit"):
            dev.infer(over)
        under = np.zeros((2, 8, 8, 1), np.int16)
        under[0, 0, 0, 0] = -1
        with pytest.raises(ValueError, match=r"\[-1, 0\]"):
            dev.infer(under)
        with pytest.raises(ValueError, match="integers"):
            dev.infer(np.zeros((2, 8, 8, 1), np.float32))
        assert dev.stats()["bytes_sent"] == sent
        # [N, H, W] is accepted for one channel.
        assert dev.infer(np.zeros((0, 8, 8), np.uint8)).shape == (0, 10)


# --- line faults: retries, exact logits ------------------------------------------------------

def test_dropped_and_corrupted_replies_are_retried(net, seed):
    model, _ = net
    dm, port, dev = _device(net, timeout=0.3, retries=5)
    rng, _ = make_rng(f"test_dropped_and_corrupted_replies_are_retried:{seed}")
    images = _images(seed, 200)
    with dev:
        dev.identify()
        # Faults during the load too: a damaged reply and a lost one (replies of 17 bytes).
        port.corrupt_reply_byte(after=40, mask=0x10)
        port.drop_reply_bytes(5, after=60)
        rep = dev.load(model)
        assert rep["retries"] >= 2
        # Reply faults at random places of the INFER replies (13 of 651 bytes).
        for _ in range(4):
            port.corrupt_reply_byte(after=rng.randrange(0, 8000), mask=1 << rng.randrange(8))
            port.drop_reply_bytes(rng.randrange(1, 30), after=rng.randrange(0, 8000))
        logits = dev.infer(images)
        stats = dev.stats()
    np.testing.assert_array_equal(logits, golden.run(model, images))
    assert stats["retries"] >= 6


def test_lost_reply_is_fetched_with_read_result(net, seed):
    """A whole INFER reply lost: the next reply shows it (the device answers in order), and
    the driver asks for the stored result instead of sending the images again."""
    model, _ = net
    dm, port, dev = _device(net, timeout=2.0)
    reply = P.FRAME_OVERHEAD + 1 + 16 * 10 * P.LOGIT_BYTES
    with dev:
        dev.load(model)
        dev.infer(_images(seed, 64))          # READ_RESULT is safe once `slots` results came
        assert dm.executed["INFER"] == 4
        port.drop_reply_bytes(reply, after=2 * reply)
        images = _images(seed + 1, 64)
        t0 = time.monotonic()
        logits = dev.infer(images)
        assert time.monotonic() - t0 < 0.5     # found lost at once, not after the timeout
        assert dev.stats()["retries"] == 1
    np.testing.assert_array_equal(logits, golden.run(model, images))
    assert dm.executed["READ_RESULT"] == 1 and dm.executed["INFER"] == 8


def test_read_result_never_returns_a_stale_result(net, seed):
    """The device still holds results of an earlier session under the seqs a new driver
    uses. The new driver's INFER seq 2 never arrives: READ_RESULT(2) would return the old
    session's logits for other images, so the driver must send the INFER again."""
    model, plan = net
    dm = DeviceModel(model, plan)
    old_images, images = _images(seed, 64), _images(seed + 1, 64)
    with Device(ModelPort(dm), timeout=2.0, url="loop://") as old:
        old.load(model)
        old._seq = 1                              # its INFERs use seqs 1..4
        old.infer(old_images)
    port = ModelPort(dm)
    with Device(port, timeout=2.0, url="loop://") as dev:
        dev.identify()                            # seq 0
        frame = P.FRAME_OVERHEAD + 16 * 64
        port.drop_request_bytes(frame, after=frame)          # INFER seq 2 is lost
        t0 = time.monotonic()
        logits = dev.infer(images)
        assert time.monotonic() - t0 < 0.5
    np.testing.assert_array_equal(logits, golden.run(model, images))
    assert dm.executed["READ_RESULT"] == 0


def test_corrupted_and_truncated_requests_are_retried(net, seed):
    """Request faults: the device drops the frame (PAYLOAD_CRC / HEADER_CRC / a swallowed
    frame / its watchdog); later LOAD_PARAMS frames then arrive out of order (PARAM_ORDER)
    and are sent again after the lost one."""
    model, _ = net
    dm, port, dev = _device(net, timeout=0.3, max_payload=256)    # many short frames
    images = _images(seed, 120)
    with dev:
        dev.identify()
        begin = P.FRAME_OVERHEAD + P.LOAD_BEGIN_LAYOUT.size // 8
        params = P.FRAME_OVERHEAD + 4 + dev.identity.words_per_frame * P.PARAM_WORD_BYTES
        port.corrupt_request_byte(after=begin + 100)              # LOAD_PARAMS payload
        port.corrupt_request_byte(after=begin + params + 4)       # a header byte (length)
        port.drop_request_bytes(3, after=begin + 2 * params + 500)   # a frame cut short
        dev.load(model)
        assert dev.status()["words_loaded"] == dev.identity.param_words
        port.corrupt_request_byte(after=300, mask=0x80)
        port.drop_request_bytes(1, after=3000)
        frames = -(-len(images) // 4)
        port.drop_request_bytes(20, after=len(images) * 64 + frames * P.FRAME_OVERHEAD - 30)
        # (the last frame: the device waits for bytes that never come, its watchdog fires)
        logits = dev.infer(images)
        stats = dev.stats()
    np.testing.assert_array_equal(logits, golden.run(model, images))
    assert {R.PAYLOAD_CRC, R.HEADER_CRC, R.PARAM_ORDER} <= set(dm.drops)
    assert stats["retries"] >= 5


def test_slow_device_is_waited_for(net, seed):
    """Replies 0.15 s late with a 0.5 s timeout: no retry, exact logits."""
    model, _ = net
    _, port, dev = _device(net, timeout=0.5)
    with dev:
        dev.load(model)
        port.delay = 0.15
        images = _images(seed, 70)
        logits = dev.infer(images)
        assert dev.stats()["retries"] == 0
    np.testing.assert_array_equal(logits, golden.run(model, images))


def test_silent_device_times_out_within_the_bound(net, seed):
    model, _ = net
    timeout, retries = 0.2, 2
    _, port, dev = _device(net, timeout=timeout, retries=retries)
    with dev:
        dev.load(model)
        port.silent = True
        t0 = time.monotonic()
        with pytest.raises(LinkTimeout) as e:
            dev.infer(_images(seed, 100))
        elapsed = time.monotonic() - t0
    bound = timeout * (retries + 1)
    assert bound * 0.9 <= elapsed < bound + 0.4, elapsed
    msg = str(e.value)
    assert "no reply to INFER seq" in msg and "(images 0–15)" in msg
    assert "loop://" in msg and f"within {timeout} s after {retries} retries" in msg
    assert "powered/serving" in msg
    assert e.value.status == EXIT_LINK and isinstance(e.value, LinkError)
    # Also for a single command, and before any identity is known.
    _, port, dev = _device(net, timeout=timeout, retries=0)
    port.silent = True
    t0 = time.monotonic()
    with dev, pytest.raises(LinkTimeout, match="no reply to IDENTIFY seq 0 from loop://"):
        dev.identify()
    assert time.monotonic() - t0 < timeout + 0.3


def test_device_that_keeps_damaging_frames_gives_up(net, seed):
    """Every request corrupted: bounded retries, then an error naming the reason."""
    _, port, dev = _device(net, timeout=0.3, retries=2)
    with dev:
        for k in range(3):
            port.corrupt_request_byte(after=8 + 11 * k)    # the CRC of each IDENTIFY (11 bytes)
        with pytest.raises(DeviceError, match=r"dropped by the device.*3 times.*CRC") as e:
            dev.identify()
    assert e.value.reason is R.PAYLOAD_CRC


def test_over_a_socket_url(net, seed):
    """The same driver through ``socket://`` (as it reaches ``shiftacc serve``): a TCP
    server thread bridges the socket to the device model."""
    import socket
    import threading
    model, plan = net
    dm = DeviceModel(model, plan)
    server = socket.create_server(("127.0.0.1", 0))
    port_no = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    return
                conn.sendall(dm.feed(data))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    images = _images(seed, 300)
    try:
        with Device.open(f"socket://127.0.0.1:{port_no}", timeout=1.0) as dev:
            dev.load(model)
            t0 = time.perf_counter()
            logits = dev.infer(images)
            wall = time.perf_counter() - t0
            stats = dev.stats()
    finally:
        server.close()
        thread.join(timeout=5)
    np.testing.assert_array_equal(logits, golden.run(model, images))
    assert stats["retries"] == 0
    print(f"socket://: {len(images) / wall:.0f} images/s, "
          f"{(stats['bytes_sent'] + stats['bytes_received']) / wall / 1e3:.0f} kB/s")


def test_open_failures_are_clear():
    with pytest.raises(LinkError, match=r"socket://127\.0\.0\.1:1.*shiftacc serve"):
        Device.open("socket://127.0.0.1:1", timeout=0.5)
    with pytest.raises(LinkError, match=r"/dev/ttyNOPE.*plugged in"):
        Device.open("/dev/ttyNOPE", timeout=0.5)


def test_open_loop_url_times_out():
    """Device.open over a bare loop:// (its own requests come back, no device): bounded."""
    t0 = time.monotonic()
    with Device.open("loop://", timeout=0.2, retries=1) as dev:
        with pytest.raises(LinkTimeout, match="no reply to IDENTIFY"):
            dev.identify()
    assert time.monotonic() - t0 < 0.2 * 2 + 0.4


# --- the device model against hand-made frames -----------------------------------------------

def _frame(cmd, seq, payload=b""):
    return P.encode_frame(cmd, seq, payload)


def test_device_model_drop_reasons(net):
    model, plan = net
    dm = DeviceModel(model, plan)
    C = P.Command
    good = _frame(C.IDENTIFY, 9)

    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0x40
    assert _replies(dm.feed(bad_crc)) == [(C.IDENTIFY.value | P.REPLY, 9, R.PAYLOAD_CRC)]

    bad_hdr = bytearray(_frame(C.STATUS, 33))
    bad_hdr[6] ^= 0x01                                     # the header CRC byte
    assert _replies(dm.feed(bad_hdr)) == [(P.NAK, 33, R.HEADER_CRC)]

    assert _replies(dm.feed(_frame(C.IDENTIFY, 1, b"x"))) == \
        [(C.IDENTIFY.value | P.REPLY, 1, R.BAD_LENGTH)]
    assert _replies(dm.feed(_frame(C.INFER, 2, bytes(63)))) == \
        [(C.INFER.value | P.REPLY, 2, R.BAD_LENGTH)]
    assert _replies(dm.feed(_frame(C.INFER, 3, bytes(64 * 17)))) == \
        [(C.INFER.value | P.REPLY, 3, R.BAD_LENGTH)]        # over max_payload (1024)
    assert _replies(dm.feed(_frame(C.LOAD_PARAMS, 4, bytes(4 + 9)))) == \
        [(C.LOAD_PARAMS.value | P.REPLY, 4, R.BAD_LENGTH)]
    # Unknown command is checked before the length.
    assert _replies(dm.feed(_frame(0x42, 5, bytes(2000)))) == [(0xC2, 5, R.UNKNOWN_COMMAND)]

    # Truncated frame + watchdog: TIMEOUT with the trusted seq; mid-header: a NAK.
    half = _frame(C.INFER, 6, bytes(64))[:30]
    assert dm.feed(half) == b"" and dm.in_frame
    assert _replies(dm.abandon()) == [(C.INFER.value | P.REPLY, 6, R.TIMEOUT)]
    assert dm.feed(_frame(C.STATUS, 7)[:4]) == b""
    assert _replies(dm.abandon()) == [(P.NAK, 7, R.TIMEOUT)]
    assert dm.abandon() == b""                              # nothing partial: no reply

    # Execution-time refusals.
    assert _replies(dm.feed(_frame(C.INFER, 8, bytes(64)))) == \
        [(C.INFER.value | P.REPLY, 8, R.PARAMS_INCOMPLETE)]
    word = P.param_word_bytes(dm.words[0])
    assert _replies(dm.feed(_frame(C.LOAD_PARAMS, 10, bytes(4) + word))) == \
        [(C.LOAD_PARAMS.value | P.REPLY, 10, R.NOT_LOADING)]
    begin = P.layout_bytes(P.LOAD_BEGIN_LAYOUT, {"design_id": dm.design_id ^ 1,
                                                  "words": len(dm.words)})
    assert _replies(dm.feed(_frame(C.LOAD_BEGIN, 11, begin))) == \
        [(C.LOAD_BEGIN.value | P.REPLY, 11, R.DESIGN_MISMATCH)]
    begin = P.layout_bytes(P.LOAD_BEGIN_LAYOUT, {"design_id": dm.design_id,
                                                  "words": len(dm.words) + 1})
    assert _replies(dm.feed(_frame(C.LOAD_BEGIN, 12, begin)))[0][2] is R.DESIGN_MISMATCH
    begin = P.layout_bytes(P.LOAD_BEGIN_LAYOUT, {"design_id": dm.design_id,
                                                  "words": len(dm.words)})
    assert _replies(dm.feed(_frame(C.LOAD_BEGIN, 13, begin)))[0][2] is R.OK
    bad_word = P.param_word_bytes(encode_word(200, ParamKind.WEIGHT, 0, 0, 1))
    assert _replies(dm.feed(_frame(C.LOAD_PARAMS, 14, bytes(4) + word + bad_word)))[0][2] \
        is R.PARAM_ADDRESS
    far = P.param_word_bytes(encode_word(*_first_address(dm), 0))
    assert _replies(dm.feed(_frame(C.LOAD_PARAMS, 15, bytes(4) + far)))[0][2] is R.OK
    ahead = P.layout_bytes(P.LOAD_PARAMS_PREFIX, {"offset": 5})
    assert _replies(dm.feed(_frame(C.LOAD_PARAMS, 16, ahead + word)))[0][2] is R.PARAM_ORDER
    # offset below the words loaded: acknowledged, not written again.
    assert _replies(dm.feed(_frame(C.LOAD_PARAMS, 17, bytes(4) + word)))[0][2] is R.OK
    assert len(dm._loaded) == 1
    assert _replies(dm.feed(_frame(C.READ_RESULT, 18, b"\x08")))[0][2] is R.NOT_FOUND

    # After all that, a valid frame (behind some noise with a false sync) is answered.
    reply = dm.feed(b"\x00\xa5\x5a\x01\xa5\x00\x00\x00" + good)
    frames = [ev for ev in P.FrameParser().feed(reply) if isinstance(ev, P.Frame)]
    assert [(f.command, f.payload[0]) for f in frames[:-1]] == [(P.NAK, R.HEADER_CRC.value)]
    assert frames[-1].command == C.IDENTIFY.value | P.REPLY and frames[-1].seq == 9
    assert frames[-1].payload[0] == 0
    assert frames[-1].payload[1:] == dm.identify_body()
    st = P.layout_from_bytes(P.STATUS_LAYOUT, _ok_body(dm.feed(_frame(C.STATUS, 19))))
    assert int(st.words_loaded) == 1 and int(st.flags.loading) == 1
    assert int(st.last_drop) == R.HEADER_CRC.value        # the false sync above


def _first_address(dm):
    layer, kind = min(dm.limits)
    return layer, ParamKind(kind), 0, 0


def _ok_body(raw):
    (fr,) = P.FrameParser().feed(raw)
    assert fr.payload[0] == 0
    return fr.payload[1:]


def test_device_model_pixel_range(net):
    """A 4-bit-input design: INFER with a pixel >= 16 is dropped with PIXEL_RANGE, and the
    driver refuses such images before sending."""
    model, _ = net
    m4 = copy.deepcopy(model)
    m4.input_bits = 4
    dm = DeviceModel(m4, plan_network(m4))
    img = bytes([3] * 63 + [16])
    assert _replies(dm.feed(_frame(P.Command.INFER, 1, img))) == \
        [(P.Command.INFER.value | P.REPLY, 1, R.PIXEL_RANGE)]
    with Device(ModelPort(dm), timeout=0.5, url="loop://") as dev:
        with pytest.raises(ValueError, match="4-bit"):
            dev.infer(np.full((1, 8, 8, 1), 16, np.uint8))
        dev.load(m4)
        images = _images(5, 30, bits=4)
        np.testing.assert_array_equal(dev.infer(images), golden.run(m4, images))


def test_device_model_survives_noise(net):
    """Random garbage interleaved with valid commands: no exception, every valid command that
    follows a frame boundary is answered, and the device never acts on garbage."""
    model, plan = net
    dm = DeviceModel(model, plan)
    rng, _ = make_rng("test_device_model_survives_noise")
    for i in range(300):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        if rng.random() < 0.3:
            noise = noise + P.SYNC + noise[:3]
        dm.feed(noise)
        dm.abandon()                                  # the watchdog ends any partial frame
        frames = [ev for ev in P.FrameParser().feed(dm.feed(_frame(P.Command.STATUS, i & 0xFF)))
                  if isinstance(ev, P.Frame)]
        assert frames and frames[-1].command == P.Command.STATUS.value | P.REPLY
        assert frames[-1].seq == i & 0xFF and frames[-1].payload[0] == 0
    assert dm.executed["INFER"] == dm.executed["LOAD_BEGIN"] == dm.executed["RESET"] == 0


def test_model_port_watchdog(net):
    """ModelPort abandons a frame that stopped arriving (the device's watchdog, in real time)."""
    model, plan = net
    dm = DeviceModel(model, plan)
    port = ModelPort(dm, timeout=0.05)
    port.write(_frame(P.Command.INFER, 77, bytes(64))[:20])
    time.sleep(dm.watchdog_seconds * 2)
    raw = port.read(64)
    assert _replies(raw) == [(P.Command.INFER.value | P.REPLY, 77, R.TIMEOUT)]
    port.close()


def test_protocol_error_on_a_reply_that_does_not_fit(net, seed):
    """A device that answers INFER with the wrong number of logits: retried, then refused."""
    model, plan = net

    class Short(DeviceModel):
        def _ok(self, frame, body=b""):
            if frame.command == P.Command.INFER.value:
                body = body[:-4]
            return super()._ok(frame, body)

    dm = Short(model, plan)
    with Device(ModelPort(dm), timeout=0.3, retries=1, url="loop://") as dev:
        dev.load(model)
        with pytest.raises(ProtocolError, match="logits"):
            dev.infer(_images(seed, 3))


def test_attention_network_through_the_driver(seed):
    """Version-2 layers over the link: the device model rebuilds every table, matrix and
    scalar from the words it received, and the logits are golden's; other values of the
    same topology give other (still golden) logits."""
    from shiftacc.models.netgen import ATTENTION_OPS
    model = _digits_like(seed, attention=ATTENTION_OPS)
    plan = plan_network(model)
    other = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    for layer in other.layers:
        if layer.lut is not None:
            layer.lut = rng.integers(0, 257, 256).astype(np.uint16)
        if layer.exp_lut is not None:
            layer.exp_lut = rng.integers(1, 65536, 256).astype(np.uint16)
        if layer.op == "spatial_attention":
            layer.bias, layer.z_m = layer.bias + 50, max(1, layer.z_m - 7)
    images = _images(seed, 40)
    want, want_other = golden.run(model, images), golden.run(other, images)
    assert (want != want_other).any()
    dm, port, dev = _device((model, plan))
    with dev:
        dev.load(other)
        np.testing.assert_array_equal(dev.infer(images), want_other)
        dev.load(model)
        np.testing.assert_array_equal(dev.infer(images), want)
