"""Shared fixtures: the real OpenKBP patients in ../shared/data and an isolated case cache."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from external import require_data

REPO = Path(__file__).resolve().parents[1]
OPENKBP = REPO.parent / "shared" / "data" / "openkbp"

# One temporary folder for the whole test session, removed when it ends: what the tests and the processes they start
# write to temporary files (Ray's sessions, the round checkpoints of a server a test kills) and, unless the caller
# chose one, the case cache, so that each real patient is parsed from CSV once and nothing is left in /tmp.
SESSION_TMP = tempfile.mkdtemp(prefix="fedrt-tests-")
atexit.register(shutil.rmtree, SESSION_TMP, ignore_errors=True)
os.environ["TMPDIR"] = tempfile.tempdir = SESSION_TMP
os.environ.setdefault("FEDRT_CACHE", os.path.join(SESSION_TMP, "cache"))


@pytest.fixture(scope="session")
def openkbp_root() -> Path:
    return require_data(OPENKBP, "put the OpenKBP patients (train-pats/, validation-pats/ of "
                                 "github.com/ababier/open-kbp) in ../shared/data/openkbp beside the repository")


@pytest.fixture(scope="session")
def protocol():
    from protocols.protocol import load_protocol

    return load_protocol("hn-openkbp")


@pytest.fixture(scope="session")
def sct_checkpoint(tmp_path_factory) -> Path:
    """A briefly trained sct checkpoint of the smoke network on one phantom with a simulated MR (for tests of what is
    written with it, not of its quality).
    """
    import dataclasses

    from configs.compose import compose
    from models import loop
    from models.centralized import task_from_config, train_config
    from models.checkpoint import save_checkpoint
    from protocols.phantom import generate_phantom
    from protocols.simulated_mr import Scanner, simulate_mr

    config = compose(["preset=smoke", "task=sct"])
    task = task_from_config(config)
    case = generate_phantom(task.protocol, 0, 1)
    case.mr = simulate_mr(case.ct_hu, case.spacing_mm, Scanner.for_site(4), case.possible_dose_mask)
    network = task.build_network()
    loop.train(network, task, [task.prepare(case)], dataclasses.replace(train_config(config), epochs=1,
                                                                      steps_per_epoch=2), progress=False)
    return save_checkpoint(tmp_path_factory.mktemp("sct") / "sct.pt", task, network)
