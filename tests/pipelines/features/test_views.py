"""Seeded views: reproducible per (seed, key, view), different across views, checked config, fingerprinted identity."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from pipelines.features import views
from pipelines.features.views import PreprocessConfig
from pipelines.media import MediaError, ffmpeg_bin


def _members(sample_data, sample) -> dict[str, bytes]:
    ext = "mp4" if sample.kind == "video" else "jpg"
    meta = {"QA": [{"q": "what moves?", "a": sample.caption}]}
    return {ext: Path(sample_data.path(sample.file)).read_bytes(), "txt": b"cap", "json": json.dumps(meta).encode()}


def test_views_are_reproducible_and_distinct(tmp_path, sample_data):
    cfg = PreprocessConfig(num_frames=4, sampling="headtail", views=3, crop=True, seed=5)
    s = next(v for v in sample_data.videos if v.has_audio)
    a = views.prepare(s.id, _members(sample_data, s), cfg, tmp_path, timeout=60)
    b = views.prepare(s.id, _members(sample_data, s), cfg, tmp_path, timeout=60)
    assert a.frames.shape == (12, 3, 224, 224) and a.frames_per_view == 4 and torch.equal(a.frames, b.frames)
    assert a.clips.shape == (8, 1, 128, 204) and torch.equal(a.clips, b.clips)
    per_view = a.frames.view(3, 4, 3, 224, 224)
    assert not torch.equal(per_view[0], per_view[1]) and not torch.equal(per_view[1], per_view[2])
    half = s.frames // 2
    for indices in a.meta["frame_indices"]:  # headtail: 2 sorted from each half
        assert indices == sorted(indices) and all(i < half for i in indices[:2]) and all(i >= half for i in indices[2:])
    assert a.meta["QA"][0]["a"] == s.caption and a.text == "cap"  # the source json is carried over
    other_seed = views.prepare(s.id, _members(sample_data, s), PreprocessConfig(**{**cfg.__dict__, "seed": 6}),
                               tmp_path, timeout=60)  # fmt: skip
    assert not torch.equal(other_seed.frames, a.frames)
    assert list(tmp_path.iterdir()) == []  # the spooled media file is gone


def test_image_views_are_one_frame(tmp_path, sample_data):
    s = sample_data.images[0]
    p = views.prepare(s.id, _members(sample_data, s), PreprocessConfig(views=2, crop=True), tmp_path, 60)
    assert p.frames.shape == (2, 3, 224, 224) and p.frames_per_view == 1 and p.clips is None
    assert not torch.equal(p.frames[0], p.frames[1])


def test_a_one_frame_video_cannot_be_sampled_head_and_tail(tmp_path):
    clip = tmp_path / "one.mp4"
    subprocess.run([ffmpeg_bin(), "-loglevel", "error", "-f", "lavfi", "-i", "color=c=blue:s=64x64:r=1:d=1",
                    "-frames:v", "1", "-pix_fmt", "yuv420p", str(clip)], check=True)  # fmt: skip
    members = {"mp4": clip.read_bytes(), "txt": b"blue"}
    (tmp_path / "spool").mkdir()
    with pytest.raises(MediaError, match="one.mp4: headtail sampling needs at least 2 frames") as e:
        views.prepare("one", members, PreprocessConfig(sampling="headtail"), tmp_path / "spool", 60)
    assert e.value.category == "decode_error"
    p = views.prepare("one", members, PreprocessConfig(), tmp_path / "spool", 60)
    assert p.frames.shape == (1, 3, 224, 224) and p.meta["frame_indices"] == [[0]]  # uniform: fewer frames


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"views": 2}, "identical views"),
        ({"sampling": "random"}, "use one of uniform, headtail"),
        ({"num_frames": 33}, "must be 1..32"),
        ({"sampling": "headtail", "num_frames": 1}, ">= 2 with headtail"),
        ({"crop": True, "crop_scale": (0.9, 0.5)}, "0 < min <= max <= 1"),
    ],
)
def test_bad_config_says_what_to_change(fields, message):
    with pytest.raises(ValidationError, match=message):
        PreprocessConfig(**fields)


def test_identity_holds_only_what_changes_features():
    plain = PreprocessConfig().identity()
    assert PreprocessConfig(seed=9, crop_scale=(0.8, 1.0)).identity() == plain  # unused by the deterministic view
    assert PreprocessConfig(sampling="headtail", seed=9).identity() != PreprocessConfig(sampling="headtail").identity()
    assert plain == {"num_frames": 8, "sampling": "uniform", "views": 1, "crop": False, "crop_scale": None,
                     "seed": None, "audio": True, "frame_size": 224}  # fmt: skip
