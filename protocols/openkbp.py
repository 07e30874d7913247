"""OpenKBP's original CSV layout: read patients into validated cases (cached as binaries), read/write predictions.

Conventions (checked against the challenge's ``data-description.pdf``): arrays are 128^3, flat indices in C
order, axes as in :data:`protocols.case.AXES`. CT is stored as HU + 1000 (air 0) in a mix of 12- and 16-bit
ranges; like the challenge we clip the stored value to [0, 4095], so ``ct_hu = clip(stored, 0, 4095) - 1000``.
A patient folder may also hold ``mr.csv``: an MR on the CT's grid (arbitrary units, e.g. a simulated MR from
:mod:`protocols.simulated_mr`), in the same sparse layout and read by the same rules as ``ct.csv``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from protocols.case import Case
from protocols.errors import DataError, DataNotFoundError
from protocols.files import atomic_file, staged_folder
from protocols.files import cache_dir as fedrt_cache_dir
from protocols.protocol import Protocol, protocol_digest
from protocols.validation import CaseReport, Finding, Policy, Severity, apply_policy

CT_OFFSET = 1000.0
CT_STORED_MAX = 4095.0
CACHE_VERSION = "3"  # 2: a plain CSV cut mid-row is refused; 3: mr.csv is read
REQUIRED = ("ct", "possible_dose_mask", "voxel_dimensions")
MR = "mr"  # optional: an MR on the CT's grid, arbitrary units
PATIENT_FILES = (*REQUIRED, "dose", MR)  # any one of them makes a folder a patient's, usable or not
IMAGES = ("ct", "dose", MR)  # files of values; every other array file is a mask
MR_FLOAT_FORMAT = "%.4g"  # 4 digits: 0.05 % steps, far below any MR noise (1 % and more)


class PredictionFileError(DataError):
    """A prediction file that cannot be used; the message names the file and the fix."""


def source_file(patient_dir: Path, name: str) -> Path | None:
    """``NAME.csv`` or ``NAME.csv.gz`` in a patient folder, whichever exists."""
    for suffix in (".csv", ".csv.gz"):
        path = patient_dir / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def is_patient_dir(path: Path) -> bool:
    """Whether ``path`` holds a patient's CT (a case can be read from it)."""
    return path.is_dir() and source_file(path, "ct") is not None


def looks_like_patient_dir(path: Path) -> bool:
    """Whether ``path`` holds any of a patient's OpenKBP files: a patient to report, even one without a CT."""
    return path.is_dir() and any(source_file(path, name) is not None for name in PATIENT_FILES)


def _require_complete(path: Path) -> None:
    """EOFError when a plain CSV ends mid-row (no final line break: cut off in a copy); a cut ``.gz`` raises
    EOFError when read.
    """
    if path.suffix != ".csv":
        return
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            raise EOFError("the last row is cut off (no line break at the end)")


