"""`vllama features`: demo weights, an extraction through the CLI on a local Ray, then ls/show/verify/gc."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.media_shards import image_members, video_members, write_media_shard

from orchestration.cli import main
from pipelines.features import format as fmt
from pipelines.features import store as st

REPO = Path(__file__).resolve().parents[2]


def test_help_names_every_action(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["features", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in ("extract", "ls", "show", "verify", "gc", "demo-weights", "fingerprint", "refs/"):
        assert word in out, word
    with pytest.raises(SystemExit):
        main(["features", "extract", "--help"])
    out = capsys.readouterr().out
    assert "configs/features/tiny.yaml" in out and "preprocess.*" in out and "gpus_per_actor" in out


def test_bad_input_exits_2_naming_it(tmp_path, capsys):
    weights = tmp_path / "weights"
    assert main(["features", "demo-weights", str(weights)]) == 0
    argv = ["features", "extract", "--config", str(REPO / "configs/features/tiny.yaml"), f"root={tmp_path / 'st'}",
            f"encoders.weights={weights}", f"sources={{webvid: {tmp_path / 'nothing'}}}"]  # fmt: skip
    assert main(argv) == 2
    assert "sources.webvid=" in capsys.readouterr().err
    assert main([*argv[:-2], f"encoders.weights={tmp_path / 'none'}"]) == 2
    assert "encoder weights missing" in capsys.readouterr().err
    assert main([*argv, "preprocess.views=2", "preprocess.sampling=uniform", "preprocess.crop=false"]) == 2
    assert "identical views" in capsys.readouterr().err


@pytest.mark.slow
def test_extract_then_ls_show_verify_gc(ray_local, tmp_path, sample_data, capsys):
    media, root, weights = tmp_path / "media", tmp_path / "stores", tmp_path / "weights"
    write_media_shard(str(media / "webvid"), 0, [(s.id, video_members(sample_data, s)) for s in sample_data.videos[:2]])
    write_media_shard(str(media / "cc3m"), 0, [(s.id, image_members(sample_data, s)) for s in sample_data.images[:2]])
    assert main(["features", "demo-weights", str(weights), "--seed", "1"]) == 0
    argv = ["features", "extract", "--config", str(REPO / "configs/features/tiny.yaml"), f"root={root}",
            f"encoders.weights={weights}", f"sources={{webvid: {media / 'webvid'}, cc3m: {media / 'cc3m'}}}",
            "preprocess.num_frames=4", "progress=false"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 shards computed, 0 up to date, 0 failed" in out and "frames/s" in out
    store = out.split("store: ")[1].strip()
    fp = store.rsplit("/", 1)[-1]
    assert fmt.complete_shards(store, "webvid") == [0] and fmt.complete_shards(store, "cc3m") == [0]

    assert main(["features", "ls", str(root)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(fp))
    assert " 4  " in line and f"webvid (1 <- {media / 'webvid'})" in line

    assert main(["features", "show", store]) == 0
    out = capsys.readouterr().out
    assert "arrays (fp16): vl [2, 'T', 32, 64]" in out and "webvid: 1 shards, 2 samples (0 failed)" in out
    assert "no training run (gc would remove it)" in out

    assert main(["features", "verify", store]) == 0
    assert "verified 2 shards, 4 samples" in capsys.readouterr().out
    tar = Path(fmt.shard_uri(store, "cc3m", 0))
    tar.write_bytes(tar.read_bytes()[:-2048])
    assert main(["features", "verify", store]) == 1
    assert "cc3m/00000: checksum mismatch" in capsys.readouterr().out

    assert main(["features", "gc", str(root), "--dry-run"]) == 0
    assert f"would remove {store}" in capsys.readouterr().out
    st.register_run(store, "vl_stage1_tiny", {"run_dir": str(tmp_path / "run")})
    assert main(["features", "gc", str(root)]) == 0
    assert "removed 0 store(s)" in capsys.readouterr().out and Path(store).exists()
