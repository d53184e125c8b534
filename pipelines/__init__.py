"""Ray Data jobs: dataset sources, media (ffmpeg), webdataset shards, and the feature store.

Never imports `orchestration`; uses `model` only for the frozen encoders.
"""
