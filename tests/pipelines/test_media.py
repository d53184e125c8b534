"""ffprobe validation, decode checks and transcoding with the real ffmpeg on generated clips."""

from __future__ import annotations

import hashlib
from pathlib import Path

import ffmpeg
import pytest

from pipelines import media
from pipelines.media import MediaError, TranscodeConfig


def _clip(sample_data, **attrs):
    return next(v for v in sample_data.videos if all(getattr(v, k) == x for k, x in attrs.items()))


def test_probe_matches_what_was_generated(sample_data):
    for v in sample_data.videos[:4]:
        info = media.probe_video(sample_data.path(v.file))
        assert (info.width, info.height, info.fps, info.has_audio) == (v.width, v.height, v.fps, v.has_audio)
        assert info.duration == pytest.approx(v.duration, abs=0.1)
        assert info.video_codec == "h264" and info.audio_codec == ("aac" if v.has_audio else None)
        assert media.has_audio(media.probe(sample_data.path(v.file))) == v.has_audio


@pytest.mark.parametrize(
    ("content", "category"),
    [(b"", "not_video"), (b"\n  <!DOCTYPE html><html>gone</html>", "not_video"), (b'{"error": "gone"}', "not_video"),
     (b"\x00\x01garbage" * 64, "corrupt")],
)  # fmt: skip
def test_non_videos_are_refused(tmp_path, content, category):
    path = tmp_path / "x.src"
    path.write_bytes(content)
    with pytest.raises(MediaError) as info:
        media.probe_video(path)
    assert info.value.category == category and "x.src" in str(info.value)


def test_an_image_is_not_a_video(sample_data):
    with pytest.raises(MediaError) as info:
        media.probe_video(sample_data.path(sample_data.images[0].file))
    assert info.value.category == "not_video"


def test_truncated_video_probes_but_does_not_decode(sample_data, tmp_path):
    src = Path(sample_data.path(_clip(sample_data, has_audio=True).file))
    info = media.probe_video(src)
    media.verify_decode(src, info)  # the whole file decodes silently
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 3])  # moov is first (faststart): probe still works
    info = media.probe_video(cut)
    with pytest.raises(MediaError) as err:
        media.verify_decode(cut, info)
    assert err.value.category == "decode_error" and "decoding failed" in str(err.value)
    with pytest.raises(MediaError) as err:
        media.transcode(cut, tmp_path / "out.mp4", info, TranscodeConfig(enabled=True))
    assert err.value.category == "decode_error"


def test_transcode_downscales_keeps_audio_and_is_reproducible(sample_data, tmp_path):
    v = _clip(sample_data, width=480, height=270, has_audio=True)
    src = sample_data.path(v.file)
    cfg = TranscodeConfig(enabled=True, short_side=224)
    digests = []
    for name in ("a.mp4", "b.mp4"):
        media.transcode(src, tmp_path / name, media.probe_video(src), cfg)
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    out = media.probe_video(tmp_path / "a.mp4")
    assert (out.width, out.height, out.fps, out.has_audio) == (398, 224, v.fps, True)  # 480*224/270 = 398.2
    assert out.duration == pytest.approx(v.duration, abs=0.1) and out.audio_codec == "aac"


def test_transcode_never_upscales(sample_data, tmp_path):
    small = _clip(sample_data, width=160, height=120)
    src = sample_data.path(small.file)
    media.transcode(src, tmp_path / "s.mp4", media.probe_video(src), TranscodeConfig(enabled=True, short_side=224))
    out = media.probe_video(tmp_path / "s.mp4")
    assert (out.width, out.height, out.has_audio) == (160, 120, small.has_audio)


def test_transcode_portrait_scales_the_width(tmp_path):
    src = tmp_path / "portrait.mp4"
    ffmpeg.input("testsrc=size=270x480:rate=10", format="lavfi", t=1).output(str(src), vcodec="libx264").global_args(
        "-loglevel", "error"
    ).run(cmd=media.ffmpeg_bin())
    media.transcode(src, tmp_path / "p.mp4", media.probe_video(src), TranscodeConfig(enabled=True, short_side=224))
    out = media.probe_video(tmp_path / "p.mp4")
    assert (out.width, out.height, out.has_audio) == (224, 398, False)


def test_scale_expressions_for_each_orientation():
    w, h = media.scale_exprs(224)
    assert w == "if(lte(iw,ih),trunc(min(224,iw)/2)*2,-2)" and h == "if(lte(iw,ih),-2,trunc(min(224,ih)/2)*2)"


def test_transcode_config_checks():
    with pytest.raises(ValueError, match="even number"):
        TranscodeConfig(short_side=223)
    with pytest.raises(ValueError, match="crf"):
        TranscodeConfig(crf=60)
