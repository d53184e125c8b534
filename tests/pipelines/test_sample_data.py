"""The sample-data generator: real ffmpeg output checked by ffprobe and by decoding pixels and sound."""

from __future__ import annotations

import collections
import csv
import json
import re
import string
import time
import urllib.error
import urllib.request
from pathlib import Path

import ffmpeg
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from pipelines.media import ffmpeg_bin, probe
from pipelines.sample_data import SampleDataConfig, SampleManifest, generate
from pipelines.sample_formats import WEBVID_COLUMNS
from pipelines.sample_media import PALETTE, box_origin
from pipelines.sample_plan import COLOURS, DIRECTIONS, SHAPES, plan

TOLERANCE = 40  # per channel, after yuv420p / JPEG round trips of flat colour


def decode_frame(path: str, k: int, width: int, height: int) -> np.ndarray:
    """Frame k of a video as (H, W, 3) uint8 RGB, decoded by ffmpeg."""
    out, _ = (
        ffmpeg.input(path)
        .trim(start_frame=k, end_frame=k + 1)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .run(cmd=ffmpeg_bin(), capture_stdout=True, capture_stderr=True)
    )
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)[0]


def decode_audio(path: str, rate: int = 16000) -> np.ndarray:
    out, _ = (
        ffmpeg.input(path)
        .output("pipe:", format="f32le", ac=1, ar=rate)
        .run(cmd=ffmpeg_bin(), capture_stdout=True, capture_stderr=True)
    )
    return np.frombuffer(out, np.float32)


def centre_of_box(sample, k: int) -> tuple[int, int]:
    x, y = box_origin(sample, k)
    return x + sample.size // 2, y + sample.size // 2


def patch_mean(frame: np.ndarray, x: int, y: int, r: int = 2) -> np.ndarray:
    return frame[y - r : y + r + 1, x - r : x + r + 1].reshape(-1, 3).mean(0)


def far_corner(sample, x: int, y: int) -> tuple[int, int]:
    corners = [(3, 3), (sample.width - 4, 3), (3, sample.height - 4), (sample.width - 4, sample.height - 4)]
    return max(corners, key=lambda c: (c[0] - x) ** 2 + (c[1] - y) ** 2)


def colour_centroid(frame: np.ndarray, colour: str) -> np.ndarray:
    close = (np.abs(frame.astype(int) - PALETTE[colour]) <= TOLERANCE * 1.5).all(-1)
    ys, xs = np.nonzero(close)
    assert len(xs) > 20, f"{colour} shape not found"
    return np.array([xs.mean(), ys.mean()])


def caption_of(name: str) -> str:
    """Video-LLaMA's caption processing: lowercase, punctuation stripped."""
    return name.lower().translate(str.maketrans("", "", string.punctuation)).strip()


# ---------------------------------------------------------------- media


def test_videos_probe_as_declared(sample_data):
    assert len(sample_data.videos) == 12
    for s in sample_data.videos:
        info = probe(sample_data.path(s.file))
        video = [st for st in info["streams"] if st["codec_type"] == "video"]
        audio = [st for st in info["streams"] if st["codec_type"] == "audio"]
        assert len(video) == 1 and len(audio) == int(s.has_audio), s.file
        v = video[0]
        assert (v["codec_name"], v["pix_fmt"]) == ("h264", "yuv420p")
        assert (v["width"], v["height"]) == (s.width, s.height)
        assert v["r_frame_rate"] == f"{s.fps}/1"
        assert int(v["nb_frames"]) == s.frames
        assert abs(float(v["duration"]) - s.duration) <= 2 / s.fps, s.file
        assert 1.5 <= s.duration <= 6.0
        slack = 2 / s.fps
        if s.has_audio:
            a = audio[0]
            assert (a["codec_name"], int(a["sample_rate"]), a["channels"]) == ("aac", s.sample_rate, 1)
            assert abs(float(a["duration"]) - s.duration) <= 1024 / s.sample_rate + 0.01, s.file  # one AAC frame
            slack += 1024 / s.sample_rate
        assert abs(float(info["format"]["duration"]) - s.duration) <= slack, s.file
        assert "creation_time" not in info["format"].get("tags", {})


