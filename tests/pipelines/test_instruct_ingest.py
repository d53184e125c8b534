"""The annotation + media sets (LLaVA-CC3M-595K, cc_sbu_align, LLaVA-Instruct-150K, VideoChat-11K) end to
end on a local Ray, from the generated sample files, with VideoChat's videos found in WebVid shards that
`vllama ingest webvid` writes in the test, and S3 on the moto server."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from model.captions import clean_caption
from orchestration import cli
from orchestration.config import from_dict
from pipelines import shards, storage
from pipelines.sources import llava, media_sets, videochat
from pipelines.sources.media_sets import MediaSetsIngestConfig

IMAGE_SETS = {  # set -> (annotation file, media folder) under the sample root
    "llava595k": ("llava_cc3m_595k/chat.json", "llava_cc3m_595k/images"),
    "cc_sbu_align": ("cc_sbu_align/filter_cap.json", "cc_sbu_align/image"),
    "llava_instruct": ("llava_instruct_150k/llava_instruct_150k.json", "llava_instruct_150k/train2014"),
}


def _cfg(sets: dict[str, dict], **overrides) -> MediaSetsIngestConfig:
    return from_dict(MediaSetsIngestConfig, {**sets, "samples_per_shard": 4, "read_threads": 4, "progress": False,
                                             **overrides})  # fmt: skip


def _set(root: str, name: str, out: Path, **kw) -> dict:
    annotations, folder = IMAGE_SETS[name]
    return {"annotations": f"{root}/{annotations}", "media": f"{root}/{folder}", "out": str(out), **kw}


def _samples(out: str) -> list[dict]:
    return [s for i in shards.complete_shards(out) for s in shards.read_samples(shards.shard_files(out, i).tar)]


def _outcomes(out: str) -> list[str]:
    table = pa.concat_tables([shards.read_sidecar(out, i) for i in shards.complete_shards(out)])
    return [s if s == "ok" else c for s, c in zip(*(table.column(n).to_pylist() for n in ("status", "category")),
                                                  strict=True)]  # fmt: skip


def test_keys_paths_and_turns():
    assert media_sets.unique_keys(["7", "7", "a.b", "7"]) == ["7", "7-1", "a_b", "7-2"]
    assert media_sets.safe_media_path("a/./b.jpg") == "a/b.jpg"
    for bad in ("../x.jpg", "/etc/passwd", "a/../../x", "", None):
        with pytest.raises(ValueError):
            media_sets.safe_media_path(bad)
    conv = [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]  # fmt: skip
    assert llava.turns(conv) == [["<image>\nQ1", "A1"], ["Q2", "A2"]]
    with pytest.raises(ValueError, match="turn 1 is 'human'; expected a 'gpt' turn"):
        llava.turns([conv[0], conv[0]])
    with pytest.raises(ValueError, match="the last human turn .2. has no gpt answer"):
        llava.turns(conv[:3])
    with pytest.raises(ValueError, match="no <image> marker"):
        llava.turns(conv[2:])
    assert videochat.turns([{"q": "Q", "a": "A"}, {"q": "Q2", "a": "A2"}]) == [["<video> Q", "A"], ["Q2", "A2"]]
    assert videochat.split_video_path("000001_000050/1000000003.mp4") == ("000001_000050", "1000000003")


def test_each_set_matches_its_source_exactly(ray_local, sample_data, tmp_path):
    root = sample_data.root
    sets = {name: _set(root, name, tmp_path / name) for name in IMAGE_SETS}
    sets["videochat"] = {"annotations": f"{root}/videochat_11k/videochat_instruct_11k.json",
                         "media": f"{root}/webvid/videos", "out": str(tmp_path / "videochat")}  # fmt: skip
    summaries = media_sets.run(_cfg(sets), list(sets))
    assert {k: (s.ok, s.failed) for k, s in summaries.items()} == {
        "llava595k": (6, 0), "cc_sbu_align": (6, 0), "llava_instruct": (6, 0), "videochat": (10, 0)}  # fmt: skip

    for name, (annotation_file, folder) in IMAGE_SETS.items():
        source = json.loads(Path(root, annotation_file).read_text())
        entries = source["annotations"] if name == "cc_sbu_align" else source
        samples = _samples(sets[name]["out"])
        assert len(samples) == len(entries) == 6
        for s, entry in zip(samples, entries, strict=True):
            meta = json.loads(s["json"])
            assert meta["original"] == entry and list(meta["original"]) == list(entry)  # values and key order
            media = entry["image_id"] + ".jpg" if name == "cc_sbu_align" else entry["image"]
            media = "COCO_train2014_" + media if name == "llava_instruct" else media
            assert s["jpg"] == Path(root, folder, media).read_bytes() and meta["media"] == media
            assert meta["image"]["sha256"] == hashlib.sha256(s["jpg"]).hexdigest()
            if name == "cc_sbu_align":
                assert s["__key__"] == entry["image_id"] and s["txt"].decode() == entry["caption"] == meta["caption"]
                assert "turns" not in meta
            else:
                conv = entry["conversations"]
                pairs = [[h["value"], g["value"]] for h, g in zip(conv[::2], conv[1::2], strict=True)]
                assert s["__key__"] == entry["id"] and meta["turns"] == pairs and meta["media_marker"] == "<image>"
        if name == "llava595k":  # the caption set: txt is the answer, cleaned as Video-LLaMA's processor does
            assert [s["txt"].decode() for s in samples] == [clean_caption(e["conversations"][1]["value"])
                                                            for e in entries]  # fmt: skip

    chats = json.loads(Path(root, "videochat_11k/videochat_instruct_11k.json").read_text())
    for s, entry in zip(_samples(sets["videochat"]["out"]), chats, strict=True):
        meta = json.loads(s["json"])
        assert meta["original"] == entry and s["__key__"] == Path(entry["video"]).stem
        assert s["mp4"] == Path(root, "webvid/videos", entry["video"]).read_bytes()
        assert meta["turns"] == [
            [("<video> " if i == 0 else "") + qa["q"], qa["a"]] for i, qa in enumerate(entry["QA"])
        ]
        video = next(v for v in sample_data.videos if v.id == s["__key__"])
        assert (meta["video"]["width"], meta["video"]["height"], meta["video"]["has_audio"]) == (
            video.width, video.height, video.has_audio)  # fmt: skip


def test_missing_broken_and_malformed_entries_are_failed_rows(ray_local, sample_data, tmp_path):
    shutil.copytree(Path(sample_data.root, "cc_sbu_align"), tmp_path / "cc_sbu_align")
    image = tmp_path / "cc_sbu_align/image"
    (image / "1.jpg").unlink()
    (image / "2.jpg").write_bytes((image / "2.jpg").read_bytes()[:600])
    (image / "3.jpg").write_bytes(b"<!doctype html><html><body>Not here.</body></html>")
    doc = json.loads((tmp_path / "cc_sbu_align/filter_cap.json").read_text())
    doc["annotations"] += [
        {"image_id": "../../secret", "caption": "x"},
        {"image_id": "9"},
        {"image_id": "0", "caption": "Again."},
    ]
    (tmp_path / "cc_sbu_align/filter_cap.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    cfg = _cfg({"cc_sbu_align": {"annotations": str(tmp_path / "cc_sbu_align/filter_cap.json"), "media": str(image),
                                 "out": str(out)}}, max_bytes=100_000)  # fmt: skip
    summary = media_sets.run_set(cfg, "cc_sbu_align")
    assert _outcomes(str(out)) == ["ok", "missing_media", "decode_error", "not_image", "ok", "ok", "bad_row", "bad_row",
                                   "ok"]  # fmt: skip
    errors = pa.concat_tables([shards.read_sidecar(str(out), i) for i in range(3)]).column("error").to_pylist()
    assert errors[1] == f"{image}/1.jpg: no such file"
    assert errors[3].endswith("(3.jpg): an HTML/XML/JSON document")
    assert errors[6].endswith("filter_cap.json entry 6: media path '../../secret.jpg' leaves the media folder")
    assert errors[7].endswith("entry 7: needs a string 'image_id' and a non-empty 'caption'")
    assert [s["__key__"] for s in _samples(str(out))] == ["0", "4", "5", "0-1"]  # a repeated id gets -1
    assert summary.categories == {"ok": 4, "missing_media": 1, "decode_error": 1, "not_image": 1, "bad_row": 2}

    big = _cfg({"cc_sbu_align": {**dataclasses.asdict(cfg.cc_sbu_align), "out": str(tmp_path / "big")}}, max_bytes=1000)
    assert "too_large" in media_sets.run_set(big, "cc_sbu_align").categories


def test_incremental_rerun_does_nothing_and_retry_failed_rereads_only_failed_rows(ray_local, sample_data, tmp_path):
    shutil.copytree(Path(sample_data.root, "cc_sbu_align"), tmp_path / "cc_sbu_align")
    (tmp_path / "cc_sbu_align/image/1.jpg").rename(tmp_path / "1.jpg")  # missing for the first run
    out = str(tmp_path / "out")
    sets = {"cc_sbu_align": {"annotations": str(tmp_path / "cc_sbu_align/filter_cap.json"),
                             "media": str(tmp_path / "cc_sbu_align/image"), "out": out}}  # fmt: skip
    first = media_sets.run_set(_cfg(sets), "cc_sbu_align")
    assert first.categories == {"ok": 5, "missing_media": 1} and shards.complete_shards(out) == [0, 1]
    tars = [storage.read_bytes(shards.shard_files(out, i).tar) for i in (0, 1)]

    again = media_sets.run_set(_cfg(sets), "cc_sbu_align")
    assert again.rows == 0 and "nothing to do" in again.text()

    (tmp_path / "1.jpg").rename(tmp_path / "cc_sbu_align/image/1.jpg")  # the file turns up
    retry = media_sets.run_set(_cfg(sets, mode="retry-failed"), "cc_sbu_align")
    assert retry.rows == 1 and retry.categories == {"ok": 1} and retry.retried_from == {2: [0]}
    assert [s["__key__"] for s in shards.read_samples(shards.shard_files(out, 2).tar)] == ["1"]
    assert [storage.read_bytes(shards.shard_files(out, i).tar) for i in (0, 1)] == tars  # old shards untouched
    assert sorted(s["__key__"] for s in _samples(out)) == [str(i) for i in range(6)]
    assert media_sets.run_set(_cfg(sets, mode="retry-failed"), "cc_sbu_align").rows == 0


def test_llava595k_from_a_zip_on_s3_matches_the_folder_run(ray_local, sample_data, s3_bucket, tmp_path):
    root = sample_data.root
    local = media_sets.run_set(_cfg({"llava595k": _set(root, "llava595k", tmp_path / "local")}), "llava595k")
    assert local.ok == 6
    archive = tmp_path / "images.zip"  # as LLaVA ships it: the files under images/ inside the archive
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(Path(root, "llava_cc3m_595k/images").iterdir()):
            z.write(f, f"images/{f.name}")
    storage.write_bytes(f"{s3_bucket}/llava/images.zip", archive.read_bytes())
    storage.write_bytes(f"{s3_bucket}/llava/chat.json", Path(root, "llava_cc3m_595k/chat.json").read_bytes())
    out = f"{s3_bucket}/shards/llava595k"
    sets = {"llava595k": {"annotations": f"{s3_bucket}/llava/chat.json", "media": f"{s3_bucket}/llava/images.zip",
                          "out": out}}  # fmt: skip
    assert media_sets.run_set(_cfg(sets), "llava595k").ok == 6
    got = list(shards.webdataset([shards.shard_files(out, i).tar for i in shards.complete_shards(out)]))
    assert [s["__key__"] for s in got] == [im.id for im in sample_data.select("image", "train")]
    for i in (0, 1):
        assert storage.read_bytes(shards.shard_files(out, i).tar) == storage.read_bytes(
            shards.shard_files(str(tmp_path / "local"), i).tar)  # fmt: skip


def test_instruct_cli_with_videochat_videos_from_webvid_shards(ray_local, sample_data, media_server, tmp_path):
    """`vllama ingest webvid` writes WebVid shards (one train video left out), then `vllama ingest instruct`
    runs the three stage-2 sets; VideoChat takes its videos from those shards."""
    videos = sample_data.select("video", "train")
    gone = videos[3]
    csv = sample_data.write_webvid_csv(str(tmp_path / "webvid.csv"), base_url=f"{media_server.base_url}/files")
    lines = Path(csv).read_text().splitlines()
    Path(csv).write_text("\n".join(line for line in lines if not line.startswith(gone.id)) + "\n")
    webvid_out = tmp_path / "webvid"
    assert cli.main(["ingest", "webvid", f"csv=[{csv}]", f"out={webvid_out}", "samples_per_shard=4", "progress=false",
                     "download.allow_networks=[127.0.0.0/8]"]) == 0  # fmt: skip

    root = sample_data.root
    config = {name: _set(root, name, tmp_path / name) for name in ("cc_sbu_align", "llava_instruct")}
    config["videochat"] = {"annotations": f"{root}/videochat_11k/videochat_instruct_11k.json",
                           "webvid_shards": [str(webvid_out)], "out": str(tmp_path / "videochat")}  # fmt: skip
    (tmp_path / "instruct.yaml").write_text(yaml.safe_dump({**config, "samples_per_shard": 4, "progress": False}))
    assert cli.main(["ingest", "instruct", "--config", str(tmp_path / "instruct.yaml")]) == 0
    assert [len(_samples(str(tmp_path / n))) for n in ("cc_sbu_align", "llava_instruct", "videochat")] == [6, 6, 9]

    out = str(tmp_path / "videochat")
    assert Counter(_outcomes(out)) == {"ok": 9, "missing_media": 1}
    sidecar = pa.concat_tables([shards.read_sidecar(out, i) for i in shards.complete_shards(out)]).to_pylist()
    missing = next(r for r in sidecar if r["status"] != "ok")
    assert missing["key"] == gone.id and missing["media_uri"] == ""
    assert missing["error"] == f"{gone.page_dir}/{gone.id}.mp4: in no complete WebVid shard under {webvid_out}"
    webvid_mp4 = {s["__key__"]: s["mp4"] for s in _samples(str(webvid_out))}
    for s in _samples(out):
        source_file = Path(root, "webvid/videos", json.loads(s["json"])["media"])
        assert s["mp4"] == webvid_mp4[s["__key__"]] == source_file.read_bytes()
    located = next(r for r in sidecar if r["status"] == "ok")
    assert located["media_uri"].startswith(str(webvid_out)) and located["media_size"] > 0


def test_cli_help_and_missing_sections(tmp_path, capsys):
    for name in ("llava595k", "cc-sbu-align", "llava-instruct", "videochat", "instruct"):
        with pytest.raises(SystemExit) as done:
            cli.main(["ingest", name, "--help"])
        assert done.value.code == 0
    text = capsys.readouterr().out
    assert "COCO_train2014_<image>" in text and "webvid_shards" in text and "run `vllama ingest webvid` first" in text
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"cc_sbu_align": {"annotations": "a.json", "media": "m",
                                                                      "out": str(tmp_path / "o")}}))  # fmt: skip
    assert cli.main(["ingest", "instruct", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "llava_instruct: not set in the config" in capsys.readouterr().err
