"""The Flower ServerApp: one federated run per start, configured by the composed fedrt (Hydra) config."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from server.federation import FederationOutcome, open_run, run_federation
from server.tracking import Tracker


def make_server_app(config: DictConfig, on_done: Callable[[FederationOutcome], None] | None = None,
                    tracker: Tracker | None = None) -> ServerApp:
    """A ServerApp running ``config``; the MLflow run is opened here unless ``tracker`` (already open) is given.

    ``on_done`` receives the outcome. A failure or interruption marks the MLflow run FAILED (resumable).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run, run_config = (tracker, config) if tracker is not None else open_run(config)
        try:
            outcome = run_federation(grid, run_config, run)
        except BaseException:
            run.finish("FAILED")
            raise
        run.finish("FINISHED")
        if on_done is not None:
            on_done(outcome)

    return app
