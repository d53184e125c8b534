"""`vllama sample-data`: help text, a real run through the CLI entry point, and its errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from orchestration.cli import build_parser, main
from pipelines.sample_data import SampleManifest

REPO = Path(__file__).resolve().parents[2]


def _subparser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["sample-data"]


def test_help_explains_every_argument(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample-data", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in ("OUT", "--videos", "--images", "--seed", "--base-url", "--config", "KEY=VALUE", "WebVid", "VideoChat"):
        assert word in out, word
    for action in _subparser()._actions:
        assert action.help and len(action.help) > 10, action.dest


def test_cli_run_makes_the_files_and_prints_what_it_made(tmp_path, capsys):
    out = tmp_path / "sample"
    argv = ["sample-data", str(out), "val_fraction=0.25", "--videos", "4", "--images", "2", "--seed", "7"]
    argv += ["--base-url", "http://media.test:9000/files"]
    assert main(argv) == 0

    printed = capsys.readouterr().out
    assert "videos       4  (3 train, 1 val, 2 with audio)" in printed
    assert "images       2  (1 train, 1 val)" in printed
    assert "made 6, reused 0" in printed and "webvid/train/results_train.csv" in printed

    m = SampleManifest.load(str(out))
    assert (len(m.videos), len(m.images), m.seed) == (4, 2, 7)
    assert all(Path(m.path(s.file)).stat().st_size > 500 for s in m.samples)
    with open(m.path(m.formats["webvid_train"].annotations), newline="") as f:
        urls = [row["contentUrl"] for row in csv.DictReader(f)]
    assert urls == [f"http://media.test:9000/files/videos/{s.id}.mp4" for s in m.select("video", "train")]

    assert main(argv) == 0  # a second run reuses everything
    assert "made 0, reused 6" in capsys.readouterr().out


def test_cli_flags_win_over_the_yaml(tmp_path):
    out = tmp_path / "s"
    assert (
        main(["sample-data", str(out), "--config", str(REPO / "configs/sample_data/tiny.yaml"), "--videos", "2"]) == 0
    )
    m = SampleManifest.load(str(out))
    assert (len(m.videos), len(m.images)) == (2, 8)  # videos from the flag, images from tiny.yaml


def test_cli_reports_bad_settings_and_folders(tmp_path, capsys):
    assert main(["sample-data", str(tmp_path / "a"), "videoss=3"]) == 2
    assert "override 'videoss': unknown key; allowed: out, videos, images" in capsys.readouterr().err
    assert main(["sample-data", str(tmp_path / "b"), "--base-url", "ftp://x/files"]) == 2
    assert "must be an http(s) URL" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("not sample data")
    assert main(["sample-data", str(tmp_path / "c")]) == 2
    assert "not made by sample-data" in capsys.readouterr().err


def test_overrides_may_follow_flags(tmp_path):
    from orchestration.cli import build_parser, parse_args

    args = parse_args(build_parser(), ["sample-data", str(tmp_path), "--videos", "3", "seed=5", "images=1"])
    assert args.videos == 3 and args.overrides == ["seed=5", "images=1"]


def test_stray_words_are_still_refused(tmp_path, capsys):
    from orchestration.cli import build_parser, parse_args

    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["sample-data", str(tmp_path), "--videos", "3", "oops"])
    assert "unrecognized arguments: oops" in capsys.readouterr().err
