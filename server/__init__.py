"""The aggregation server: Flower ServerApp, strategies, reply validation, rounds and MLflow tracking."""
