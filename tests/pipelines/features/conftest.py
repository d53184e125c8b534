"""Fixtures for feature-store tests: tiny encoder weights and media shards from the sample data."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.media_shards import image_members, video_members, write_media_shard

from model.frozen_encoders import save_random_checkpoints


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Tiny random encoders saved as the released files (eva_vit_g.pth, blip2..., imagebind_huge.pth)."""
    folder = tmp_path_factory.mktemp("encoders")
    save_random_checkpoints(folder, "tiny", "tiny", seed=3)
    return folder


@pytest.fixture
def make_shards(sample_data):
    """`make(out, kind, per_shard, limit=None) -> keys per shard` for kind video | image."""

    def make(out: str, kind: str = "video", per_shard: int = 3, limit: int | None = None) -> list[list[str]]:
        pick = sample_data.videos if kind == "video" else sample_data.images
        build = video_members if kind == "video" else image_members
        items = [(s.id, build(sample_data, s)) for s in pick[:limit]]
        groups = [items[i : i + per_shard] for i in range(0, len(items), per_shard)]
        for index, group in enumerate(groups):
            write_media_shard(out, index, group)
        return [[k for k, _ in g] for g in groups]

    return make
