"""PLL parameter calculators (iCE40 ``SB_PLL40_*``, ECP5 ``EHXPLLL``): computed, never typed.

Each calculator searches every divider setting inside the datasheet ranges (the same ranges
IceStorm's ``icepll`` and Trellis' ``ecppll`` use) and returns the setting whose output is
closest to the target, with the frequency it actually achieves. That achieved frequency is
what the board top's ``sync`` clock runs at, what the link engine's IDENTIFY reports as
``clock_hz`` and what the UART divides.

Pure Python, no Amaranth: the CLI and the tests import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PLLError", "PLLConfig", "ICE40_LIMITS", "ECP5_LIMITS", "ice40_pll", "ecp5_pll",
           "ice40_filter_range", "check_ice40", "check_ecp5", "pll_for_family"]


class PLLError(ValueError):
    """No legal divider setting reaches the requested frequency (closely enough)."""


@dataclass(frozen=True)
class PLLConfig:
    """One computed PLL setting.

    Attributes
    ----------
    family : str
        ``"ice40"`` or ``"ecp5"``.
    f_in_hz, f_target_hz, f_out_hz : float
        Reference, requested and achieved output frequency (Hz).
    f_vco_hz, f_pfd_hz : float
        VCO and phase-detector frequency of this setting.
    params : dict
        The primitive's parameters (names as the primitive spells them).
    """

    family: str
    f_in_hz: float
    f_target_hz: float
    f_out_hz: float
    f_vco_hz: float
    f_pfd_hz: float
    params: dict = field(default_factory=dict)

    @property
    def error_ppm(self):
        return (self.f_out_hz - self.f_target_hz) / self.f_target_hz * 1e6

    def to_dict(self):
        return {"family": self.family, "f_in_hz": self.f_in_hz,
                "f_target_hz": self.f_target_hz, "f_out_hz": self.f_out_hz,
                "f_vco_hz": self.f_vco_hz, "f_pfd_hz": self.f_pfd_hz,
                "error_ppm": round(self.error_ppm, 3), "params": dict(self.params)}


#: iCE40 SB_PLL40 (SIMPLE feedback) limits, iCE40 sysCLOCK PLL design guide (TN1251) / icepll.
ICE40_LIMITS = {
    "f_in": (10e6, 133e6), "f_pfd": (10e6, 133e6), "f_vco": (533e6, 1066e6),
    "f_out": (16e6, 275e6), "DIVR": (0, 15), "DIVF": (0, 127), "DIVQ": (1, 6),
}

#: ECP5 EHXPLLL limits (FPGA-TN-02200 sysCLOCK guide / ecppll), feedback from CLKOP.
ECP5_LIMITS = {
    "f_in": (8e6, 400e6), "f_pfd": (3.125e6, 400e6), "f_vco": (400e6, 800e6),
    "f_out": (10e6, 400e6), "CLKI_DIV": (1, 128), "CLKFB_DIV": (1, 80), "CLKOP_DIV": (1, 128),
}

#: Relative error accepted by default: 0.5 %. A UART tolerates a few percent, but the
#: figure a user asked for should not silently become another one.
DEFAULT_TOLERANCE = 0.005


def ice40_filter_range(f_pfd_hz):
    """The loop filter setting (FILTER_RANGE) of a phase-detector frequency (as icepll)."""
    mhz = f_pfd_hz / 1e6
    for limit, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if mhz < limit:
            return value
    return 6


def _within(value, rng):
    return rng[0] <= value <= rng[1]


def _pick(candidates, f_target, tolerance, what):
    if not candidates:
        raise PLLError(f"{what}: no legal PLL setting")
    best = min(candidates, key=lambda c: c[0])
    if best[0] / f_target > tolerance:
        raise PLLError(f"{what}: the closest legal PLL output is {best[1].f_out_hz / 1e6:.4f} "
                       f"MHz ({best[0] / f_target * 100:.2f} % off)")
    return best[1]


def _check_io(family, lim, f_in_hz, f_target_hz):
    """Refuse an input or target frequency outside the PLL's ranges; returns the phrase
    that names this request in error messages."""
    what = f"{family} PLL {f_in_hz / 1e6:g} MHz -> {f_target_hz / 1e6:g} MHz"
    for f, key, side in ((f_in_hz, "f_in", "input"), (f_target_hz, "f_out", "output")):
        if not _within(f, lim[key]):
            raise PLLError(f"{what}: {side} outside {lim[key][0] / 1e6:g}.."
                           f"{lim[key][1] / 1e6:g} MHz")
    return what


def ice40_pll(f_in_hz, f_target_hz, *, tolerance=DEFAULT_TOLERANCE):
    """The SB_PLL40 (SIMPLE feedback) setting closest to ``f_target_hz``.

    ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)``; among equally close settings the
    one with the highest phase-detector frequency (least jitter) wins.

    Raises
    ------
    PLLError
        Input or target outside the PLL's ranges, or nothing within ``tolerance``.
    """
    lim = ICE40_LIMITS
    what = _check_io("iCE40", lim, f_in_hz, f_target_hz)
    cands = []
    for divr in range(lim["DIVR"][0], lim["DIVR"][1] + 1):
        pfd = f_in_hz / (divr + 1)
        if not _within(pfd, lim["f_pfd"]):
            continue
        for divf in range(lim["DIVF"][0], lim["DIVF"][1] + 1):
            vco = pfd * (divf + 1)
            if not _within(vco, lim["f_vco"]):
                continue
            for divq in range(lim["DIVQ"][0], lim["DIVQ"][1] + 1):
                out = vco / (1 << divq)
                if not _within(out, lim["f_out"]):
                    continue
                cfg = PLLConfig("ice40", f_in_hz, f_target_hz, out, vco, pfd,
                                {"FEEDBACK_PATH": "SIMPLE", "DIVR": divr, "DIVF": divf,
                                 "DIVQ": divq, "FILTER_RANGE": ice40_filter_range(pfd)})
                cands.append(((abs(out - f_target_hz), -pfd, divf), cfg))
    best = min(cands, key=lambda kc: kc[0]) if cands else None
    return _pick([] if best is None else [(best[0][0], best[1])], f_target_hz, tolerance, what)


def ecp5_pll(f_in_hz, f_target_hz, *, tolerance=DEFAULT_TOLERANCE):
    """The EHXPLLL setting (feedback from CLKOP) closest to ``f_target_hz``.

    ``f_out = f_in * CLKFB_DIV / CLKI_DIV``, ``f_vco = f_out * CLKOP_DIV`` (400..800 MHz);
    ``CLKOP_CPHASE = CLKOP_DIV - 1`` (zero phase, as ecppll). Among equally close settings
    the one whose VCO is nearest 600 MHz (mid range), then the smallest dividers, wins.

    Raises
    ------
    PLLError
    """
    lim = ECP5_LIMITS
    what = _check_io("ECP5", lim, f_in_hz, f_target_hz)
    best = None
    for clki in range(lim["CLKI_DIV"][0], lim["CLKI_DIV"][1] + 1):
        pfd = f_in_hz / clki
        if not _within(pfd, lim["f_pfd"]):
            continue
        for clkfb in range(lim["CLKFB_DIV"][0], lim["CLKFB_DIV"][1] + 1):
            out = pfd * clkfb
            if not _within(out, lim["f_out"]):
                continue
            for clkop in range(lim["CLKOP_DIV"][0], lim["CLKOP_DIV"][1] + 1):
                vco = out * clkop
                if not _within(vco, lim["f_vco"]):
                    continue
                key = (abs(out - f_target_hz), abs(vco - 600e6), clki + clkfb + clkop)
                if best is None or key < best[0]:
                    best = (key, PLLConfig(
                        "ecp5", f_in_hz, f_target_hz, out, vco, pfd,
                        {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop,
                         "CLKOP_CPHASE": clkop - 1, "CLKOP_FPHASE": 0,
                         "FEEDBK_PATH": "CLKOP"}))
    return _pick([] if best is None else [(best[0][0], best[1])], f_target_hz, tolerance, what)


def check_ice40(cfg):
    """Raise AssertionError unless ``cfg`` is a legal SB_PLL40 setting producing its f_out."""
    lim, p = ICE40_LIMITS, cfg.params
    for name in ("DIVR", "DIVF", "DIVQ"):
        assert _within(p[name], lim[name]), (name, p[name])
    pfd = cfg.f_in_hz / (p["DIVR"] + 1)
    vco = pfd * (p["DIVF"] + 1)
    out = vco / (1 << p["DIVQ"])
    assert _within(cfg.f_in_hz, lim["f_in"]) and _within(pfd, lim["f_pfd"])
    assert _within(vco, lim["f_vco"]) and _within(out, lim["f_out"])
    assert abs(out - cfg.f_out_hz) < 1e-3 and p["FILTER_RANGE"] == ice40_filter_range(pfd)
    return True


def check_ecp5(cfg):
    """Raise AssertionError unless ``cfg`` is a legal EHXPLLL setting producing its f_out."""
    lim, p = ECP5_LIMITS, cfg.params
    for name in ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV"):
        assert _within(p[name], lim[name]), (name, p[name])
    pfd = cfg.f_in_hz / p["CLKI_DIV"]
    out = pfd * p["CLKFB_DIV"]
    vco = out * p["CLKOP_DIV"]
    assert _within(cfg.f_in_hz, lim["f_in"]) and _within(pfd, lim["f_pfd"])
    assert _within(vco, lim["f_vco"]) and _within(out, lim["f_out"])
    assert abs(out - cfg.f_out_hz) < 1e-3 and p["CLKOP_CPHASE"] == p["CLKOP_DIV"] - 1
    return True


def pll_for_family(family, f_in_hz, f_target_hz, **kw):
    """The PLL setting for ``family`` (``ice40``/``ecp5``); None when the target equals the
    oscillator (no PLL needed).

    Raises
    ------
    PLLError
        No PLL calculator for the family (the target must then equal the oscillator), or no
        legal setting.
    """
    if abs(f_target_hz - f_in_hz) < 1:
        return None
    if family == "ice40":
        return ice40_pll(f_in_hz, f_target_hz, **kw)
    if family == "ecp5":
        return ecp5_pll(f_in_hz, f_target_hz, **kw)
    raise PLLError(f"no PLL generator for {family} boards: the design runs at the board "
                   f"oscillator ({f_in_hz / 1e6:g} MHz); choose that frequency")
