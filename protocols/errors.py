"""fedrt's one error family. Every error a user can fix derives from ``FedrtError`` and says what was wrong, where
(the file, the patient, the setting) and how to fix it; the CLI prints those as one message and shows a traceback
for anything else, which is a bug. Each kind also derives from the built-in exception it refines, so callers that
already handle ``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


class FedrtError(Exception):
    """An error the user can fix: the message names the cause and the fix."""


class ConfigError(FedrtError, ValueError):
    """A setting, override or argument that fedrt cannot use."""


class DataError(FedrtError, ValueError):
    """A dataset, patient or file whose content fedrt cannot use."""


class DataNotFoundError(FedrtError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class DicomError(DataError):
    """A DICOM file or study fedrt cannot read, or that does not belong with the others."""


class DeploymentError(FedrtError, RuntimeError):
    """A deployment that cannot go on: certificates, keys, a SuperLink or SuperNode that refuses or is unreachable."""


class OutputError(FedrtError, OSError):
    """An output that cannot be written where asked (an existing non-empty folder, a read-only place)."""
