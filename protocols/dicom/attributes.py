"""Read DICOM attributes defensively: a missing or malformed value raises one error type that names the
attribute, what was expected and what was found, so readers can turn it into a finding with the file.

Readers catch :data:`MALFORMED` only: what reading and decoding a damaged file raises. Anything else (a
``TypeError``, ``KeyError``, ``IndexError``...) is a bug in fedrt and shows its traceback.
"""

from __future__ import annotations

import struct

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError

from protocols.errors import DicomError

# What reading or decoding a damaged file raises (pydicom 3.0: filereader, hooks, values, valuerep): not a DICOM
# file or a truncated one (InvalidDicomError, EOFError, OSError, struct.error), a value that does not convert
# (ValueError, including UnicodeDecodeError; BytesLengthException; OverflowError for a too-long DS; an unknown VR is
# NotImplementedError), and fedrt's own findings (DicomError, which AttributeProblem is).
MALFORMED = (InvalidDicomError, DicomError, ValueError, OverflowError, EOFError, OSError, struct.error,
             BytesLengthException, NotImplementedError)
# What pydicom's pixel decoding raises besides: a missing pixel module attribute (AttributeError), no decoder for
# the transfer syntax (RuntimeError).
PIXEL_DECODING = (*MALFORMED, AttributeError, RuntimeError)


class AttributeProblem(DicomError):
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


def pixel_data(ds: Dataset) -> np.ndarray:
    """The decoded pixel data; pixel data pydicom cannot decode raises :class:`DicomError` saying why."""
    try:
        return ds.pixel_array
    except PIXEL_DECODING as exc:
        raise DicomError(f"PixelData cannot be decoded ({type(exc).__name__}: {exc})") from exc
