"""The socket bridge of ``shiftacc serve`` on its own: an echo design behind the bulk windows.

Checks that bytes cross socket -> simulator -> socket without loss, duplication or
reordering, in bulk (cycles/s far above per-edge Python), across client reconnects, and that
the server stops when told (max_clients).
"""

import socket
import threading
import time

import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from shiftacc.hw.stream import to_verilog
from shiftacc.sim.bridge import BridgeHarness
from shiftacc.sim.serve import SERVE_TOPLEVEL, serve_design

DEADLINE = 120  # seconds for any one socket wait (the simulator build comes first)


class EchoTop(wiring.Component):
    """Stands in for the board top: every byte received is sent back."""

    def __init__(self):
        super().__init__({"rx": In(stream.Signature(8, always_ready=True)),
                          "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=4096)
        m.d.comb += [fifo.w_en.eq(self.rx.valid), fifo.w_data.eq(self.rx.payload)]
        wiring.connect(m, fifo.r_stream, wiring.flipped(self.tx))
        return m


def _serve_in_thread(text, clients, tmp_path):
    ready = threading.Event()
    box = {}

    def on_ready(host, port):
        box["addr"] = (host, port)
        ready.set()

    def target():
        try:
            serve_design(text, simulator="verilator", host="127.0.0.1", port=0,
                         step_cycles=128, watchdog_cycles=2000, max_clients=clients,
                         workdir=tmp_path / "serve", on_ready=on_ready, log=lambda *_: None)
        except BaseException as e:  # reported by the test
            box["error"] = e
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(600), "the echo server did not start listening within 600 s"
    assert "error" not in box, box.get("error")
    return thread, box


def _echo(addr, payload):
    with socket.create_connection(addr, timeout=DEADLINE) as s:
        got = bytearray()
        t0 = time.perf_counter()
        sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
        sender.start()
        while len(got) < len(payload):
            chunk = s.recv(65536)
            assert chunk, f"server closed after {len(got)} of {len(payload)} bytes"
            got += chunk
        sender.join(DEADLINE)
        return bytes(got), time.perf_counter() - t0


def test_echo_through_the_socket_bridge(tmp_path, rng, seed):
    text = to_verilog(BridgeHarness(EchoTop(), uart=False), name=SERVE_TOPLEVEL)
    thread, box = _serve_in_thread(text, 2, tmp_path)
    payload = bytes(rng.getrandbits(8) for _ in range(200_000))
    got, wall = _echo(box["addr"], payload)
    assert got == payload, f"seed {seed}: first difference at byte " \
        f"{next(i for i, (a, b) in enumerate(zip(got, payload)) if a != b)}"
    print(f"echo bridge: {len(payload)} bytes each way in {wall:.2f} s "
          f"({len(payload) / wall / 1e3:.0f} kB/s)")
    # A second client after a disconnect is served the same way.
    small = bytes(range(256)) * 4
    assert _echo(box["addr"], small)[0] == small
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the server did not stop after max_clients sessions"
    assert "error" not in box, box.get("error")


@pytest.fixture
def rng(seed):
    import random
    return random.Random(seed)
