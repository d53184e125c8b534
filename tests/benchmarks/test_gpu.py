"""The GPU section (benchmarks/gpu.py): its CPU twin in CI (tiny sizes, seconds), the real sizes where a
GPU is present, and the runner's handling of a machine without one."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu, report
from benchmarks import run as runner
from model.config import SIZES
from model.image_encoder import IMAGE_ENCODER_SIZES
from model.imagebind import IMAGEBIND_SIZES
from orchestration import flops


def check(result: dict, frames: int, batch: int) -> None:
    """Throughputs, TFLOP/s and shares follow from the runs and the counted FLOPs."""
    e, t = result["encoders"], result["train_step"]
    peak = result["peak_bf16_tflops"] * 1e12
    for part, units, key in ((e["frames"], frames, "frames_per_s"), (e["audio"], frames, "clips_per_s"),
                             (t, batch, "samples_per_s")):  # fmt: skip
        assert part["median_s"] == pytest.approx(sorted(part["seconds"])[len(part["seconds"]) // 2], abs=1e-5)
        assert part[key] == pytest.approx(units / part["median_s"], rel=1e-3)
        achieved = part["gflop_per_call"] * 1e9 / part["median_s"]
        assert part["tflop_per_s"] == pytest.approx(achieved / 1e12, rel=0.01)  # the JSON's rounding
        assert part["share_of_peak"] == pytest.approx(achieved / peak, rel=0.01)
        assert 0 < part["share_of_peak"] < 1


def test_cpu_twin_measures_the_same_things_at_tiny_size(tmp_path):
    frames, batch = 16, 2
    args = ["--device", "cpu", "--size", "tiny", "--peak-tflops", "1", "--frames", str(frames), "--batch", str(batch),
            "--steps", "1", "--runs", "3", "--results", str(tmp_path)]  # fmt: skip
    assert gpu.main(args) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["device"] == "cpu" and result["peak_source"] == "--peak-tflops"
    check(result, frames, batch)
    e, t = result["encoders"], result["train_step"]
    # torch's count agrees with the plan's formulas: image Q-Former path + ImageBind vision per frame
    per_frame = flops.image_encoder_flops(IMAGE_ENCODER_SIZES["tiny"]) + flops.imagebind_vision_flops(
        IMAGEBIND_SIZES["tiny"]
    )
    assert e["frames"]["gflop_per_call"] == pytest.approx(frames * per_frame / 1e9, rel=0.05)
    assert e["audio"]["gflop_per_call"] == pytest.approx(
        frames / 8 * 8 * flops.imagebind_audio_flops(IMAGEBIND_SIZES["tiny"]) / 1e9, rel=0.05
    )
    model = gpu.build_vl_model("tiny", torch.device("cpu"), torch.float32)
    assert t["llm_parameters"] == sum(p.numel() for p in model.llm.parameters())
    assert t["trainable_parameters"] == sum(p.numel() for _, p in model.trainable_parameters())
    assert model.llm.hidden_size == SIZES["tiny"].llm.hidden and model.llm.dtype == torch.float32
    assert t["llm_dtype"] == "float32" and t["batch"] == batch
    assert 1 + SIZES["tiny"].vl.num_query_tokens < t["tokens_per_sample"] <= 1 + 32 + 32 + 1

    text = report.gpu(result, tmp_path, tmp_path / "PERFORMANCE.md")
    assert f"| {e['frames']['frames_per_s']:.0f} frames/s |" in text
    assert f"{100 * t['share_of_peak']:.1f} %" in text and "**cpu**" in text


def test_runner_skips_the_section_without_cuda_and_keeps_the_last_gpu_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "cuda_available", lambda: False)
    section = next(s for s in runner.SECTIONS if s.name == "gpu")
    status = runner.run_section(section, quick=True, results=tmp_path, work=tmp_path)
    assert status["status"] == "skipped" and "no CUDA device" in status["reason"]
    assert not (tmp_path / "gpu.json").exists()
    assert report.block(section, None, status, tmp_path, tmp_path / "doc.md").startswith("_Last run: skipped (no CUDA")
    earlier = {"date": "d", "machine": {"cpu": "x", "cores": 1, "memory_gib": 1, "versions": {}},
               "device": "NVIDIA H100", "peak_bf16_tflops": 989.0, "peak_source": "PEAK_BF16['H100']",
               "settings": {"frames": 256, "batch": 32, "steps": 5, "runs": 3},
               "encoders": {"image_encoder": "eva_vit_g", "imagebind": "huge", "dtype": "bfloat16",
                            "frames": {"median_s": 1.0, "frames_per_s": 256.0, "gflop_per_call": 2.0e5,
                                       "tflop_per_s": 200.0, "share_of_peak": 0.2},
                            "audio": {"median_s": 0.1, "clips_per_s": 320.0, "gflop_per_call": 1.0e3,
                                      "tflop_per_s": 10.0, "share_of_peak": 0.01}},
               "train_step": {"model": "7b", "llm_parameters": 6.7e9, "llm_dtype": "bfloat16", "batch": 32,
                              "tokens_per_sample": 66, "median_s": 0.5, "samples_per_s": 64.0,
                              "gflop_per_call": 5.0e4, "tflop_per_s": 100.0, "share_of_peak": 0.1}}  # fmt: skip
    text = report.block(section, earlier, status, tmp_path, tmp_path / "doc.md")
    assert text.startswith("_Last run: skipped") and "**NVIDIA H100**" in text and "| 20.0 % |" in text


def test_a_cuda_run_on_a_machine_without_cuda_says_what_to_do(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU test below covers it")
    with pytest.raises(SystemExit, match="no CUDA device here; run it on a GPU machine, or --device cpu --size tiny"):
        gpu.main(["--results", str(tmp_path)])


@pytest.mark.gpu
@pytest.mark.timeout(900)
def test_real_sizes_on_the_gpu(tmp_path):
    """ViT-g + Q-Former + ImageBind-H and the 7B step at bf16; the figures land in the JSON the doc reads."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; the CPU twin above runs the same code at tiny size")
    assert gpu.main(["--quick", "--results", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    check(result, 64, 8)
    assert result["train_step"]["llm_parameters"] == 6_738_415_616  # LLaMA-2 7B's shape
    assert result["encoders"]["dtype"] == "bfloat16" and result["train_step"]["max_memory_gib"] > 12.5
    print(json.dumps({k: result[k] for k in ("device", "encoders", "train_step")}, indent=1))
