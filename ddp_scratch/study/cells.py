"""How numbers and text look in the tables of a scaling report: one format per column, plain
notation with 4 significant figures, markdown-safe text."""
from __future__ import annotations

import math

from .runfile import clean

NOISE_REL = 1e-9      # a std (or an 'other' time) below this fraction of the mean (step) is rounding noise


def mean_std(values):
    """(mean, sample std) of the known values (None where none is known; std 0 for one)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) * (v - m) for v in vals) / (len(vals) - 1))


def _plain(x, decimals) -> str:
    return f"{round(x, decimals):,.{max(0, decimals)}f}"


def fmt(mean, std=None, scale=1.0, sig=4) -> str:
    """`mean ± std` of one table cell: `sig` significant figures in plain notation with thousands
    separators (17,590 ± 720; 7.286 ± 0.302), the std to the mean's last digit but at least two
    significant figures of its own, and left out where it is 0 or rounding noise (below NOISE_REL
    of the mean). Scientific notation only outside 1e-6..1e15, where no real column lands."""
    if mean is None or not math.isfinite(mean * scale):
        return "—"
    m = mean * scale
    sd = abs(std * scale) if std is not None and math.isfinite(std * scale) else 0.0
    show = sd > NOISE_REL * abs(m) and sd > 0
    if m != 0 and not 1e-6 <= abs(m) < 1e15:
        return f"{m:.{sig - 1}e}" + (f" ± {sd:.1e}" if show else "")
    dec = sig - 1 - math.floor(math.log10(abs(m))) if m else 0
    if m and abs(round(m, dec)) >= 10 ** (sig - dec):      # 0.99995 rounds up to 1.000, not 1.0000
        dec -= 1
    text = _plain(m, dec)
    if not show:
        return text
    if not 1e-6 <= sd < 1e15:
        return f"{text} ± {sd:.1e}"
    return f"{text} ± {_plain(sd, max(dec, 1 - math.floor(math.log10(sd))))}"


def count(v) -> str:
    """A batch or a parameter count: 128, 0.5, 1,234,567."""
    return f"{v:,.0f}" if float(v).is_integer() else fmt(v)


def md(s) -> str:
    return clean(s, 200).replace("|", "\\|")


def nbytes(v) -> str:
    """A byte count in the unit that suits it: '68.92 kB', '0 B'; '—' for unknown."""
    if v is None:
        return "—"
    for f, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(v) >= f:
            return f"{fmt(v / f)} {unit}"
    return f"{v:,.0f} B"
