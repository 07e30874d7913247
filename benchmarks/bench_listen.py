"""Benchmark: ``fedrt listen`` end to end, from the first instance sent to the result stored at the destination.

A 512 x 512 x 150 CT (a shared validation patient resampled to 0.977 x 0.977 x 3 mm, as in ``bench_segment.py``)
is sent by dcmtk's ``storescu`` to a ``fedrt listen`` process on 127.0.0.1; the node segments it and sends the RT
Structure Set to a dcmtk ``storescp``. The wall time is from the start of ``storescu`` to the file appearing at the
destination; the breakdown comes from the node's audit log (receive, quiet period, read, model, write, send).
``--plan`` sends the CT with the patient's structure set (targets included) instead, which the node plans
(``--dose-model`` needed): RTPLAN + RTDOSE at the destination. Usage:

    python benchmarks/bench_listen.py --seg-model seg.pt --out bench-out [--plan --dose-model dose.pt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segment import PATIENT, REPO, export_ct  # the benchmarks folder is not a package

SHAPE, SPACING_MM = (512, 512, 150), (0.977, 0.977, 3.0)
QUIET_S = 1.0


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_planning_study(folder: Path) -> Path:
    """The shared patient's CT and structure set (targets included) resampled onto the 512 x 512 x 150 grid."""
    from protocols.case import Case
    from protocols.dicom.export import centred_grid, export_case
    from protocols.dicom.geometry import resample
    from protocols.openkbp import load_openkbp_case
    from protocols.protocol import load_protocol

    protocol = load_protocol("hn-openkbp")
    case, _ = load_openkbp_case(PATIENT, protocol, require_dose=False)
    source, target = centred_grid(case.shape, case.spacing_mm), centred_grid(SHAPE, SPACING_MM)
    ct = resample(case.ct_hu, source, target, order=1, cval=-1000.0)
    masks = {name: resample(mask.astype("float32"), source, target, order=1) >= 0.5
             for name, mask in case.structures.items()}
    export_case(Case(case.patient_id, ct, SPACING_MM, structures=masks), folder, target, protocol)
    return folder


def audit(store: Path) -> list[dict]:
    """The node's audit events."""
    path = store / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_event(store: Path, kinds: tuple[str, ...], timeout: float, proc: subprocess.Popen) -> dict:
    """The first audit event of one of ``kinds``; fails when the node exits or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = [e for e in audit(store) if e["event"] in kinds]
        if found:
            return found[0]
        time.sleep(0.05)
    raise SystemExit(f"no {'/'.join(kinds)} event within {timeout} s (node rc {proc.poll()}); see {store}")


def run(study: Path, out: Path, seg_model: Path, dose_model: Path | None, timeout: float) -> dict:
    """Send ``study`` through a fresh node and time it."""
    store, dest = out / "store", out / "dest"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    node_port, dest_port = free_port(), free_port()
    storescp = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(dest), str(dest_port)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    node = subprocess.Popen([sys.executable, "-m", "fedrt.cli", "listen", f"listen.port={node_port}",
                             "listen.allowed_callers=[CT_SIM]", f"listen.quiet_s={QUIET_S}", f"listen.store={store}",
                             "listen.destination.ae_title=PACS", f"listen.destination.port={dest_port}",
                             f"listen.seg_model={seg_model}",
                             f"listen.dose_model={dose_model if dose_model else 'null'}"], env=env)
    try:
        started = wait_event(store, ("node-started",), 120, node)
        start = time.perf_counter()
        subprocess.run(["storescu", "-aet", "CT_SIM", "-aec", "FEDRT", "+sd", "+r", "127.0.0.1", str(node_port),
                        str(study)], check=True)
        storescu_s = time.perf_counter() - start
        sent = wait_event(store, ("sent", "failed"), timeout, node)
        wall_s = time.perf_counter() - start
        if sent["event"] == "failed":
            raise SystemExit(f"the node failed the study: {sent['error']}: {sent['message']}")
    finally:
        for proc in (node, storescp):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=120)
    events = {e["event"]: e for e in audit(store) if e.get("study") == sent["study"]}
    return {"wall_s": round(wall_s, 2), "storescu_s": round(storescu_s, 2),
            "received": {k: events["received"][k] for k in ("instances", "receive_s", "quiet_s")},
            "job": events["done"]["job"], "job_s": events["done"]["job_s"], "timings_s": events["done"]["timings_s"],
            "send_s": sent["send_s"], "files_sent": sent["files"], "model_load_s": started["model_load_s"],
            "at_destination": sorted(p.name.split(".")[0] for p in dest.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seg-model", type=Path, required=True, help="segmentation checkpoint")
    parser.add_argument("--dose-model", type=Path, help="dose checkpoint (needed with --plan)")
    parser.add_argument("--plan", action="store_true", help="send CT + RTSTRUCT with targets: the node plans")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result")
    args = parser.parse_args()
    if args.plan and not args.dose_model:
        parser.error("--plan needs --dose-model")
    if args.plan:
        study = args.out / "study-plan"
        if not study.is_dir():
            export_planning_study(study)
    else:
        study = args.out / "ct-512"
        if not study.is_dir():
            export_ct(study, SHAPE, SPACING_MM)
    result = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
              "date": time.strftime("%Y-%m-%d"), "input": f"{'CT + RTSTRUCT' if args.plan else 'CT'} "
              f"{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}", "quiet_s": QUIET_S,
              **run(study, args.out, args.seg_model, args.dose_model if args.plan else None, args.timeout)}
    (args.out / f"listen-{'plan' if args.plan else 'segment'}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
