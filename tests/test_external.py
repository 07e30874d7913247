"""The rule for a missing external tool or data set: the test skips saying how to get it, and fails under CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NEEDS = '''
from external import require_tool


def test_needs_a_tool():
    require_tool("fedrt-no-such-tool", "apt-get install fedrt-no-such-tool")


def test_needs_the_shared_data(openkbp_root):
    pass
'''


@pytest.fixture
def repo_without_shared_data(tmp_path) -> Path:
    """A repository holding the shared test helpers and tests that need what is missing, with no ../shared."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    (tests.parent / "pytest.ini").write_text("[pytest]\n")
    for name in ("conftest.py", "external.py"):
        shutil.copy(HERE / name, tests / name)
    (tests / "test_needs.py").write_text(NEEDS)
    return tests.parent


# a fixture that fails (openkbp_root) counts as an error, a test that fails as a failure
@pytest.mark.parametrize(("ci", "code", "outcome"), [(None, 0, "2 skipped"), ("true", 1, "1 failed, 1 error")])
def test_a_missing_tool_or_data_set_skips_saying_how_to_get_it_and_fails_under_ci(repo_without_shared_data, ci,
                                                                                   code, outcome):
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    run = subprocess.run([sys.executable, "-m", "pytest", "-rsfE", "-p", "no:cacheprovider", "tests"],
                         cwd=repo_without_shared_data, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == code, run.stdout + run.stderr
    assert outcome in run.stdout
    assert "fedrt-no-such-tool not found: apt-get install fedrt-no-such-tool" in run.stdout
    shared = repo_without_shared_data.parent / "shared" / "data" / "openkbp"
    assert f"{shared} not found: put the OpenKBP patients" in run.stdout
