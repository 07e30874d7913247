"""The ``fedrt`` command: a thin layer that parses arguments and hands over to one capability per subcommand.

Command modules import heavy libraries (torch, Flower, MLflow, ...) only when their command runs, so ``--help``
is quick. An error the user can fix (``FedrtError``) is printed as one message (``-v`` adds its traceback);
anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from fedrt import __version__
from fedrt.commands import (
    baseline,
    certs,
    compare,
    data,
    dicom,
    evaluate,
    listen,
    models,
    node,
    phantoms,
    plan,
    predict,
    run,
    sct,
    segment,
    server,
    simulate,
    train,
)
from protocols.errors import FedrtError

DESCRIPTION = ("fedrt: federated learning for radiation therapy. Hospitals keep their patients; the models travel. "
               "`fedrt COMMAND --help` tells a command's options.")
COMMANDS = (train, predict, evaluate, data, dicom, segment, sct, plan, phantoms, simulate, baseline, compare, models,
            certs, server, node, run, listen)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrt", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"fedrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except FedrtError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"fedrt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedrt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
