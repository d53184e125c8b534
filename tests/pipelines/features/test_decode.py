"""ffmpeg decoding for extraction: frame counts, chosen frames at 224x224, channel 0 of the audio, failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines.features import decode
from pipelines.media import MediaError, ffmpeg_bin


def test_probe_counts_frames_and_finds_audio(sample_data):
    for s in sample_data.videos:
        info = decode.probe(Path(sample_data.path(s.file)))
        assert (info.frames, info.fps, info.audio_rate) == (s.frames, s.fps, s.sample_rate), s.id


def test_chosen_frames_equal_the_same_frames_of_a_full_decode(sample_data):
    s = max(sample_data.videos, key=lambda v: v.frames)  # the longest clip: B-frames, several GOPs
    path = Path(sample_data.path(s.file))
    every = subprocess.run(
        [ffmpeg_bin(), "-loglevel", "error", "-i", str(path), "-vf", "scale=224:224:flags=bicubic,format=rgb24",
         "-fps_mode", "passthrough", "-f", "rawvideo", "pipe:"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    every = np.frombuffer(every, np.uint8).reshape(-1, 224, 224, 3)
    assert len(every) == s.frames
    indices = [0, 1, s.frames // 3, s.frames // 2 + 1, s.frames - 1]
    frames = decode.decode_frames(path, indices)
    assert frames.shape == (5, 224, 224, 3) and frames.flags.writeable
    np.testing.assert_array_equal(frames, every[indices])
    with pytest.raises(MediaError, match=f"decoded 1 of the 2 frames asked for \\(last {s.frames}\\)") as e:
        decode.decode_frames(path, [0, s.frames])
    assert e.value.category == "decode_error"
    with pytest.raises(ValueError, match="sorted and unique"):
        decode.decode_frames(path, [3, 1])


@pytest.mark.parametrize("loud", [0, 1])
def test_audio_is_channel_0_not_a_downmix(tmp_path, loud):
    """ImageBind's fbank reads channel 0: a tone on the other channel only must decode as silence."""
    tone, silence = "0.5*sin(2*PI*440*t)", "0"
    exprs = f"{tone}|{silence}" if loud == 0 else f"{silence}|{tone}"
    wav = tmp_path / "stereo.mkv"
    subprocess.run(
        [ffmpeg_bin(), "-loglevel", "error", "-f", "lavfi", "-i", f"aevalsrc={exprs}:s=22050:d=1", "-f", "lavfi",
         "-i", "color=c=red:s=64x64:r=10:d=1", "-c:a", "pcm_f32le", "-c:v", "ffv1", str(wav)],
        check=True,
    )  # fmt: skip
    assert decode.probe(wav).audio_rate == 22050
    wave = decode.decode_audio(wav)
    assert wave.dtype == np.float32 and len(wave) == 22050
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050) if loud == 0 else np.zeros(22050)
    np.testing.assert_allclose(wave, expected, atol=1e-5)


def test_failures_are_media_errors_naming_the_file(tmp_path, sample_data):
    text = tmp_path / "page.mp4"
    text.write_bytes(b"<html>not found</html>")
    with pytest.raises(MediaError, match="page.mp4: ffprobe failed") as e:
        decode.probe(text)
    assert e.value.category == "corrupt"
    silent = next(s for s in sample_data.videos if not s.has_audio)
    with pytest.raises(MediaError, match="audio decoding failed") as e:
        decode.decode_audio(Path(sample_data.path(silent.file)))
    assert e.value.category == "decode_error"
    jpg = Path(sample_data.path(sample_data.images[0].file)).read_bytes()
    assert decode.decode_image(jpg, "a.jpg").size == (sample_data.images[0].width, sample_data.images[0].height)
    with pytest.raises(MediaError, match="cut.jpg: not a readable image"):
        decode.decode_image(jpg[: len(jpg) // 2], "cut.jpg")
