"""Class labels in natural order (``"2"`` before ``"10"``): the order of the plan, the generators, the judge and the
reports."""

from __future__ import annotations

import re


def natural_key(label: str) -> tuple[tuple[int | str, ...], str]:
    """Sort key putting numbers in labels in numeric order: ``"2" < "10"``, ``"class2" < "class10"``.

    Digit runs sit at the odd positions of the split, so tuples always compare int with int and str with str;
    the label itself breaks ties such as ``"01"`` / ``"1"``.
    """
    parts = re.split(r"(\d+)", label)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), label
