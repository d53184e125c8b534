"""Named model sizes (`tiny`, `7b`, `13b`) as data: the trainable branches, the frozen LLM, and
the names of the frozen encoders whose output widths the branches consume.

Sources cited below:
- [VL] DAMO-NLP-SG/Video-LLaMA `video_llama/models/video_llama.py`: `init_video_Qformer` builds the
  video/audio Q-Formers from `bert-base-uncased` with `num_hidden_layers=2`, `cross_attention_freq=1`,
  `encoder_width` = image Q-Former hidden (768) or ImageBind output (1024); `max_frame_pos=32`,
  `num_video_query_token=32`, `num_audio_query_token=8`, `audio_position_embedding = Embedding(8, 1024)`.
- [BERT] `bert-base-uncased/config.json`: hidden 768, 12 heads, FFN 3072, GELU, dropout 0.1, eps 1e-12,
  initializer_range 0.02.
- [KEYS] ../shared/reference/videollama_checkpoint_keys.md (the released checkpoint shapes).
- [L2-7B] / [L2-13B] `meta-llama/Llama-2-{7b,13b}-hf/config.json`.
- [ENC] DESIGN.md "Model facts": BLIP-2 image Q-Former hidden 768, ImageBind-Huge output 1024.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QFormerSize:
    """One trainable Q-Former branch (video or audio)."""

    hidden: int  # Q-Former width; also the width of the query tokens
    layers: int  # 2 in the original: a small fusion head, not a full BERT
    heads: int
    intermediate: int  # FFN width of `intermediate_query` / `output_query`
    num_query_tokens: int  # = LLM tokens this branch produces (32 VL, 8 AL)
    encoder_width: int  # width of the frozen features it cross-attends to (image Q-Former H or ImageBind D)
    max_positions: int  # rows of the frame/clip position embedding: most frames (VL) or clips (AL) per sample
    dropout: float = 0.1  # [BERT] hidden and attention dropout; the original trains with it on
    layer_norm_eps: float = 1e-12  # [BERT]
    initializer_range: float = 0.02  # [BERT]; also the std of the query-token init

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"Q-Former hidden {self.hidden} must be a multiple of heads {self.heads}")
        sizes = (self.hidden, self.layers, self.heads, self.intermediate, self.num_query_tokens, self.max_positions)
        if min(sizes) < 1:
            raise ValueError(f"Q-Former sizes must be positive: {self}")


@dataclass(frozen=True)
class LlmSize:
    """The frozen LLaMA. A real run loads these from the model directory's config.json; the table
    lets a model be built on the meta device and checks that the loaded LLM matches the branches."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int  # rows of the embedding table; the placeholder ids sit just past it and are never embedded
    max_positions: int
    rms_norm_eps: float
    rope_theta: float = 10000.0


@dataclass(frozen=True)
class ModelSize:
    name: str
    # The frozen encoders, by their keys in model/image_encoder.py `IMAGE_ENCODER_SIZES` and
    # model/imagebind.py `IMAGEBIND_SIZES`. Their output widths are `vl.encoder_width` / `al.encoder_width`.
    image_encoder: str
    imagebind: str
    vl: QFormerSize
    al: QFormerSize
    llm: LlmSize


def _video_qformer(width: int) -> QFormerSize:
    # [VL] + [BERT]: 2 layers of bert-base, cross-attention every layer, 32 queries over 32 frame positions.
    return QFormerSize(
        hidden=768, layers=2, heads=12, intermediate=3072, num_query_tokens=32, encoder_width=width, max_positions=32
    )


def _audio_qformer(width: int) -> QFormerSize:
    # [VL] + [KEYS]: same head over ImageBind's 1024-d output; 8 queries, Embedding(8, 1024).
    return QFormerSize(
        hidden=768, layers=2, heads=12, intermediate=3072, num_query_tokens=8, encoder_width=width, max_positions=8
    )


# [L2-7B]: hidden 4096, 32 layers, 32 heads (no GQA), FFN 11008, vocab 32000, 4096 positions, eps 1e-5.
LLAMA2_7B = LlmSize(
    hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab_size=32000, max_positions=4096,
    rms_norm_eps=1e-5,
)  # fmt: skip
# [L2-13B]: hidden 5120, 40 layers, 40 heads, FFN 13824.
LLAMA2_13B = LlmSize(
    hidden=5120, layers=40, heads=40, kv_heads=40, intermediate=13824, vocab_size=32000, max_positions=4096,
    rms_norm_eps=1e-5,
)  # fmt: skip

# Tiny: for tests and the demo, chosen (not published). Encoder widths are the tiny frozen
# encoders' outputs (image Q-Former H = 64, ImageBind D = 64); Q-Former FFN = 4 x hidden as BERT;
# LLM FFN 344 = 8/3 x 128 rounded up to a multiple of 8, LLaMA's SwiGLU rule; small enough to
# train on caption text on a CPU. `vocab_size` is what `model.tiny.build_tokenizer()` produces
# (it checks this number): 4 specials + 256 bytes + 508 learnt pieces.
TINY_LLM = LlmSize(
    hidden=128, layers=2, heads=4, kv_heads=4, intermediate=344, vocab_size=768, max_positions=512, rms_norm_eps=1e-5
)
_TINY_QFORMER = dict(hidden=64, layers=2, heads=4, intermediate=256, encoder_width=64)

SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(
        name="tiny",
        image_encoder="tiny",
        imagebind="tiny",
        vl=QFormerSize(**_TINY_QFORMER, num_query_tokens=32, max_positions=32),
        al=QFormerSize(**_TINY_QFORMER, num_query_tokens=8, max_positions=8),
        llm=TINY_LLM,
    ),
    "7b": ModelSize(
        name="7b",
        image_encoder="eva_vit_g",  # [ENC] EVA ViT-g/14 + BLIP-2 Q-Former -> 768
        imagebind="huge",  # [ENC] ImageBind-Huge -> 1024
        vl=_video_qformer(768),
        al=_audio_qformer(1024),
        llm=LLAMA2_7B,
    ),
    "13b": ModelSize(
        name="13b",
        image_encoder="eva_vit_g",
        imagebind="huge",
        vl=_video_qformer(768),
        al=_audio_qformer(1024),
        llm=LLAMA2_13B,
    ),
}


def model_size(name: str) -> ModelSize:
    """The named size; the error lists the known names."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; known sizes: {', '.join(SIZES)}")
    return SIZES[name]
