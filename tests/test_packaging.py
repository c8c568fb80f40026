"""Packaging: one import name (``shiftacc.*``), nothing generic at the top of site-packages."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERIC = {"hw", "sw", "sim", "models", "boards", "tests", "benchmarks"}


def test_regular_install_has_one_top_level_name(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, timeout=300, cwd=tmp_path)
    top = {p.name for p in target.iterdir() if not p.name.endswith((".dist-info", "bin"))}
    assert top == {"shiftacc"}, f"site-packages got {sorted(top)}"
    assert (target / "shiftacc" / "hw" / "verilator_waivers.vlt").exists()
    assert (target / "shiftacc" / "hw" / "top.py").exists()
    # A user's own models.py / hw.py beside their script must not shadow ours.
    user = tmp_path / "project"
    user.mkdir()
    (user / "models.py").write_text("raise ImportError('the user module was imported')\n")
    (user / "hw.py").write_text("raise ImportError('the user module was imported')\n")
    code = ("import shiftacc.models.artifact, shiftacc.hw.plan, shiftacc.sim.resources as r; "
            "import sys; assert r.verilator_waivers().exists(); "
            "print(shiftacc.hw.plan.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=user, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target / "shiftacc")), out.stdout


def test_no_generic_top_level_names_importable_from_elsewhere(tmp_path):
    """The installed (editable) project exposes shiftacc only, not hw/models/... ."""
    code = ("import importlib.util as u; import shiftacc; "
            f"print([n for n in {sorted(GENERIC)!r} if u.find_spec(n) is not None])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
