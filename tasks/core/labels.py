"""Class labels in natural order (``"2"`` before ``"10"``): the order of the plan, the generators, the judge and the
reports."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable


def natural_key(label: str) -> tuple[tuple[int | str, ...], str]:
    """Sort key putting numbers in labels in numeric order: ``"2" < "10"``, ``"class2" < "class10"``.

    Digit runs sit at the odd positions of the split, so tuples always compare int with int and str with str;
    the label itself breaks ties such as ``"01"`` / ``"1"``.
    """
    parts = re.split(r"(\d+)", label)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), label


# Letters of other scripts that look like Latin ones (a subset of Unicode's confusables, UTS #39), lower case: a
# label is compared case-folded. Cyrillic, then Greek.
_LOOKALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ӏ": "l", "ԛ": "q", "ԝ": "w",
    "һ": "h", "ь": "b", "ү": "y", "ɡ": "g",
    "α": "a", "β": "b", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "μ": "u", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
})


def label_key(label: str) -> str:
    """What a label looks like, for telling labels that would be confused apart: Unicode-normalized (NFKC: ``é``
    composed or not, full-width letters), case-folded (``Cat``/``cat`` are one folder on macOS and Windows
    file systems), invisible format characters dropped, and letters of other scripts that look Latin mapped to them
    (Cyrillic ``с`` in ``сat``)."""
    folded = unicodedata.normalize("NFKC", label).casefold()
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return unicodedata.normalize("NFKC", visible.translate(_LOOKALIKES))


def colliding_labels(labels: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of distinct labels with the same ``label_key`` (each pair once, in natural order): they would be one
    folder on a case-insensitive or normalizing file system, or look the same to a reader."""
    groups: dict[str, list[str]] = {}
    for label in sorted(set(labels), key=natural_key):
        groups.setdefault(label_key(label), []).append(label)
    return [(group[0], other) for group in groups.values() for other in group[1:]]