def test_sizes_rates_and_durations_vary(sample_data):
    videos = sample_data.videos
    assert len({(s.width, s.height) for s in videos}) >= 4
    assert any(s.width * 3 != s.height * 4 for s in videos)  # not all 4:3
    assert len({s.fps for s in videos}) >= 3 and all(8 <= s.fps <= 30 for s in videos)
    assert max(s.duration for s in videos) - min(s.duration for s in videos) > 1.5
    assert sum(s.has_audio for s in videos) == 6  # exactly one of each consecutive pair


def test_video_frames_show_the_declared_shape_colour_and_motion(sample_data):
    for s in sample_data.videos:
        path = sample_data.path(s.file)
        mid = s.frames // 2
        frame = decode_frame(path, mid, s.width, s.height)
        x, y = centre_of_box(s, mid)
        assert np.abs(patch_mean(frame, x, y) - PALETTE[s.colour]).max() <= TOLERANCE, (s.file, s.colour)
        bx, by = far_corner(s, x, y)
        assert np.abs(patch_mean(frame, bx, by, r=1) - PALETTE[s.background]).max() <= TOLERANCE, (s.file, s.background)

        k1, k2 = s.frames // 5, s.frames - 1 - s.frames // 5
        moved = colour_centroid(decode_frame(path, k2, s.width, s.height), s.colour) - colour_centroid(
            decode_frame(path, k1, s.width, s.height), s.colour
        )
        expected = np.subtract(centre_of_box(s, k2), centre_of_box(s, k1))
        axis = 0 if s.direction in ("left", "right") else 1
        sign = -1 if s.direction in ("left", "up") else 1  # image y grows downwards
        assert sign * moved[axis] > 10, (s.file, s.direction, moved)
        assert abs(moved[axis] - expected[axis]) <= 0.25 * abs(expected[axis]) + 3, (s.file, moved, expected)
        assert abs(moved[1 - axis]) <= 3, (s.file, moved)


def test_tone_pitch_rises_or_falls_as_declared(sample_data):
    rate = 16000
    with_audio = [s for s in sample_data.videos if s.has_audio]
    assert {s.pitch for s in with_audio} <= {"rising", "falling"} and with_audio
    for s in with_audio:
        wave = decode_audio(sample_data.path(s.file), rate)
        window = int(0.3 * s.duration * rate)
        peaks = []
        for chunk in (wave[:window], wave[-window:]):
            spectrum = np.abs(np.fft.rfft(chunk * np.hanning(len(chunk))))
            peaks.append(np.fft.rfftfreq(len(chunk), 1 / rate)[spectrum.argmax()])
        f0, f1 = s.tone_hz
        expected = (f0 + 0.15 * (f1 - f0), f1 - 0.15 * (f1 - f0))  # mean frequency of each window
        assert (peaks[1] > peaks[0]) == (s.pitch == "rising"), (s.file, peaks)
        for got, want in zip(peaks, expected, strict=True):
            assert abs(got - want) <= 0.1 * want, (s.file, peaks, expected)


def test_images_show_the_declared_shape_on_its_background(sample_data):
    assert len(sample_data.images) == 8
    for s in sample_data.images:
        with Image.open(sample_data.path(s.file)) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (s.width, s.height))
            frame = np.asarray(im)
        x, y = s.start
        assert np.abs(patch_mean(frame, x, y) - PALETTE[s.colour]).max() <= TOLERANCE, s.file
        bx, by = far_corner(s, x, y)
        assert np.abs(patch_mean(frame, bx, by, r=1) - PALETTE[s.background]).max() <= TOLERANCE, s.file
        assert s.background != s.colour
        assert re.fullmatch(f"an? {s.colour} {s.shape} on an? {s.background} background", s.caption)


# ---------------------------------------------------------------- determinism and re-runs


