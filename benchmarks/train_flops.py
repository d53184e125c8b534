"""FLOPs of one training sample, encoders vs trainable part, from the model configs; the CPU stand-in size.

Counted as 2 x (weights a token passes through) x tokens for every Linear, plus 4 x queries x keys x
width per attention layer (scores and weighted sum). Backward is 2x forward where weights train and
1x forward through the frozen LLM (gradients flow to the soft tokens, none to its weights), as in
Video-LLaMA's stage 1. Embedding lookups, norms and softmax are left out (< 1 %).

Per sample:
- encoders (the original runs them every step): 8 frames x (ViT forward + image Q-Former forward);
- trainable part: video Q-Former + projection forward and backward, LLM forward and backward over
  32 soft tokens + the caption's text tokens.

The CPU size keeps the benchmark's small encoders (benchmarks/features.py `small`: ViT 256 x 4) and
a LLaMA of width 512 whose depth is chosen so its encoder/trainable ratio is closest to the real 7B's.
"""

from __future__ import annotations

import dataclasses

import torch

from model.config import SIZES, LlmSize, ModelSize, QFormerSize
from model.image_encoder import IMAGE_ENCODER_SIZES, ImageEncoderConfig

FRAMES = 8
CPU_SIZE = "small"  # the encoders' CPU stand-in in model/'s tables
# FFN 8/3 x 512 rounded to 8 (LLaMA's rule); vocab = the tiny tokenizer's; depth is fitted (`fit_layers`).
CPU_LLM = LlmSize(hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1376, vocab_size=768, max_positions=512,
                  rms_norm_eps=1e-5)  # fmt: skip
# 2 layers, 32 queries, 32 frame positions as the real video Q-Former; width = the small image Q-Former's.
CPU_VIDEO_QFORMER = QFormerSize(hidden=256, layers=2, heads=4, intermediate=1024, num_query_tokens=32,
                                encoder_width=256, max_positions=32)  # fmt: skip


def _attention(queries: int, keys: int, width: int) -> float:
    return 4.0 * queries * keys * width


def encoder_flops(c: ImageEncoderConfig) -> dict[str, float]:
    """Forward FLOPs of one frame through the ViT and the image Q-Former."""
    n, w = c.vit_tokens, c.vit_width
    patches = 2.0 * (n - 1) * 3 * c.patch_size**2 * w
    vit = patches + c.vit_depth * (2.0 * n * (4 * w * w + 2 * w * c.vit_mlp) + _attention(n, n, w))
    q, h = c.num_query_tokens, c.qformer_width
    qformer = c.qformer_depth * (2.0 * q * (4 * h * h + 2 * h * c.qformer_mlp) + _attention(q, q, h))
    cross = 2.0 * q * 2 * h * h + 2.0 * n * 2 * w * h + _attention(q, n, h)  # q, out on queries; k, v on ViT tokens
    qformer += len(c.cross_attention_layers()) * cross
    return {"vit": vit, "qformer": qformer, "total": vit + qformer}


def branch_flops(q: QFormerSize, frames: int, llm_hidden: int) -> float:
    """Forward FLOPs of the video Q-Former (cross-attention every layer, to frames x 32 keys) + projection."""
    n, h, keys = q.num_query_tokens, q.hidden, frames * 32
    layer = 2.0 * n * (4 * h * h + 2 * h * q.intermediate) + _attention(n, n, h)
    layer += 2.0 * n * 2 * h * h + 2.0 * keys * 2 * q.encoder_width * h + _attention(n, keys, h)
    return q.layers * layer + 2.0 * n * h * llm_hidden


def llm_flops(s: LlmSize, tokens: int) -> float:
    """Forward FLOPs of the LLaMA over `tokens` (attention over the whole sequence, lm_head included)."""
    head_dim = s.hidden // s.heads
    proj = 2 * s.hidden * s.hidden + 2 * s.hidden * s.kv_heads * head_dim  # q, o; k, v (GQA-aware)
    layer = 2.0 * tokens * (proj + 3 * s.hidden * s.intermediate) + _attention(tokens, tokens, s.hidden)
    return s.layers * layer + 2.0 * tokens * s.hidden * s.vocab_size


def sample_flops(size: ModelSize, encoder: ImageEncoderConfig, text_tokens: float) -> dict:
    """One sample's encoder forward and trainable-part forward + backward, and their ratio."""
    enc = encoder_flops(encoder)
    tokens = round(size.vl.num_query_tokens + text_tokens)
    llm = 2 * llm_flops(size.llm, tokens)  # forward + backward to the inputs; frozen weights get no gradient
    branch = 3 * branch_flops(size.vl, FRAMES, size.llm.hidden)  # forward + backward with weight gradients
    return {
        "frames": FRAMES,
        "llm_tokens": tokens,
        "encoder_gflop_per_frame": round(enc["total"] / 1e9, 3),
        "encoder_gflop_per_sample": round(FRAMES * enc["total"] / 1e9, 3),
        "train_gflop_per_sample": round((llm + branch) / 1e9, 3),
        "encoder_over_train": round(FRAMES * enc["total"] / (llm + branch), 3),
        "params": parameter_counts(size, encoder),
    }


def parameter_counts(size: ModelSize, encoder: ImageEncoderConfig) -> dict[str, int]:
    """Exact counts from the modules built on the meta device (no memory, no init)."""
    from transformers import LlamaForCausalLM

    from model.branches import VideoBranch
    from model.image_encoder import FrozenImageEncoder
    from model.tiny import llama_config

    with torch.device("meta"):
        modules = {"encoder": FrozenImageEncoder(encoder), "video_branch": VideoBranch(size.vl, size.llm.hidden),
                   "llm": LlamaForCausalLM(llama_config(size.llm))}  # fmt: skip
    return {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}


def cpu_size(layers: int) -> ModelSize:
    """The CPU stand-in: small encoders, a 512-wide LLaMA of `layers` layers, the VL branch at encoder width."""
    tiny = SIZES["tiny"]
    return ModelSize(name="bench-cpu", image_encoder=CPU_SIZE, imagebind=CPU_SIZE, vl=CPU_VIDEO_QFORMER, al=tiny.al,
                     llm=dataclasses.replace(CPU_LLM, layers=layers))  # fmt: skip


def fit_layers(target: float, text_tokens: float, most: int = 24) -> int:
    """LLM depth whose encoder/trainable ratio is closest to `target` (in log terms)."""
    import math

    enc = IMAGE_ENCODER_SIZES[CPU_SIZE]

    def miss(layers: int) -> float:
        return abs(math.log(sample_flops(cpu_size(layers), enc, text_tokens)["encoder_over_train"] / target))

    return min(range(1, most + 1), key=miss)


def real_7b(text_tokens: float = 30) -> dict:
    """The reference setup: EVA ViT-g + BLIP-2 Q-Former, 8 frames; LLaMA-2 7B over 32 soft + ~30 text tokens."""
    return sample_flops(SIZES["7b"], IMAGE_ENCODER_SIZES["eva_vit_g"], text_tokens)
