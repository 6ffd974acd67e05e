"""Human formatting of raw numbers (used only when rendering; records keep plain numbers)."""

from __future__ import annotations


def _scaled(value: float, base: float, units: tuple) -> str:
    for unit in units[:-1]:
        if abs(value) < base:
            return f"{value:.3g} {unit}".strip()
        value /= base
    return f"{value:.3g} {units[-1]}"


def human_count(n: float) -> str:
    """1234567 -> '1.23 M'."""
    return _scaled(float(n), 1000.0, ("", "K", "M", "G", "T"))


def human_bytes(n: float) -> str:
    """Binary units: 1536 -> '1.5 KiB'."""
    return _scaled(float(n), 1024.0, ("B", "KiB", "MiB", "GiB", "TiB"))


def human_seconds(s: float) -> str:
    if s != s:  # NaN
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"
