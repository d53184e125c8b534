"""FLOPs of Video-LLaMA's parts, counted from the architecture (model/'s size tables).

2 FLOPs per multiply-add; matmuls and convolutions only (norms, softmax and activations add < 1 %),
the same ops torch.utils.flop_counter counts, which tests/orchestration/test_plan.py checks these against.

    image_encoder_flops(IMAGE_ENCODER_SIZES["eva_vit_g"])   # ~533 GFLOP per frame (ViT-g 519 + Q-Former 14)
    frozen_llm_train_flops(SIZES["7b"].llm, tokens=65)      # ~4 x params x tokens + attention
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import LlmSize, ModelSize, QFormerSize


def linear(n: float, d_in: int, d_out: int) -> float:
    return 2.0 * n * d_in * d_out


def attention(q_tokens: float, kv_tokens: float, width: int) -> float:
    """Q K^T and P V over the full score matrix (eager and math-kernel attention; causal masking included)."""
    return 4.0 * q_tokens * kv_tokens * width


def self_block(n: int, width: int, mlp: int, kv_extra: int = 0) -> float:
    """A transformer block: qkv and output projections, attention, a two-layer MLP."""
    proj = linear(n, width, 3 * width) + linear(n, width, width)
    return proj + attention(n, n + kv_extra, width) + linear(n, width, mlp) + linear(n, mlp, width)


def cross_attention(n_q: float, n_kv: float, width: int, kv_width: int) -> float:
    return 2 * linear(n_q, width, width) + linear(n_kv, kv_width, 2 * width) + attention(n_q, n_kv, width)


def image_encoder_flops(cfg) -> float:
    """One frame through EVA ViT-g/14 and the BLIP-2 image Q-Former (model.image_encoder.ImageEncoderConfig)."""
    vit = linear(cfg.vit_tokens - 1, 3 * cfg.patch_size**2, cfg.vit_width)  # patch embedding
    vit += cfg.vit_depth * self_block(cfg.vit_tokens, cfg.vit_width, cfg.vit_mlp)
    q, w = cfg.num_query_tokens, cfg.qformer_width
    qformer = cfg.qformer_depth * self_block(q, w, cfg.qformer_mlp)
    qformer += len(cfg.cross_attention_layers()) * cross_attention(q, cfg.vit_tokens, w, cfg.vit_width)
    return vit + qformer


def imagebind_vision_flops(cfg) -> float:
    """One frame through ImageBind's vision encoder (model.imagebind.ImageBindConfig): a 2-frame Conv3d stem."""
    stem = linear(cfg.vision_tokens - 1, 3 * cfg.video_frames * cfg.vision_patch**2, cfg.vision_width)
    trunk = cfg.vision_depth * self_block(cfg.vision_tokens, cfg.vision_width, cfg.mlp_ratio * cfg.vision_width)
    return stem + trunk + linear(1, cfg.vision_width, cfg.out_dim)


def imagebind_audio_flops(cfg) -> float:
    """One 2-s clip through ImageBind's audio encoder; its attention has one extra learned key (add_bias_kv)."""
    n = cfg.audio_tokens
    trunk = cfg.audio_depth * self_block(n, cfg.audio_width, cfg.mlp_ratio * cfg.audio_width, kv_extra=1)
    return linear(n - 1, cfg.audio_patch**2, cfg.audio_width) + trunk + linear(1, cfg.audio_width, cfg.out_dim)


def branch_flops(q: QFormerSize, keys: float, llm_hidden: int) -> float:
    """Forward of a trainable branch: its Q-Former (cross-attention in every layer) and the LLM projection."""
    n = q.num_query_tokens
    layer = self_block(n, q.hidden, q.intermediate) + cross_attention(n, keys, q.hidden, q.encoder_width)
    return q.layers * layer + linear(n, q.hidden, llm_hidden)


def llm_flops(llm: LlmSize, tokens: int) -> tuple[float, float]:
    """Forward of one sequence through LLaMA as (weight matmuls incl. lm_head, attention matmuls)."""
    kv = 2 * llm.kv_heads * (llm.hidden // llm.heads)
    layer = linear(tokens, llm.hidden, llm.hidden + kv) + linear(tokens, llm.hidden, llm.hidden)
    layer += linear(tokens, llm.hidden, 2 * llm.intermediate) + linear(tokens, llm.intermediate, llm.hidden)
    weights = llm.layers * layer + linear(tokens, llm.hidden, llm.vocab_size)
    return weights, llm.layers * attention(tokens, tokens, llm.hidden)


def frozen_llm_train_flops(llm: LlmSize, tokens: int) -> float:
    """Forward + backward of the frozen LLM down to its input embeddings (where the soft tokens enter).

    A frozen weight's backward computes only dX, as costly as its forward, never dW: 2N + 2N = ~4N
    per token, not the 6N of training the weights. Attention's two products need gradients for both
    operands: twice their forward.
    """
    weights, attn = llm_flops(llm, tokens)
    return 2 * weights + 3 * attn


@dataclass(frozen=True)
class Encoders:
    """Forward FLOPs of the frozen encoders (model/'s size tables) and the widths the store keeps."""

    vl_frame: float  # EVA ViT-g + image Q-Former, per frame
    ibv_frame: float  # ImageBind vision, per frame
    iba_clip: float  # ImageBind audio, per 2-s clip
    vl_tokens: int  # image Q-Former outputs per frame: the video Q-Former's keys
    vl_width: int
    ib_width: int


def encoders(size: ModelSize) -> Encoders:
    from model.image_encoder import IMAGE_ENCODER_SIZES  # torch + transformers load only when planning
    from model.imagebind import IMAGEBIND_SIZES

    image, ib = IMAGE_ENCODER_SIZES[size.image_encoder], IMAGEBIND_SIZES[size.imagebind]
    flops = image_encoder_flops(image), imagebind_vision_flops(ib), imagebind_audio_flops(ib)
    return Encoders(*flops, image.num_query_tokens, image.qformer_width, ib.out_dim)
