"""cocotb testbench behind ``shiftacc serve``: the simulated board on a TCP socket.

Runs inside the simulator (started by :mod:`shiftacc.sim.serve`). It listens on the job's
host and port, accepts one client at a time, and moves bytes between the socket and the
design's bulk windows (:class:`shiftacc.sim.bridge.BridgeHarness`): Python wakes every
``step`` cycles, not on every edge, so the simulator runs at full speed in between.

Simulated time only passes while there is work: while bytes are queued, on the wire or
coming back, and for ``idle_cycles`` after the last one (long enough for any command to
finish and for the device watchdog to abandon a partial frame). After that the simulation
waits on the socket without simulating, so an idle server uses no CPU. When a client
disconnects, ``watchdog_cycles`` more cycles are simulated before the next one is accepted:
the time a real board would see pass between two sessions, so a frame the old client left
half-sent cannot swallow the new client's first frame.

The job's ``stall_level`` and ``stall_seed`` set the harness's stall generator before reset
(:class:`shiftacc.sim.bridge.BridgeHarness`); the probes of the accelerator's ports are cleared
when a client connects and written, with the byte counts, to the job's ``stats`` file when it
disconnects (one entry per session).
"""

import json
import os
import select
import socket
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer
from cocotb.utils import get_sim_time

from .bridge import PROBES, WINDOW

CLOCK_NS = 10
#: Bytes read from the socket ahead of the design at most (TCP flow control does the rest).
MAX_PENDING = 1 << 16
#: Seconds a reply may wait for a client that does not read before that client is dropped.
SEND_TIMEOUT = 30.0


class BridgeServer:
    """Owns the clock, reset, the listening socket and the byte pump of one serve run."""

    def __init__(self, dut):
        self.dut = dut
        self.job = json.loads(Path(os.environ["SHIFTACC_JOB"]).read_text())
        self.step = int(self.job["step_cycles"])
        self.idle_cycles = int(self.job["idle_cycles"])
        self.gap_cycles = int(self.job["watchdog_cycles"]) + 1000
        self.in_toggle = 0
        self.out_ack = 0
        self.stats = {"clients": 0, "bytes_in": 0, "bytes_out": 0, "sessions": [],
                      "stall_level": int(self.job.get("stall_level") or 0),
                      "stall_seed": int(self.job.get("stall_seed") or 0)}

    def cycles(self):
        return int(get_sim_time("ns")) // CLOCK_NS

    async def start(self):
        d = self.dut
        cocotb.start_soon(Clock(d.clk, CLOCK_NS, unit="ns").start())
        for sig in (d.in_data, d.in_count, d.in_toggle, d.out_ack, d.probe_clear):
            sig.value = 0
        # Taken by the stall generator in the first cycle after reset.
        d.stall_level.value = self.stats["stall_level"]
        d.stall_seed.value = self.stats["stall_seed"] & 0xFFFFFFFF
        d.rst.value = 1
        await ClockCycles(d.clk, 3)
        d.rst.value = 0
        # From here on every wake-up lands on a falling edge (Timer steps of whole periods):
        # reads see the state after the last rising edge, writes are in place before the next.
        await FallingEdge(d.clk)

    def listen(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.job["host"], int(self.job["port"])))
        sock.listen(1)
        port = sock.getsockname()[1]
        ready = Path(self.job["ready"])
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": self.job["host"], "port": port, "pid": os.getpid()}))
        os.replace(tmp, ready)
        self.dut._log.info(f"listening on {self.job['host']}:{port}")
        return sock

    def _push(self, pending):
        """Move up to one window of ``pending`` into the design; returns the bytes moved."""
        d = self.dut
        if not pending or not int(d.in_ready.value):
            return 0
        n = min(WINDOW, len(pending))
        d.in_data.value = int.from_bytes(bytes(pending[:n]), "little")
        d.in_count.value = n
        self.in_toggle ^= 1
        d.in_toggle.value = self.in_toggle
        del pending[:n]
        return n

    def _pull(self):
        """Take the bytes waiting in the output window."""
        d = self.dut
        n = int(d.out_count.value)
        if not n:
            return b""
        data = int(d.out_data.value).to_bytes(WINDOW, "little")[:n]
        self.out_ack ^= 1
        d.out_ack.value = self.out_ack
        return data

    def _busy(self):
        d = self.dut
        return bool(int(d.rx_level.value) or int(d.tx_level.value) or int(d.line_active.value))

    async def session(self, conn):
        """Serve one client until it disconnects."""
        pending = bytearray()
        last_activity = self.cycles()
        open_ = True
        while open_ or pending:
            if open_ and len(pending) < MAX_PENDING:
                try:
                    data = conn.recv(MAX_PENDING)
                    if data:
                        pending += data
                        self.stats["bytes_in"] += len(data)
                    else:
                        open_ = False
                except BlockingIOError:
                    pass
                except OSError:
                    open_ = False
            moved = self._push(pending)
            out = self._pull()
            if out:
                self.stats["bytes_out"] += len(out)
                if open_:
                    # A client that stops reading is dropped after SEND_TIMEOUT, never
                    # waited on for good (socket.timeout is an OSError).
                    try:
                        conn.settimeout(SEND_TIMEOUT)
                        conn.sendall(out)
                    except OSError:
                        self.dut._log.warning("client stopped reading; dropping it")
                        open_ = False
                    finally:
                        conn.setblocking(False)
            now = self.cycles()
            if moved or out or pending or self._busy():
                last_activity = now
            if now - last_activity > self.idle_cycles and not pending:
                if not open_:
                    break
                # Nothing in flight: wait for the client without simulating.
                select.select([conn], [], [], 0.5)
                continue
            await Timer(self.step * CLOCK_NS, unit="ns")

    async def run(self):
        listener = self.listen()
        max_clients = self.job.get("max_clients")
        while max_clients is None or self.stats["clients"] < max_clients:
            readable, _, _ = select.select([listener], [], [], 1.0)
            if not readable:
                continue
            conn, addr = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setblocking(False)
            self.stats["clients"] += 1
            self.dut._log.info(f"client {addr[0]}:{addr[1]} connected")
            await self._clear_probes()
            t0, c0 = time.perf_counter(), self.cycles()
            await self.session(conn)
            conn.close()
            wall, cyc = time.perf_counter() - t0, self.cycles() - c0
            self.stats["sessions"].append({"cycles": cyc, "wall_seconds": wall,
                                           **self._probes()})
            self.dut._log.info(f"client disconnected after {wall:.1f} s, {cyc} cycles "
                               f"({cyc / max(wall, 1e-9):,.0f} cycles/s)")
            self._write_stats()
            # The time a board sees pass between two sessions (see the module docstring).
            await Timer(self.gap_cycles * CLOCK_NS, unit="ns")
            for _ in range(4):  # drain whatever the device said into the void meanwhile
                self._pull()
                await Timer(self.step * CLOCK_NS, unit="ns")
        listener.close()

    async def _clear_probes(self):
        """Pulse ``probe_clear`` for one cycle (from a falling edge to the next)."""
        self.dut.probe_clear.value = 1
        await Timer(CLOCK_NS, unit="ns")
        self.dut.probe_clear.value = 0

    def _probes(self):
        return {name: int(getattr(self.dut, name).value) for name, _ in PROBES}

    def _write_stats(self):
        path = self.job.get("stats")
        if path:
            Path(path).write_text(json.dumps({**self.stats, "cycles": self.cycles()}))


@cocotb.test()
async def serve(dut):
    """Serve the simulated board on a TCP socket until stopped (or ``max_clients``)."""
    server = BridgeServer(dut)
    await server.start()
    await server.run()
