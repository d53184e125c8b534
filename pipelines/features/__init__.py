"""The feature store: frozen-encoder outputs computed once from media shards and reused by training."""
