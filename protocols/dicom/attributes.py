"""Read DICOM attributes defensively: a missing or malformed value raises one error type that names the
attribute, what was expected and what was found, so readers can turn it into a finding with the file.
"""

from __future__ import annotations

import struct

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError

# What a malformed file can raise from inside pydicom or numpy while its values are read.
MALFORMED = (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError,
             EOFError, OSError, NotImplementedError, RuntimeError, ArithmeticError, struct.error,
             BytesLengthException)


class AttributeProblem(ValueError):
    """A required DICOM attribute is missing or malformed."""


def _value(ds: Dataset, keyword: str):
    try:
        value = ds.get(keyword)
    except MALFORMED as exc:
        raise AttributeProblem(f"{keyword} cannot be decoded ({exc})") from exc
    if value is None or (hasattr(value, "__len__") and not isinstance(value, str | bytes) and len(value) == 0):
        return None
    return value


def has(ds: Dataset, keyword: str) -> bool:
    """Whether the attribute is present with a non-empty value."""
    try:
        value = _value(ds, keyword)
    except AttributeProblem:
        return False
    return value is not None and value != ""


def floats(ds: Dataset, keyword: str, count: int | None = None) -> np.ndarray:
    """A numeric (multi-)value as finite float64; ``count`` values exactly, when given."""
    value = _value(ds, keyword)
    if value is None or value == "":
        raise AttributeProblem(f"{keyword} is missing")
    items = [value] if isinstance(value, str | bytes) or not hasattr(value, "__iter__") else list(value)
    try:
        out = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise AttributeProblem(f"{keyword} must be numeric, found {str(value)[:80]!r}") from exc
    if count is not None and out.size != count:
        raise AttributeProblem(f"{keyword} must hold {count} numbers, found {out.size}")
    if not np.all(np.isfinite(out)):
        raise AttributeProblem(f"{keyword} holds non-finite numbers {out.tolist()}")
    return out


def number(ds: Dataset, keyword: str, default: float | None = None) -> float:
    """A single finite number; ``default`` when missing (raises when missing and no default)."""
    if default is not None and not has(ds, keyword):
        return default
    return float(floats(ds, keyword, 1)[0])


def integer(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """A single integer; ``default`` when missing."""
    value = number(ds, keyword, None if default is None else float(default))
    if value != int(value):
        raise AttributeProblem(f"{keyword} must be an integer, found {value}")
    return int(value)


def text(ds: Dataset, keyword: str, default: str = "") -> str:
    """A string value, stripped; ``default`` when missing or undecodable."""
    try:
        value = _value(ds, keyword)
    except AttributeProblem:
        return default
    if value is None:
        return default
    return str(value).strip() or default


def sequence(ds: Dataset, keyword: str) -> list[Dataset]:
    """The items of a sequence (empty when missing); a non-sequence value is an error."""
    value = _value(ds, keyword)
    if value is None:
        return []
    if not all(isinstance(item, Dataset) for item in value):
        raise AttributeProblem(f"{keyword} must be a sequence of items")
    return list(value)