def _read_sparse(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and values of a sparse ``,data`` CSV (values NaN for mask files)."""
    _require_complete(path)
    frame = pd.read_csv(path, index_col=0)
    if list(frame.columns) != ["data"]:
        raise ValueError(f"expected header ',data', found {','.join(['', *map(str, frame.columns)])!r}")
    index = frame.index.to_numpy()
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise ValueError("the first column must hold integer flat indices")
    return index.astype(np.int64), frame["data"].to_numpy(dtype=np.float64)


def _dense(index: np.ndarray, values: np.ndarray | float, shape: tuple[int, ...], dtype) -> np.ndarray:
    out = np.zeros(int(np.prod(shape)), dtype=dtype)
    out[index] = values
    return out.reshape(shape)


def _index_in_range(index: np.ndarray, shape: tuple[int, ...]) -> bool:
    return index.size == 0 or (index.min() >= 0 and index.max() < int(np.prod(shape)))


def read_openkbp_case(
    patient_dir: Path, protocol: Protocol, require_dose: bool = True
) -> tuple[Case | None, CaseReport]:
    """Parse one patient folder; returns the case (None if unusable) and everything found on the way."""
    patient_dir = Path(patient_dir)
    report = CaseReport(patient_dir.name, patient_dir)
    shape = protocol.grid.shape
    names = [*REQUIRED, "dose", MR, *protocol.structure_names]
    files = {name: source_file(patient_dir, name) for name in names}
    for name in (*REQUIRED, *(["dose"] if require_dose else [])):
        if files[name] is None:
            report.add(Severity.ERROR, "missing-file", f"{name}.csv(.gz) not found", patient_dir,
                       f"export {name}.csv for this patient or remove the folder from the dataset")
    for name in protocol.structure_names:
        if files[name] is None:
            report.add(Severity.NOTE, "missing-roi", f"{name} not contoured", patient_dir)
    if report.errors:
        return None, report

    spacing = _read_spacing(files["voxel_dimensions"], report)
    arrays: dict[str, np.ndarray] = {}
    for name in ("ct", "dose", MR, "possible_dose_mask", *protocol.structure_names):
        path = files[name]
        if path is None:
            continue
        try:
            index, values = _read_sparse(path)
        except EOFError as exc:
            report.add(Severity.ERROR, "truncated", f"{name}: {path.name} is truncated ({exc})", path,
                       "copy the file again from its source: it was cut off (interrupted transfer or full disk)")
            continue
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            report.add(Severity.ERROR, "unreadable", f"{name}: {exc}", path,
                       "re-export the file in OpenKBP's sparse CSV layout (header ',data')")
            continue
        if not _index_in_range(index, shape):
            report.add(Severity.ERROR, "wrong-shape",
                       f"{name}: flat indices outside a {'x'.join(map(str, shape))} grid "
                       f"(range {index.min()}..{index.max()})", path,
                       f"resample the patient to the protocol grid {shape}")
            continue
        if name in IMAGES:
            if not np.all(np.isfinite(values)):
                report.add(Severity.ERROR, "nan", f"{name}: {int(np.sum(~np.isfinite(values)))} non-finite values",
                           path, "re-export the array; NaN or infinite values cannot be trained on")
                continue
            arrays[name] = _dense(index, values, shape, np.float32)
        else:
            if index.size == 0:
                report.add(Severity.WARNING, "empty-mask", f"{name}: the file lists no voxels", path,
                           "delete the file if the structure was not contoured, or re-export the contour")
            arrays[name] = _dense(index, True, shape, bool)
    if spacing is None or report.errors:
        return None, report
    if not any(name in arrays and arrays[name].any() for name in protocol.targets):
        report.add(Severity.ERROR, "no-target", "no target volume contoured", patient_dir,
                   f"contour at least one of {', '.join(protocol.targets)}")
        return None, report
    if "dose" in arrays and not arrays["dose"].any():
        report.add(Severity.WARNING, "empty-dose", "the dose array is all zero", files["dose"])
    ct_hu = np.clip(arrays["ct"], 0.0, CT_STORED_MAX) - CT_OFFSET
    case = Case(
        patient_id=patient_dir.name,
        ct_hu=ct_hu.astype(np.float32),
        spacing_mm=spacing,
        structures={n: arrays[n] for n in protocol.structure_names if n in arrays},
        possible_dose_mask=arrays["possible_dose_mask"],
        dose_gy=arrays.get("dose"),
        source=patient_dir,
        mr=arrays.get(MR),
    )
    return case, report


def _read_spacing(path: Path, report: CaseReport) -> tuple[float, float, float] | None:
    try:
        values = np.loadtxt(path, dtype=np.float64).ravel()
    except (ValueError, OSError, EOFError) as exc:
        report.add(Severity.ERROR, "unreadable", f"voxel_dimensions: {exc}", path,
                   "write the three voxel sizes in mm, one per line")
        return None
    if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        report.add(Severity.ERROR, "wrong-shape", f"voxel_dimensions: expected 3 positive sizes in mm, got {values}",
                   path, "write the three voxel sizes in mm, one per line")
        return None
    return tuple(float(v) for v in values)


def _source_key(patient_dir: Path, protocol: Protocol, require_dose: bool) -> str:
    """A digest of everything the parsed case depends on; any change to a source file or the protocol changes it."""
    digest = hashlib.sha256(
        f"{CACHE_VERSION}|{patient_dir.resolve()}|{protocol_digest(protocol)}|{require_dose}".encode())
    for path in sorted(patient_dir.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"|{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def load_openkbp_case(
    patient_dir: Path | str,
    protocol: Protocol,
    policy: Policy | str = Policy.WARN,
    require_dose: bool = True,
    cache_dir: Path | None = None,
) -> tuple[Case | None, CaseReport]:
    """Read a patient through the binary cache: CSV is parsed once, again only when a source file changes."""
    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise DataNotFoundError(f"patient folder {patient_dir} does not exist; give an OpenKBP patient folder "
                                "(ct.csv, structures, possible_dose_mask.csv)")
    folder = (cache_dir or fedrt_cache_dir()) / "openkbp" / hashlib.sha256(
        str(patient_dir.resolve()).encode()).hexdigest()[:16]
    cached = folder / f"{_source_key(patient_dir, protocol, require_dose)}.npz"
    if cached.is_file():
        case, report = _load_cached(cached, patient_dir)
    else:
        case, report = read_openkbp_case(patient_dir, protocol, require_dose)
        if case is not None:
            for stale in folder.glob("*.npz"):
                stale.unlink(missing_ok=True)
            _save_cached(cached, case, report)
    apply_policy(report, policy)
    return case, report


def _save_cached(path: Path, case: Case, report: CaseReport) -> None:
    names = sorted(case.structures)
    payload = {
        "ct_stored": (case.ct_hu + CT_OFFSET).astype(np.int16),
        "possible_dose_mask": np.packbits(case.possible_dose_mask),
        "spacing_mm": np.asarray(case.spacing_mm),
        "names": np.asarray(json.dumps(names)),
        "findings": np.asarray(json.dumps([[f.severity, f.code, f.message, str(f.path or ""), f.fix]
                                           for f in report.findings])),
        **{f"mask_{n}": np.packbits(case.structures[n]) for n in names},
    }
    if case.dose_gy is not None:
        payload["dose_gy"] = case.dose_gy
    if case.mr is not None:
        payload["mr"] = case.mr
    with atomic_file(path) as tmp:
        np.savez(tmp, **payload)


def _load_cached(path: Path, patient_dir: Path) -> tuple[Case, CaseReport]:
    with np.load(path) as data:
        ct = data["ct_stored"].astype(np.float32) - CT_OFFSET
        shape = ct.shape
        n = int(np.prod(shape))

        def unpack(key: str) -> np.ndarray:
            return np.unpackbits(data[key], count=n).reshape(shape).astype(bool)

        names = json.loads(str(data["names"]))
        case = Case(
            patient_id=patient_dir.name,
            ct_hu=ct,
            spacing_mm=tuple(float(v) for v in data["spacing_mm"]),
            structures={name: unpack(f"mask_{name}") for name in names},
            possible_dose_mask=unpack("possible_dose_mask"),
            dose_gy=data.get("dose_gy"),
            source=patient_dir,
            mr=data.get("mr"),
        )
        report = CaseReport(patient_dir.name, patient_dir)
        for severity, code, message, where, fix in json.loads(str(data["findings"])):
            report.findings.append(Finding(Severity(severity), code, message, Path(where) if where else None, fix))
    return case, report


def write_prediction(path: Path | str, dose_gy: np.ndarray) -> Path:
    """Write a dose as an OpenKBP prediction file (``,data`` header, non-zero voxels), atomically."""
    path = Path(path)
    flat = np.asarray(dose_gy, dtype=np.float64).ravel()
    if not np.all(np.isfinite(flat)):
        raise PredictionFileError(f"refusing to write {path}: the dose holds non-finite values")
    index = np.flatnonzero(flat)
    frame = pd.DataFrame({"data": flat[index]}, index=pd.Index(index))
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, float_format="%.6g")
    return path


def read_prediction(path: Path | str, shape: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """Read an OpenKBP prediction file into a dense float64 dose in Gy (zero where not listed)."""
    path = Path(path)
    fix = "write it as OpenKBP prediction CSV: header ',data', rows 'flat_index,dose' (fedrt predict does this)"
    try:
        index, values = _read_sparse(path)
    except FileNotFoundError as exc:
        raise PredictionFileError(f"{path}: prediction file not found") from exc
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
        raise PredictionFileError(f"{path}: not an OpenKBP prediction file ({exc}); {fix}") from exc
    if not _index_in_range(index, shape):
        raise PredictionFileError(f"{path}: flat indices outside the {shape} grid; {fix}")
    if not np.all(np.isfinite(values)):
        raise PredictionFileError(f"{path}: {int(np.sum(~np.isfinite(values)))} non-finite doses; {fix}")
    return _dense(index, values, shape, np.float64)


def write_sparse_csv(path: Path, values: np.ndarray, is_mask: bool, float_format: str) -> None:
    """One array as OpenKBP's sparse CSV: header ',data', the non-zero voxels (masks with empty values)."""
    flat = np.asarray(values).ravel()
    index = np.flatnonzero(flat)
    data = np.full(index.size, np.nan) if is_mask else flat[index].astype(np.float64)
    # gzip level 1: several times faster than the default 9 for these files, about 10% larger
    compression = {"method": "gzip", "compresslevel": 1, "mtime": 0} if path.suffix == ".gz" else None
    pd.DataFrame({"data": data}, index=pd.Index(index)).to_csv(path, float_format=float_format,
                                                               compression=compression)


def write_mr(patient_dir: Path, mr: np.ndarray, compress: bool = False) -> Path:
    """Write an MR into a patient folder as ``mr.csv`` (``mr.csv.gz`` if ``compress``), in the layout of ``ct.csv``;
    call it inside a staged folder (:func:`write_openkbp_case`), it is not atomic on its own.
    """
    path = Path(patient_dir) / f"{MR}{'.csv.gz' if compress else '.csv'}"
    write_sparse_csv(path, np.asarray(mr, dtype=np.float32), False, MR_FLOAT_FORMAT)
    return path


def write_openkbp_case(case: Case, patient_dir: Path | str, compress: bool = False,
                       extra_files: dict[str, str] | None = None) -> Path:
    """Write a case in the OpenKBP CSV layout (CT as HU + 1000 clipped to [0, 4095]), all files or none.

    The folder is built next to ``patient_dir`` and renamed into place, replacing an earlier version.
    ``compress`` writes ``NAME.csv.gz`` (as the shared data) instead of ``NAME.csv`` (as the challenge); ``mr.csv``
    is written when the case has an MR;
    ``extra_files`` (file name -> text) are written alongside, e.g. a provenance record.
    """
    patient_dir = Path(patient_dir)
    suffix = ".csv.gz" if compress else ".csv"
    with staged_folder(patient_dir, replace=True) as staging:
        ct_stored = np.clip(np.round(case.ct_hu) + CT_OFFSET, 0, CT_STORED_MAX)
        write_sparse_csv(staging / f"ct{suffix}", ct_stored, False, "%.1f")
        if case.dose_gy is not None:
            write_sparse_csv(staging / f"dose{suffix}", np.maximum(case.dose_gy, 0), False, "%.6g")
        if case.mr is not None:
            write_mr(staging, case.mr, compress)
        mask = case.possible_dose_mask if case.possible_dose_mask is not None else np.ones(case.shape, bool)
        write_sparse_csv(staging / f"possible_dose_mask{suffix}", mask, True, "%g")
        for name, structure in case.structures.items():
            if structure.any():
                write_sparse_csv(staging / f"{name}{suffix}", structure, True, "%g")
        np.savetxt(staging / f"voxel_dimensions{suffix}", np.asarray(case.spacing_mm, dtype=np.float64))
        for name, content in (extra_files or {}).items():
            (staging / name).write_text(content)
    return patient_dir
