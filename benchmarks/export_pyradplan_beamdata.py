"""Export the generic 6 MV photon machine of pyRadPlan 0.5.0 as the CSV table that runtime.planning.beamdata reads.

Run with the separate benchmark environment (never fedrt's): ``/tmp/prp/bin/python
benchmarks/export_pyradplan_beamdata.py runtime/planning/data/photon_6mv_kernels.csv``. The data are matRad's
generic 6 MV machine (Bortfeld, Schlegel & Rhein 1993 decomposition: depth components
``beta/(beta-m) (exp(-m z) - exp(-beta z))`` times radial kernels tabulated per SSD), shipped BSD-3 by pyRadPlan.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import numpy as np
from pymatreader import read_mat

SSD_STEP_MM = 50


def main(out: str) -> int:
    path = resources.files("pyRadPlan") / "data" / "machines" / "photons_Generic.mat"
    machine = read_mat(str(path))["machine"]
    data, meta = machine["data"], machine["meta"]
    ssds = np.asarray(data["kernel"]["SSD"], dtype=float)
    radius = np.asarray(data["kernelPos"], dtype=float)
    keep = np.flatnonzero(np.mod(ssds, SSD_STEP_MM) == 0)
    lines = [
        f"# {meta['description']}",
        f"# source: pyRadPlan 0.5.0 data/machines/photons_Generic.mat (matRad generic {data['energy']} MV)",
        f"# m_per_mm={float(data['m'])!r}",
        f"# betas_per_mm={' '.join(repr(float(b)) for b in data['betas'])}",
        f"# sad_mm={float(meta['SAD'])!r}",
        f"# penumbra_fwhm_mm={float(data['penumbraFWHMatIso'])!r}",
        "ssd_mm,radius_mm,kernel1,kernel2,kernel3",
    ]
    for i in keep:
        k = [np.asarray(data["kernel"][f"kernel{c}"])[i] for c in (1, 2, 3)]
        lines += [f"{ssds[i]:g},{r:g},{k[0][j]:.6g},{k[1][j]:.6g},{k[2][j]:.6g}" for j, r in enumerate(radius)]
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(keep)} SSDs x {radius.size} radii")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
