"""Compiler wrapper for Verilator's ``OBJCACHE`` hook: Verilator's runtime objects, compiled once.

Every Verilator build compiles the same runtime library again (``verilated.cpp``,
``verilated_vpi.cpp``, ``verilated_threads.cpp``, ``verilated_dpi.cpp`` and cocotb's
``verilator.cpp`` main: about 20 s of CPU here), with the same command line whatever the
design. ``verilated.mk`` puts ``$(OBJCACHE)`` in front of every compile, so
:func:`shiftacc.sim.runner._build` sets it to this script, which serves those objects from a
store folder in the simulator cache:

``python objcache.py STORE c++ ARGS... -c -o NAME.o /abs/path/SOURCE.cpp``

- only compiles of a ``.cpp`` outside the build folder are cached (the design's own C++
  changes with the design and goes through untouched);
- the key is the whole command line, the compiler executable and the source file (path, size
  and time: a reinstall of Verilator or cocotb changes it), so a different flag, trace
  setting or optimisation level is a different object;
- a hit copies the object (and its ``-MMD`` dependency file) into place; a miss compiles and
  then stores the result, written beside and renamed (never half-written; two builds racing
  store the same bytes).

Standard library only: it runs once per compile, so it starts fast and imports nothing of
shiftacc. It prints ``[objcache] hit NAME.o`` or ``[objcache] stored NAME.o`` into the
build log.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile


def _file_id(path):
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        return [real, st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path)]


def _cacheable(cmd):
    """``(output, dependency file)`` of a runtime-object compile, else None."""
    if "-c" not in cmd or "-o" not in cmd[:-1]:
        return None
    out, src = cmd[cmd.index("-o") + 1], cmd[-1]
    if not (src.endswith(".cpp") and out.endswith(".o") and os.path.isabs(src)):
        return None
    if os.path.dirname(os.path.realpath(src)) == os.path.realpath(os.getcwd()):
        return None
    return out, out[:-2] + ".d"


def _store(path, dest):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(dest))
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv):
    store, cmd = argv[0], argv[1:]
    target = _cacheable(cmd)
    if target is None:
        return subprocess.call(cmd)
    out, dep = target
    compiler = shutil.which(cmd[0]) or cmd[0]
    key = hashlib.sha256(json.dumps([cmd, _file_id(compiler),
                                     _file_id(cmd[-1])]).encode()).hexdigest()
    obj = os.path.join(store, f"{key[:24]}.o")
    if os.path.exists(obj):
        shutil.copyfile(obj, out)
        if os.path.exists(obj[:-2] + ".d"):
            shutil.copyfile(obj[:-2] + ".d", dep)
        print(f"[objcache] hit {os.path.basename(out)}", flush=True)
        return 0
    rc = subprocess.call(cmd)
    if rc == 0 and os.path.exists(out):
        try:
            os.makedirs(store, exist_ok=True)
            if os.path.exists(dep):
                _store(dep, obj[:-2] + ".d")
            _store(out, obj)
            print(f"[objcache] stored {os.path.basename(out)}", flush=True)
        except OSError as e:   # a full disk costs the shortcut, never the build
            print(f"[objcache] not stored: {e}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
