"""The service recipes in ``deploy/``: the systemd units pass ``systemd-analyze verify`` and its offline security
review, a broken unit does not, their command lines are fedrt commands with the example settings, and the
container recipe installs every package fedrt ships with the pinned torch.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from external import SYSTEMD, require_tool

from fedrt.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
SYSTEMD_DIR = REPO / "deploy" / "systemd"
INSTALLED = "/opt/fedrt/bin/fedrt"  # where the units expect fedrt (docs/deployment.md, Services)
ROLES = ("server", "node")
MAX_EXPOSURE = 20  # systemd-analyze security's score times 10: at most 2.0 ("OK")


def _unit(role: str) -> str:
    return (SYSTEMD_DIR / f"fedrt-{role}.service").read_text()


def _settings(role: str) -> dict[str, str]:
    """The example EnvironmentFile: KEY=VALUE lines."""
    lines = (SYSTEMD_DIR / f"fedrt-{role}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _directives(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def _testable_copy(role: str, tmp_path: Path, unit: str | None = None) -> Path:
    """The unit with ExecStart's fedrt pointed at this environment's (verify needs the binary to exist)."""
    fedrt = Path(sys.executable).parent / "fedrt"
    assert fedrt.is_file(), f"install fedrt into this environment ({fedrt} missing)"
    path = tmp_path / f"fedrt-{role}.service"
    path.write_text((unit or _unit(role)).replace(INSTALLED, str(fedrt)))
    return path


def _verify(path: Path) -> str:
    """What ``systemd-analyze verify`` says about the unit (nothing when it is sound), its exit code included."""
    run = subprocess.run([require_tool("systemd-analyze", SYSTEMD), "verify", str(path)], capture_output=True,
                         text=True, timeout=60)
    return (run.stdout + run.stderr).strip() + ("" if run.returncode == 0 else f"\nexit code {run.returncode}")


@pytest.mark.parametrize("role", ROLES)
def test_the_systemd_unit_passes_verify_and_the_security_review(role, tmp_path):
    path = _testable_copy(role, tmp_path)
    assert _verify(path) == ""
    review = subprocess.run([require_tool("systemd-analyze", SYSTEMD), "security", "--offline=yes",
                             f"--threshold={MAX_EXPOSURE}", str(path)], capture_output=True, text=True, timeout=60)
    assert review.returncode == 0, review.stdout[-2000:] + review.stderr


@pytest.mark.parametrize(("damage", "said"), [
    (lambda unit: unit.replace("Restart=on-failure", "Restrat=on-failure"), "Unknown key"),
    (lambda unit: unit.replace(INSTALLED, "/opt/nowhere/bin/fedrt"), "is not executable"),
    (lambda unit: unit.replace("ProtectSystem=strict", "ProtectSystem=very"), "protect system value"),
])
def test_a_broken_unit_fails_verify(damage, said, tmp_path):
    broken = damage(_unit("node"))
    assert broken != _unit("node")
    assert said in _verify(_testable_copy("node", tmp_path, broken))


@pytest.mark.parametrize("role", ROLES)
def test_the_unit_runs_a_fedrt_command_with_the_example_settings_in_its_state_folder(role):
    unit, settings = _unit(role), _settings(role)
    [exec_start] = _directives(unit, "ExecStart")
    used = set(re.findall(r"\$\{(\w+)\}", exec_start))
    assert used == set(settings), "every setting in the example file is used, and every one used is there"
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: shlex.quote(settings[m.group(1)]), exec_start))
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    assert (args.command, getattr(args, f"{role}_command")) == (role, "start")
    [state] = _directives(unit, "StateDirectory")
    assert args.state == Path("/var/lib") / state
    assert str(args.state) in _directives(unit, "ReadWritePaths")[0].split()
    assert _directives(unit, "User") == ["fedrt"] and _directives(unit, "Restart") == ["on-failure"]
    assert _directives(unit, "EnvironmentFile") == [f"/etc/fedrt/{role}.env"]


def test_the_node_unit_signals_fedrt_only_which_stops_the_supernode_itself():
    assert _directives(_unit("node"), "KillMode") == ["mixed"]


def _instruction(containerfile: str, stage: str, name: str) -> list[str]:
    """The exec-form (JSON list) ``name`` instruction of the recipe's ``stage``."""
    body = containerfile.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
    [found] = re.findall(rf"^{name} (\[.*\])$", body, re.M)
    return json.loads(found)


def test_the_container_recipe_installs_every_package_and_the_pinned_torch():
    recipe = (REPO / "deploy" / "Containerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {line.split()[1] for line in recipe.splitlines() if line.startswith("COPY ")}
    assert packages | {"pyproject.toml"} <= copied, "an image without one of fedrt's packages cannot start"
    [torch] = [d for d in project["project"]["dependencies"] if d.startswith("torch")]
    assert f"pip install --index-url \"$TORCH_INDEX_URL\" {torch}" in recipe
    node_flags = ["--superlink", "fl.example.org:9092", "--ca", "/etc/fedrt/node/ca.crt", "--key", "k.key"]
    for role, arguments in (("server", _instruction(recipe, "server", "CMD")), ("node", node_flags)):
        argv = [*_instruction(recipe, role, "ENTRYPOINT"), *arguments]
        assert argv[0] == INSTALLED
        args = build_parser().parse_args(argv[1:])
        assert (args.command, getattr(args, f"{role}_command")) == (role, "start")
