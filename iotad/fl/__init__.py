"""The Flower glue: ClientApp, ServerApp, strategy, records, simulation, checkpoints (the only flwr app API users)."""
