"""``fedrt listen [overrides]``: run the DICOM node (``runtime.listener``) configured by the ``listen:`` section of
the Hydra config, e.g. ``fedrt listen listen.port=11112 'listen.allowed_callers=[CT_SIM]'
listen.destination.ae_title=PACS listen.destination.host=10.0.0.5``. It runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse

from fedrt.config import add_override_arguments, composed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "listen", help="DICOM node: receive CTs, segment or plan them, send the results by C-STORE",
        description="A Storage SCP that runs `segment` (CT) or `plan` (CT + RTSTRUCT with targets) on each complete "
                    "study and sends the result to listen.destination; see docs/dicom-node.md. Overrides are Hydra's, "
                    "e.g. listen.port=11112 'listen.allowed_callers=[CT_SIM]' listen.destination.ae_title=PACS.")
    add_override_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from omegaconf import OmegaConf

    from runtime.listener.node import run_listener
    from runtime.listener.settings import ListenerSettings

    config = composed(args)
    if config is None:
        return 0
    if not args.verbose:  # pynetdicom logs every message at INFO; the node prints one line per study instead
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    section = OmegaConf.to_container(config.listen, resolve=True)
    return run_listener(ListenerSettings.from_mapping(section, str(config.protocol)))
