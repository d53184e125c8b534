"""The real-size frozen encoders and the 7B-shaped training step on a GPU at bf16, as shares of its peak.

    .venv/bin/python -m benchmarks.gpu [--batch 32] [--frames 256] [--steps 5] [--runs 3] [--results DIR]
    .venv/bin/python -m benchmarks.gpu --device cpu --size tiny --peak-tflops 1   # the CPU twin (CI's test)

- encoders: EVA ViT-g/14 + BLIP-2 image Q-Former (the VL features) with ImageBind-Huge vision, and
  ImageBind-Huge audio, at their real shapes with random weights (the speed does not depend on the
  values), forward under bf16 autocast as the feature job runs them: frames/s (audio: 2-s clips/s);
- training: the VL stage-1 step at 7B: a LLaMA-2-7B-shaped LLM frozen in bf16, the VL branch (video
  Q-Former + llama_proj) trainable in fp32 under bf16 autocast (the original's amp), AdamW; a batch of
  --batch samples of cached features ([8, 32, 768] each: what the store holds) with BOS + 32 soft
  tokens + a caption cut at max_txt_len 32, forward + backward + optimizer step: step time, samples/s.

FLOPs are torch's own count (FlopCounterMode, math attention kernel) of one batch; the share of peak is
achieved FLOP/s over the device's dense bf16 peak, looked up from its name (PEAK_BF16) or given with
--peak-tflops. Figures are medians of --runs runs of --steps steps after a warm-up. Writes
<results>/gpu.json; `benchmarks.run` runs this section only where CUDA is available.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from benchmarks.common import RESULTS, machine
from model.config import SIZES
from model.frozen_encoders import FrozenEncoders
from model.image_encoder import IMAGE_ENCODER_SIZES, FrozenImageEncoder
from model.imagebind import IMAGEBIND_SIZES, ImageBindEncoder
from model.llm import FrozenLlama
from model.text import collate
from model.tiny import build_tokenizer, llama_config
from model.video_llama import VideoLLaMA
from orchestration.optim import build_optimizer
from orchestration.samples import TextSpec, caption_text
from orchestration.train_config import ALIGNMENT_PROMPTS

# Dense bf16 tensor-core peaks (NVIDIA datasheets, SXM parts; no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}
# --size: (image encoder, ImageBind, model size) in model/'s tables
SIZE_SETS = {"real": ("eva_vit_g", "huge", "7b"), "tiny": ("tiny", "tiny", "tiny")}
FRAMES_PER_CLIP = 8
CAPTION = "a red circle moves slowly to the left over a plain blue background while the camera stays still " * 3


def peak_flops(device: torch.device, peak_tflops: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak in FLOP/s and where the figure comes from."""
    if peak_tflops:
        return peak_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak known for a CPU: pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    found = next((k for k in PEAK_BF16 if k in name), None)
    return (PEAK_BF16[found], f"PEAK_BF16[{found!r}]") if found else (None, f"{name} not in PEAK_BF16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counted_flops(fn: Callable[[], object]) -> float:
    """torch's FLOP count of one call, with the math attention kernel and without nn.MultiheadAttention's
    fused fast path (ImageBind's), whose matmuls the counter would not see."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def timed(fn: Callable[[], object], device: torch.device, steps: int, runs: int) -> list[float]:
    """Seconds per call, one figure per run of `steps` calls, after one warm-up call."""
    fn()
    sync(device)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        out.append((time.perf_counter() - t0) / steps)
    return out


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def rate(units: int, seconds: list[float], flops: float, peak: float | None, unit: str) -> dict:
    """Throughput and share of peak from per-call seconds and the FLOPs of one call."""
    s = statistics.median(seconds)
    achieved = flops / s
    return {"seconds": [round(x, 5) for x in seconds], "median_s": round(s, 5), f"{unit}_per_s": round(units / s, 2),
            "gflop_per_call": _sig(flops / 1e9), "tflop_per_s": _sig(achieved / 1e12),
            "share_of_peak": _sig(achieved / peak) if peak else None}  # fmt: skip


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def bench_encoders(image_size: str, imagebind_size: str, device: torch.device, dtype: torch.dtype, frames: int,
                   steps: int, runs: int, peak: float | None) -> dict:  # fmt: skip
    """The frame encoders (image Q-Former + ImageBind vision, as encode_frames runs them) and ImageBind audio."""
    torch.manual_seed(0)
    with device:  # random init where it runs: seconds for a billion parameters on a GPU
        image = FrozenImageEncoder(IMAGE_ENCODER_SIZES[image_size])
        imagebind = ImageBindEncoder(IMAGEBIND_SIZES[imagebind_size])
    encoders = FrozenEncoders(image, imagebind, dtype).to(device)
    x = torch.randn(frames, 3, 224, 224, device=device)
    clips = max(1, frames // FRAMES_PER_CLIP)  # the audio of as many videos: 8 clips of 2 s each
    audio = torch.randn(clips, 8, 1, 128, 204, device=device)
    out = {"image_encoder": image_size, "imagebind": imagebind_size, "dtype": str(dtype).removeprefix("torch."),
           "parameters": sum(p.numel() for p in encoders.parameters())}  # fmt: skip
    with torch.no_grad():
        out["frames"] = rate(frames, timed(lambda: encoders.encode_frames(x), device, steps, runs),
                             counted_flops(lambda: encoders.encode_frames(x)), peak, "frames")  # fmt: skip
        out["audio"] = rate(clips * 8, timed(lambda: encoders.encode_audio(audio), device, steps, runs),
                            counted_flops(lambda: encoders.encode_audio(audio)), peak, "clips")  # fmt: skip
    return out


def stage1_batch(model: VideoLLaMA, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A VL stage-1 micro-batch as training reads it from the store: features + caption tokens."""
    tok = model.llm.tokenizer
    spec = TextSpec("vl", model.size.vl.num_query_tokens, "llama2", 32, 512, ALIGNMENT_PROMPTS)
    tensors = collate([caption_text(tok, CAPTION, spec)] * batch, tok.pad_token_id)
    width = model.size.vl.encoder_width
    tensors["vl_features"] = torch.randn(batch, FRAMES_PER_CLIP, 32, width).half().float()  # stored fp16, read fp32
    return {k: v.to(device) for k, v in tensors.items()}


def build_vl_model(size_name: str, device: torch.device, llm_dtype: torch.dtype) -> VideoLLaMA:
    """The LLM frozen in `llm_dtype` at the size's shape (random weights), the VL branch trainable in fp32.
    The tokenizer is the tiny one: its ids (placeholders included) are valid in any LLaMA vocabulary."""
    size = SIZES[size_name]
    tok = build_tokenizer(SIZES["tiny"].llm)
    torch.manual_seed(0)
    with device, default_dtype(llm_dtype):
        llm = LlamaForCausalLM(llama_config(size.llm, tok))
    with device:
        model = VideoLLaMA(size, FrozenLlama(llm, tok), branches=("vl",))
    return model.train()


def bench_train_step(size_name: str, device: torch.device, dtype: torch.dtype, batch: int, steps: int, runs: int,
                     peak: float | None) -> dict:  # fmt: skip
    model = build_vl_model(size_name, device, dtype)
    optimizer = build_optimizer(model.trainable_parameters(), lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999))
    tensors = stage1_batch(model, batch, device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def forward_backward() -> None:
        with autocast:
            loss = model(tensors)
        loss.backward()

    def step() -> None:
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = counted_flops(forward_backward)  # the optimizer's elementwise work is not counted: negligible
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    figures = rate(batch, timed(step, device, steps, runs), flops, peak, "samples")
    out = {"model": size_name, "llm_dtype": str(dtype).removeprefix("torch."), "batch": batch,
           "tokens_per_sample": int(tensors["attention_mask"][0].sum()),
           "llm_parameters": sum(p.numel() for p in model.llm.parameters()),
           "trainable_parameters": sum(p.numel() for _, p in model.trainable_parameters()), **figures}  # fmt: skip
    if device.type == "cuda":
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the twin: with --size tiny)")
    parser.add_argument("--size", choices=sorted(SIZE_SETS), default="real", help="real: ViT-g, ImageBind-H, 7B")
    parser.add_argument("--frames", type=int, default=256, help="frames per encoder call (audio: frames / 8 videos)")
    parser.add_argument("--batch", type=int, default=32, help="samples per training step (the recipe's per GPU)")
    parser.add_argument("--steps", type=int, default=5, help="calls per timed run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up; figures are medians")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if PEAK_BF16 lacks it")
    parser.add_argument("--quick", action="store_true", help="the runner's reduced run: 64 frames, batch 8, 2x1")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, help="unused: the runner passes it to every section")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.batch, args.steps, args.runs = 64, 8, 2, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device here; run it on a GPU machine, or --device cpu --size tiny")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # bf16 on a CPU is emulated: slow
    peak, peak_source = peak_flops(device, args.peak_tflops)
    image_size, imagebind_size, model_size = SIZE_SETS[args.size]
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "benchmark": "gpu",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine({"gpu": name if device.type == "cuda" else None}),
        "device": name,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "peak_source": peak_source,
        "settings": {k: getattr(args, k) for k in ("size", "frames", "batch", "steps", "runs", "quick")},
        "encoders": bench_encoders(image_size, imagebind_size, device, dtype, args.frames, args.steps, args.runs, peak),
    }
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["train_step"] = bench_train_step(model_size, device, dtype, args.batch, args.steps, args.runs, peak)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    e, s = result["encoders"], result["train_step"]
    print(f"{name}: frames {e['frames']['frames_per_s']}/s (share of peak {e['frames']['share_of_peak']}), "
          f"audio {e['audio']['clips_per_s']} clips/s; train step {s['median_s']} s, {s['samples_per_s']} samples/s "
          f"(share of peak {s['share_of_peak']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
