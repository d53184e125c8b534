"""`vllama convert import|export` through local files and through S3 (moto server on loopback)."""

from __future__ import annotations

import io

import pytest
import s3fs
import torch
from harness.videollama_reference import al_keys, ignorable_buffers, random_state, vl_keys

from orchestration import cli

# The tiny size's layout (Q-Former width 64, FFN 256, encoder widths 64, LLM width 128).
TINY_VL = vl_keys(128, hidden=64, encoder_width=64, ffn=256)
TINY_AL = al_keys(128, hidden=64, encoder_width=64, ffn=256)


@pytest.fixture
def vllama():
    """The real `vllama` entry point (argv in, exit code out)."""
    return cli.main


def released_file(keys: dict, seed: int, branch: str) -> tuple[bytes, dict]:
    trained = random_state(keys, seed)
    buffer = io.BytesIO()
    torch.save({"model": trained | ignorable_buffers(branch, llm_layers=2, head_dim=32), "epoch": 1}, buffer)
    return buffer.getvalue(), trained


def assert_same_tensors(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].numpy().tobytes() == want[key].numpy().tobytes(), key


def test_convert_is_registered():
    assert "convert" in cli.COMMANDS


def test_convert_has_help(vllama, capsys):
    with pytest.raises(SystemExit) as done:
        vllama(["convert", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "import" in out and "export" in out and "s3://" in out
    with pytest.raises(SystemExit):
        vllama(["convert", "import", "--help"])
    assert "--size" in capsys.readouterr().out


@pytest.mark.parametrize("branch, keys", [("vl", TINY_VL), ("al", TINY_AL)])
def test_round_trip_through_local_files(vllama, tmp_path, capsys, branch, keys):
    data, trained = released_file(keys, seed=3, branch=branch)
    src = tmp_path / "released.pth"
    src.write_bytes(data)
    ours, back = tmp_path / "ours.safetensors", tmp_path / "exported.pth"

    assert vllama(["convert", "import", str(src), str(ours), "--size", "tiny"]) == 0
    report = capsys.readouterr().out
    assert f"branches {branch}; {len(keys)} tensors used" in report and "ignored" in report
    assert vllama(["convert", "export", str(ours), str(back)]) == 0
    exported = torch.load(back, weights_only=True)
    assert list(exported) == ["model"]
    assert_same_tensors(exported["model"], trained)

    assert vllama(["convert", "export", str(ours), str(tmp_path / "bare.pth"), "--bare"]) == 0
    assert_same_tensors(torch.load(tmp_path / "bare.pth", weights_only=True), trained)


def test_round_trip_through_s3(vllama, s3_bucket, s3_server, tmp_path):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.endpoint_url})
    data, trained = released_file(TINY_VL | TINY_AL, seed=4, branch="al")
    fs.pipe(f"{s3_bucket[5:]}/released/both.pth", data)

    ours = f"{s3_bucket}/vllama/both.safetensors"
    assert vllama(["convert", "import", f"{s3_bucket}/released/both.pth", ours, "--size", "tiny"]) == 0
    assert fs.exists(ours[5:])
    assert vllama(["convert", "export", ours, f"{s3_bucket}/exported/both.pth"]) == 0
    fs.invalidate_cache()
    exported = torch.load(io.BytesIO(fs.cat_file(f"{s3_bucket[5:]}/exported/both.pth")), weights_only=True)
    assert_same_tensors(exported["model"], trained)
    # And down to a local file from S3.
    assert vllama(["convert", "export", ours, str(tmp_path / "local.pth")]) == 0
    assert_same_tensors(torch.load(tmp_path / "local.pth", weights_only=True)["model"], trained)


def test_bad_checkpoint_fails_naming_the_key_and_writes_nothing(vllama, tmp_path, capsys):
    state = random_state(TINY_VL, seed=5)
    state["video_Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(256, 64)
    torch.save(state, tmp_path / "bad.pth")
    dst = tmp_path / "ours.safetensors"
    assert vllama(["convert", "import", str(tmp_path / "bad.pth"), str(dst), "--size", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "vllama convert import:" in err and "video_Qformer.bert.encoder.layer.0.intermediate.dense.weight" in err
    assert not dst.exists()
    assert vllama(["convert", "export", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.pth")]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
