"""The ``fedrt`` subcommands; each module registers its own parser and runs one capability."""
