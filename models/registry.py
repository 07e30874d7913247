"""Model references for inference: a checkpoint file, or an MLflow URI (``models:/NAME@alias``,
``models:/NAME/VERSION``, ``runs:/RUN_ID/model``) downloaded once into the local cache.

The tracking URI is ``MLFLOW_TRACKING_URI`` if set, else fedrt's embedded default ``sqlite:///mlflow.db``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from protocols.errors import ConfigError, DataError
from protocols.files import cache_dir, staged_folder

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CHECKPOINT_FILE = "checkpoint.pt"
SCHEMES = ("models:/", "runs:/")


def is_mlflow_uri(reference: str) -> bool:
    """Whether ``reference`` names an MLflow model (``models:/...``, ``runs:/...``) rather than a file."""
    return str(reference).startswith(SCHEMES)


def _pinned(reference: str, tracking_uri: str) -> str:
    """``models:/NAME@alias`` turned into ``models:/NAME/VERSION`` (an alias moves; a version never changes)."""
    if not reference.startswith("models:/") or "@" not in reference:
        return reference
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias = reference[len("models:/"):].split("@", 1)
    try:
        version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise ConfigError(f"{reference}: no alias {alias!r} of model {name!r} in {tracking_uri}; see `fedrt models "
                         f"list`, or set MLFLOW_TRACKING_URI to the store the model was registered in") from exc
    return f"models:/{name}/{version.version}"


def resolve_model(reference: str | Path, tracking_uri: str | None = None) -> Path:
    """The local checkpoint file a model reference stands for (MLflow models are downloaded and cached)."""
    if not is_mlflow_uri(str(reference)):
        return Path(reference)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    pinned = _pinned(str(reference), uri)
    folder = cache_dir() / "models" / hashlib.sha256(f"{uri}|{pinned}".encode()).hexdigest()[:16]
    if not (folder / CHECKPOINT_FILE).is_file():
        try:
            with staged_folder(folder, replace=True) as staging:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(staging),
                                                                 tracking_uri=uri, registry_uri=uri))
                found = local if local.is_file() else local / CHECKPOINT_FILE
                if not found.is_file():
                    raise DataError(f"{reference} holds no {CHECKPOINT_FILE}; register models with `fedrt simulate`")
                if found != staging / CHECKPOINT_FILE:
                    found.rename(staging / CHECKPOINT_FILE)
        except MlflowException as exc:
            raise ConfigError(f"cannot fetch {reference} from {uri}: {exc.message}; check the model URI and "
                              "MLFLOW_TRACKING_URI") from exc
    return folder / CHECKPOINT_FILE


def model_label(reference: str | Path, tracking_uri: str | None = None) -> str:
    """What a written object says made it: ``models:/NAME/VERSION`` (an alias pinned), or the checkpoint's hash."""
    if is_mlflow_uri(str(reference)):
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        return _pinned(str(reference), uri)
    digest = hashlib.sha256(Path(reference).read_bytes()).hexdigest()[:16]
    return f"checkpoint sha256:{digest}"
