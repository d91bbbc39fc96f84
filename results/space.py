"""Search-space dimensions back from an experiment's record (``experiment.json`` stores each
dimension's ``describe()`` text): "log-uniform[1e-05, 0.003]", "uniform[0, 0.3]",
"{2, 4, 8}", "fixed 3"."""
from __future__ import annotations

import re

from spaces.dims import Choice, Fixed, LogUniform, Uniform

_RANGE = re.compile(r"^(log-uniform|uniform)\[([^,]+),\s*([^\]]+)\]$")


def _value(text: str):
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def parse_dim(text: str):
    m = _RANGE.match(text.strip())
    if m:
        kind = LogUniform if m.group(1) == "log-uniform" else Uniform
        return kind(float(m.group(2)), float(m.group(3)))
    if text.startswith("{") and text.endswith("}"):
        return Choice(tuple(_value(v) for v in text[1:-1].split(",")))
    if text.startswith("fixed "):
        return Fixed(_value(text[len("fixed "):]))
    raise ValueError(f"unknown dimension {text!r}")


def parse_space(described: dict) -> dict:
    """{name: describe() text} -> {name: dimension}; unknown texts are left out."""
    out = {}
    for name, text in (described or {}).items():
        try:
            out[name] = parse_dim(str(text))
        except ValueError:
            continue
    return out


def swept(space: dict) -> dict:
    """The dimensions that vary (ranges, and choices of more than one value)."""
    return {k: v for k, v in space.items()
            if not isinstance(v, Fixed) and not (isinstance(v, Choice) and len(v.values) < 2)}
