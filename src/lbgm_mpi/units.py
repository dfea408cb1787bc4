"""How quantities read: byte counts in decimal units (as network rates are), short durations."""

FLOAT_BYTES = 4  # a float32 value, as every update, bank row and aggregate travels and is stored

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_bytes(n: float) -> str:
    """Byte count with three significant digits and a decimal unit, e.g. "1.23 MB"."""
    value, unit = float(n), 0
    while abs(float(f"{value:.3g}")) >= 1000 and unit < len(_UNITS) - 1:
        value, unit = value / 1000, unit + 1
    return f"{value:.3g} {_UNITS[unit]}"


def duration(seconds: float) -> str:
    """A short duration: "42s", "3m05s", "2h04m"."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