def _tree(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(sample_data, tmp_path):
    again = generate(SampleDataConfig(out=str(tmp_path / "same"), videos=12, images=8, seed=0, workers=1))
    assert _tree(again.root) == _tree(sample_data.root)  # media, dataset files and manifest.json
    other = generate(SampleDataConfig(out=str(tmp_path / "other"), videos=12, images=8, seed=1))
    first, second = _tree(sample_data.root), _tree(other.root)
    media = [rel for rel in first if rel.startswith(("videos/", "images/"))]
    assert sum(first[rel] != second.get(rel) for rel in media) == len(media)
    assert [s.colour for s in other.samples] != [s.colour for s in sample_data.samples]


def test_rerun_reuses_right_files_and_remakes_wrong_ones(tmp_path):
    cfg = SampleDataConfig(out=str(tmp_path / "s"), videos=3, images=2, seed=5)
    first = generate(cfg)
    assert (first.stats.made, first.stats.reused) == (5, 0)
    victim = Path(first.path(first.videos[1].file))
    before = {s.file: Path(first.path(s.file)).stat().st_mtime_ns for s in first.samples}

    t0 = time.perf_counter()
    again = generate(cfg)
    assert (again.stats.made, again.stats.reused) == (0, 5) and time.perf_counter() - t0 < 2.0
    assert {s.file: Path(again.path(s.file)).stat().st_mtime_ns for s in again.samples} == before
    assert again == first

    victim.write_bytes(victim.read_bytes()[:1000])  # a truncated file is not "the right content"
    repaired = generate(cfg)
    assert (repaired.stats.made, repaired.stats.reused) == (1, 4)
    assert repaired.videos[1].sha256 == first.videos[1].sha256

    grown = generate(SampleDataConfig(out=str(tmp_path / "s"), videos=4, images=2, seed=5))
    assert grown.stats.made == 1  # a sample never depends on how many there are
    assert {(s.file, s.sha256) for s in grown.samples} >= {(s.file, s.sha256) for s in first.samples}


def test_a_run_cut_short_leaves_no_manifest_and_the_next_run_reuses_its_files(tmp_path):
    cfg = SampleDataConfig(out=str(tmp_path / "s"), videos=2, images=1, seed=4)
    root = Path(generate(cfg).root)
    # A run moves the complete manifest aside before touching files; simulate dying right after.
    (root / "manifest.json").rename(root / ".manifest-previous.json")
    resumed = generate(cfg)
    assert (resumed.stats.made, resumed.stats.reused) == (0, 3)
    assert (root / "manifest.json").is_file() and not (root / ".manifest-previous.json").exists()


def test_smaller_rerun_removes_media_no_sample_owns(tmp_path):
    generate(SampleDataConfig(out=str(tmp_path / "s"), videos=4, images=3, seed=2))
    small = generate(SampleDataConfig(out=str(tmp_path / "s"), videos=2, images=1, seed=2, val_fraction=0.0))
    files = {str(p.relative_to(small.root)) for p in Path(small.root).rglob("*.mp4")}
    assert files == {s.file for s in small.videos} | {f"webvid/videos/{s.page_dir}/{s.id}.mp4" for s in small.videos}
    assert len(list(Path(small.root).rglob("*.jpg"))) == 4  # images/ + three training formats


def test_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not made by sample-data"):
        generate(SampleDataConfig(out=str(tmp_path), videos=1, images=0))
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- dataset files


def _load(m: SampleManifest, key: str):
    path = Path(m.path(m.formats[key].annotations))
    return json.loads(path.read_text())


def test_webvid_csvs_match_the_webvid_release(sample_data):
    m = sample_data
    for key, split in (("webvid_train", "train"), ("webvid_val", "val")):
        with open(m.path(m.formats[key].annotations), newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames) == WEBVID_COLUMNS
            rows = list(reader)
        videos = m.select("video", split)
        assert [r["videoid"] for r in rows] == [s.id for s in videos] and rows
        for r, s in zip(rows, videos, strict=True):
            assert r["contentUrl"] == f"http://127.0.0.1:8000/files/videos/{s.id}.mp4"
            assert re.fullmatch(r"PT\d\dH\d\dM\d\dS", r["duration"]), r["duration"]
            assert int(r["duration"][8:10]) == int(s.duration + 0.5)
            assert re.fullmatch(r"\d{6}_\d{6}", r["page_dir"])
            assert caption_of(r["name"]) == s.caption
            local = Path(m.path(m.formats[key].media_dir), r["page_dir"], f"{r['videoid']}.mp4")
            assert local.read_bytes() == Path(m.path(s.file)).read_bytes()  # Video-LLaMA's local layout
    assert len({s.page_dir for s in m.videos}) >= 2


def test_cc3m_tsvs_are_caption_tab_url_without_header(sample_data):
    m = sample_data
    for key, split in (("cc3m_train", "train"), ("cc3m_val", "val")):
        lines = Path(m.path(m.formats[key].annotations)).read_text().splitlines()
        images = m.select("image", split)
        assert len(lines) == len(images) > 0
        for line, s in zip(lines, images, strict=True):
            caption, url = line.split("\t")
            assert caption == s.caption and url == f"http://127.0.0.1:8000/files/{s.file}"
            assert Path(m.path(url.split("/files/", 1)[1])).is_file()


def test_llava_cc3m_chat_json(sample_data):
    m, chat = sample_data, _load(sample_data, "llava_cc3m")
    train = m.select("image", "train")
    assert [c["id"] for c in chat] == [s.id for s in train]
    for c, s in zip(chat, train, strict=True):
        assert set(c) == {"id", "image", "conversations"} and re.fullmatch(r"GCC_train_\d{9}\.jpg", c["image"])
        assert (
            Path(m.path(m.formats["llava_cc3m"].media_dir), c["image"]).read_bytes()
            == Path(m.path(s.file)).read_bytes()
        )
        human, gpt = c["conversations"]
        assert human["from"] == "human" and human["value"].count("<image>") == 1
        assert gpt == {"from": "gpt", "value": s.caption}


def test_cc_sbu_align_filter_cap(sample_data):
    m, doc = sample_data, _load(sample_data, "cc_sbu_align")
    train = m.select("image", "train")
    assert list(doc) == ["annotations"] and len(doc["annotations"]) == len(train)
    for ann, s in zip(doc["annotations"], train, strict=True):
        assert set(ann) == {"image_id", "caption"}
        assert Path(m.path(m.formats["cc_sbu_align"].media_dir), f"{ann['image_id']}.jpg").is_file()
        assert f"{s.colour} {s.shape}" in ann["caption"] and s.background in ann["caption"]


def test_llava_instruct_conversations_answer_correctly(sample_data):
    m, data = sample_data, _load(sample_data, "llava_instruct")
    train = m.select("image", "train")
    assert len(data) == len(train)
    for entry, s in zip(data, train, strict=True):
        assert re.fullmatch(r"\d{12}", entry["id"]) and entry["image"] == f"{entry['id']}.jpg"
        # Video-LLaMA's Instruct_Dataset opens vis_root/COCO_train2014_<image>.
        assert Path(m.path(m.formats["llava_instruct"].media_dir), "COCO_train2014_" + entry["image"]).is_file()
        turns = entry["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) >= 6
        assert "<image>" in turns[0]["value"] and all("<image>" not in t["value"] for t in turns[1:])
        for q, a in zip(turns[::2], turns[1::2], strict=True):
            if "color is the shape" in q["value"]:
                assert s.colour in a["value"]
            if "color is the background" in q["value"]:
                assert s.background in a["value"]
            if "shape is shown" in q["value"]:
                assert s.shape in a["value"]


def test_videochat_refers_to_webvid_videos_by_page_dir(sample_data):
    m, data = sample_data, _load(sample_data, "videochat")
    train = m.select("video", "train")
    assert len(data) == len(train)
    phrases = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
    for entry, s in zip(data, train, strict=True):
        assert set(entry) == {"video", "QA"} and entry["video"] == f"{s.page_dir}/{s.id}.mp4"
        assert Path(m.path(m.formats["videochat"].media_dir), entry["video"]).is_file()
        text = " ".join(qa["a"] for qa in entry["QA"])
        assert all(set(qa) == {"q", "a"} for qa in entry["QA"])
        assert s.colour in text and s.shape in text and phrases[s.direction] in text
        assert ("pitch rises" in text) == (s.pitch == "rising") and ("pitch falls" in text) == (s.pitch == "falling")


def test_manifest_lists_every_sample_and_format(sample_data):
    loaded = SampleManifest.load(sample_data.root)
    assert loaded == sample_data
    doc = json.loads(Path(sample_data.path("manifest.json")).read_text())
    fields = {"id", "kind", "colour", "shape", "direction", "background", "pitch", "has_audio", "width", "height"}
    fields |= {"fps", "duration", "frames", "caption", "file", "sha256"}
    assert all(fields <= set(s) for s in doc["samples"])
    assert doc["counts"] == {"videos": 12, "images": 8}
    assert set(doc["formats"]) == {"webvid_train", "webvid_val", "cc3m_train", "cc3m_val"} | {
        "llava_cc3m",
        "cc_sbu_align",
        "llava_instruct",
        "videochat",
    }
    for f in sample_data.formats.values():
        assert Path(sample_data.path(f.annotations)).is_file() and Path(sample_data.path(f.media_dir)).is_dir()
    assert str(sample_data.root) not in Path(sample_data.path("manifest.json")).read_text()  # relocatable


# ---------------------------------------------------------------- URL rewriting, over real HTTP


def test_webvid_csv_for_another_server_and_fault_routes(sample_data, media_server, tmp_path):
    bad = sample_data.select("video", "train")[0]
    dest = sample_data.write_webvid_csv(
        str(tmp_path / "webvid.csv"),
        base_url=f"{media_server.base_url}/files",
        url_for=lambda s: media_server.url(s.file, route="status/404") if s.id == bad.id else None,
    )
    with open(dest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["contentUrl"] == f"{media_server.base_url}/status/404/videos/{bad.id}.mp4"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(rows[0]["contentUrl"], timeout=10)
    assert err.value.code == 404
    good = sample_data.select("video", "train")[1]
    with urllib.request.urlopen(rows[1]["contentUrl"], timeout=10) as resp:
        assert resp.read() == Path(sample_data.path(good.file)).read_bytes()

    tsv = sample_data.write_cc3m_tsv(str(tmp_path / "cc3m.tsv"), base_url=f"{media_server.base_url}/files", split=None)
    caption, url = Path(tsv).read_text().splitlines()[-1].split("\t")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == Path(sample_data.path(sample_data.images[-1].file)).read_bytes()


# ---------------------------------------------------------------- planning and config


def chi_square(samples, a: str, b: str) -> float:
    """Pearson's chi-square of the a x b table over its degrees of freedom (about 1 when independent)."""
    joint = collections.Counter((getattr(s, a), getattr(s, b)) for s in samples)
    rows = collections.Counter(getattr(s, a) for s in samples)
    cols = collections.Counter(getattr(s, b) for s in samples)
    n = len(samples)
    stat = sum((joint[(r, c)] - rows[r] * cols[c] / n) ** 2 / (rows[r] * cols[c] / n) for r in rows for c in cols)
    return stat / ((len(rows) - 1) * (len(cols) - 1))


def test_attributes_are_balanced_in_any_prefix_and_in_the_held_out_tail():
    samples = plan(seed=0, videos=480, images=0, val_fraction=0.2)
    for n in range(1, 100):
        for attr, values in (("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS)):
            counts = collections.Counter(getattr(s, attr) for s in samples[:n])
            assert max(counts.values()) - min(counts[v] for v in values) <= 1, (n, attr, counts)
    for other in ("direction", "shape", "has_audio"):  # colour is not confounded with anything else
        assert chi_square(samples, "colour", other) < 3.0, other
    val = [s for s in samples if s.split == "val"]
    assert len(val) == 96 and collections.Counter(s.colour for s in val) == dict.fromkeys(COLOURS, 12)
    assert sum(s.has_audio for s in samples) == 240
    assert collections.Counter(s.pitch for s in samples if s.has_audio).most_common(1)[0][1] < 150


def test_a_sample_does_not_depend_on_the_set_size():
    small = plan(seed=3, videos=10, images=4, val_fraction=0.0)
    large = plan(seed=3, videos=200, images=50, val_fraction=0.0)
    assert small[:10] == large[:10] and small[10:] == large[200:204]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"videos": -1}, "both must be >= 0"),
        ({"videos": 0, "images": 0}, "not both 0"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"base_url": "ftp://host/files"}, "http"),
        ({"out": "s3://bucket/sample"}, "local folder"),
        ({"workers": -2}, "workers"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        SampleDataConfig(**{"out": "x", **kwargs})


def test_every_sample_data_yaml_loads():
    from orchestration.config import load_config

    paths = sorted(Path(__file__).resolve().parents[2].glob("configs/sample_data/*.yaml"))
    assert {p.stem for p in paths} >= {"tiny", "demo"}
    for path in paths:
        cfg = load_config(None, path)
        assert isinstance(cfg, SampleDataConfig) and cfg.videos > 0


# ---------------------------------------------------------------- scale


@pytest.mark.slow
def test_two_hundred_videos_well_under_a_minute_on_two_cores(tmp_path):
    t0 = time.perf_counter()
    m = generate(SampleDataConfig(out=str(tmp_path / "s"), videos=200, images=0, workers=2))
    seconds = time.perf_counter() - t0
    print(f"200 videos, 2 workers: {seconds:.1f} s, {2 * seconds / 200:.3f} core-s per video")
    assert m.stats.made == 200 and seconds < 60
