"""Ray Train + DeepSpeed training, typed run configs, checkpointing, MLflow, and the `vllama` CLI."""
