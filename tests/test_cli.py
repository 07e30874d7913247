"""The command line: ``--help`` imports no heavy library, and the one error model (a fedrt error is one line and
exit 2, with its traceback under ``-v``; anything else is a bug and keeps its traceback).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedrt import cli
from fedrt.commands import evaluate

HEAVY = ("torch", "monai", "mlflow", "flwr", "scipy", "matplotlib")


COMMANDS = ["train", "predict", "evaluate", "data", "export-dicom", "segment", "sct", "plan", "phantoms", "simulate",
            "baseline", "compare", "models", "certs", "server", "node", "run", "listen"]


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS), ["node", "start", "--help"],
                                  ["data", "import-dicom", "--help"], ["data", "simulate-mr", "--help"]])
def test_help_leaves_the_heavy_libraries_unimported(argv):
    probe = "\n".join(["import sys", "from fedrt import cli", "try:", f"    cli.build_parser().parse_args({argv!r})",
                       "except SystemExit:", "    pass", "print(' '.join({m.split('.')[0] for m in sys.modules}))"])
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
                 .stdout.split())
    assert "fedrt" in loaded and not loaded.intersection(HEAVY), sorted(loaded.intersection(HEAVY))


def test_a_fedrt_error_is_one_line_and_exit_2_with_its_traceback_under_verbose(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert cli.main(["data", "check", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedrt data: error: ") and str(missing) in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert cli.main(["-v", "data", "check", str(missing)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_anything_else_is_a_bug_and_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise ValueError("operands could not be broadcast together")  # e.g. a numpy bug inside a command

    monkeypatch.setattr(evaluate, "run_evaluate", broken)
    with pytest.raises(ValueError, match="broadcast"):
        cli.main(["evaluate", "--reference", "a", "--predictions", "b"])
