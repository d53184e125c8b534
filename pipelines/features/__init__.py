"""The feature store: frozen-encoder outputs computed once from media shards and reused by training.

format    the shard layout and member encoding training reads
decode    ffmpeg: chosen frames at 224x224, channel-0 audio; Pillow for images
views     one media sample -> its V seeded views and the text carried over
feed      a media shard read and decoded ahead of the encoders
encoders  which frozen encoders, and their weights (local or s3://)
extract   the Ray Data job: `vllama features extract`
store     fingerprint, source checksums, markers, the shard writer, the manifest
summary   a run's counts and throughput
manage    ls / show / verify / gc
reader    what training opens a store with
"""
