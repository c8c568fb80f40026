"""The whole host link end to end: ``shiftacc serve`` (a real subprocess, Verilator) and
``shiftacc run`` / :class:`Device` over ``socket://``.

One tiny network, two simulator builds (byte streams, and the real UART PHY under
``--uart``). Checks: exact logits against the golden model; a client that sends garbage and
disconnects mid-frame does not disturb the next one; noise frames between valid requests are
dropped with reason codes and the results stay exact; a model of another topology is refused
naming the difference; a device that never answers fails within its timeout; the server
stops cleanly on SIGTERM/SIGINT.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from shiftacc.models import golden
from shiftacc.models.artifact import save_artifact
from shiftacc.models.netgen import random_model
from shiftacc.sw import protocol as P
from shiftacc.sw.cli import main
from shiftacc.sw.device import Device

START_DEADLINE = 900  # seconds for a server to build and listen (a cold Verilator build)


class Server:
    """``shiftacc serve`` in a subprocess; stopped (and checked) at the end."""

    def __init__(self, model_path, extra, log_path):
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "shiftacc", "serve", str(model_path), "--port", "0",
               "-q", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True)
        self.url = None
        box = {}

        def read_first_line():
            box["line"] = self.proc.stdout.readline()

        t = threading.Thread(target=read_first_line, daemon=True)
        t.start()
        t.join(START_DEADLINE)
        line = box.get("line", "")
        m = re.search(r"socket://[0-9.]+:\d+", line)
        if not m:
            self.stop()
            raise AssertionError(f"serve did not announce its socket within "
                                 f"{START_DEADLINE} s: {line!r}; log {log_path}:\n"
                                 f"{open(log_path).read()[-3000:]}")
        self.url = m.group(0)
        self.addr = tuple(self.url[len("socket://"):].rsplit(":", 1))
        self.addr = (self.addr[0], int(self.addr[1]))

    def stop(self, sig=signal.SIGTERM):
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
                    raise AssertionError("serve did not stop within 30 s of a signal")
            return self.proc.returncode
        finally:
            self.proc.stdout.close()
            self.log.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    rng = np.random.default_rng(20261122)
    d = tmp_path_factory.mktemp("link")
    model = save_artifact(d / "tiny.npz", random_model(rng, size=(5, 4), blocks=1, max_width=5))
    images = rng.integers(0, 1 << model.input_bits, size=(40, *model.input_shape),
                          dtype=np.uint8)
    np.save(d / "images.npy", images)
    return model, d


@pytest.fixture(scope="module")
def server(tiny):
    model, d = tiny
    srv = Server(d / "tiny.npz", [], d / "serve.log")
    yield srv
    status = srv.stop(signal.SIGINT)
    assert status == 130, f"serve exited {status} on Ctrl-C (expected 130)"


def _run_cli(args, capsys):
    status = main(args)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_run_is_exact_over_the_socket(tiny, server, capsys, tmp_path):
    model, d = tiny
    out = tmp_path / "run.json"
    status, stdout, err = _run_cli(["run", str(d / "tiny.npz"), "--port", server.url,
                                    "--images", str(d / "images.npy"), "--json", str(out),
                                    "-q"], capsys)
    assert status == 0, err
    res = json.loads(out.read_text())
    expected = golden.run(model, np.load(d / "images.npy"))
    assert np.array_equal(np.array(res["logits"]), expected)
    assert res["golden_mismatches"] == 0
    assert res["design_id"] == f"{P.design_id(P.descriptor(model, _plan(model))):016x}"
    for key in ("images_per_second", "link_bytes", "link_seconds", "retries"):
        assert key in res
    print(f"socket run: {res['images']} images, {res['images_per_second']:.1f} images/s")


def _plan(model):
    from shiftacc.hw.plan import load_config, plan_network
    return plan_network(model, load_config(None))


def test_garbage_client_then_exact_run(tiny, server, capsys, seed):
    model, d = tiny
    rng = random.Random(seed)
    with socket.create_connection(server.addr, timeout=30) as s:
        s.sendall(bytes(rng.getrandbits(8) for _ in range(3000)))
        # A valid frame cut in half: the device is mid-frame when the client vanishes.
        frame = P.encode_frame(P.Command.INFER, 9, bytes(model.input_shape[0] * 40))
        s.sendall(frame[:len(frame) // 2])
    images = np.load(d / "images.npy")[:12]
    with Device.open(server.url, timeout=10.0) as dev:
        dev.load(model)
        logits = dev.infer(images)
    assert np.array_equal(np.asarray(logits), golden.run(model, images))


def test_noise_between_valid_frames_is_dropped_with_reasons(tiny, server, seed):
    """Corrupted, truncated and random frames on the same connection as valid requests:
    every noise frame is dropped (STATUS counts it), valid requests are answered exactly."""
    model, d = tiny
    rng = random.Random(seed)
    images = np.load(d / "images.npy")
    with Device.open(server.url, timeout=10.0) as dev:
        dev.load(model)
        before = dev.status()
        sent_noise = 0
        for k in range(0, 40, 8):
            junk = bytearray(P.encode_frame(P.Command.INFER, 200, images[k].tobytes()))
            junk[rng.randrange(7, len(junk))] ^= 1 << rng.randrange(8)  # payload/CRC bit
            dev.port.write(bytes(junk) + bytes(rng.getrandbits(8) for _ in range(50)))
            sent_noise += 1
            got = dev.infer(images[k:k + 8])
            assert np.array_equal(np.asarray(got), golden.run(model, images[k:k + 8]))
        after = dev.status()
    assert after["frames_dropped"] - before["frames_dropped"] >= sent_noise
    print(f"noise: {sent_noise} corrupted frames dropped "
          f"({after['frames_dropped'] - before['frames_dropped']} drops in all), "
          f"last reason {after['last_drop']}")


def test_other_topology_is_refused_naming_the_difference(tiny, server, capsys, tmp_path):
    rng = np.random.default_rng(7)
    other = save_artifact(tmp_path / "other.npz",
                          random_model(rng, size=(5, 4), blocks=2, max_width=6))
    status, _, err = _run_cli(["run", str(tmp_path / "other.npz"), "--port", server.url,
                               "--images", str(tiny[1] / "images.npy"), "-q"], capsys)
    assert status == 2, err
    assert "layer" in err and "device" in err and "model" in err, err
    del other


def test_silent_device_fails_within_its_timeout(tiny, capsys):
    """A device that accepts bytes and never answers: the run fails, in bounded time,
    saying what it waited for."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def swallow():
        conn, _ = listener.accept()
        conn.settimeout(0.2)
        while not stop.is_set():
            try:
                if not conn.recv(4096):
                    break
            except socket.timeout:
                continue
        conn.close()

    t = threading.Thread(target=swallow, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        status, _, err = _run_cli(["run", str(tiny[1] / "tiny.npz"), "--port",
                                   f"socket://127.0.0.1:{port}", "--images",
                                   str(tiny[1] / "images.npy"), "--timeout", "0.5",
                                   "--retries", "2", "-q"], capsys)
    finally:
        stop.set()
        listener.close()
    wall = time.perf_counter() - t0
    assert status == 5, err
    assert "IDENTIFY" in err and "0.5" in err, err
    assert wall < 0.5 * 3 + 5, f"took {wall:.1f} s to give up"


def test_uart_link_is_exact(tiny, capsys, tmp_path):
    """The same through the real UART PHY on both ends of a simulated line (4 clocks/bit)."""
    model, d = tiny
    srv = Server(d / "tiny.npz", ["--uart", "--baud", "3000000", "--clock-hz", "12000000"],
                 tmp_path / "serve-uart.log")
    try:
        out = tmp_path / "run.json"
        status, _, err = _run_cli(["run", str(d / "tiny.npz"), "--port", srv.url, "--images",
                                   str(d / "images.npy"), "--json", str(out), "-q"], capsys)
        assert status == 0, err
        res = json.loads(out.read_text())
        assert res["golden_mismatches"] == 0
        assert res["baud"] == 3_000_000
        print(f"uart run: link efficiency {res['link_efficiency']:.3f}, "
              f"{res['images_per_second']:.1f} images/s (simulated)")
    finally:
        assert srv.stop() == 143


def test_icarus_serves_the_same_board(tiny, capsys, tmp_path):
    """``--simulator icarus``: the same board top, bridge and driver, exact logits; the
    server stops by itself after its one client (``--max-clients 1``, exit 0)."""
    model, d = tiny
    srv = Server(d / "tiny.npz", ["--simulator", "icarus", "--max-clients", "1"],
                 tmp_path / "serve-icarus.log")
    try:
        out = tmp_path / "run.json"
        status, _, err = _run_cli(["run", str(d / "tiny.npz"), "--port", srv.url, "--images",
                                   str(d / "images.npy"), "--limit", "10", "--timeout", "30",
                                   "--json", str(out), "-q"], capsys)
        assert status == 0, err
        res = json.loads(out.read_text())
        assert res["golden_mismatches"] == 0 and res["images"] == 10
        # The deadline allows for Icarus on a loaded 2-core machine (its shutdown has been seen
        # near 120 s there while other simulations ran), yet still fails a server that stays up.
        assert srv.proc.wait(300) == 0, "serve --max-clients 1 did not stop after its client"
    finally:
        srv.stop()
