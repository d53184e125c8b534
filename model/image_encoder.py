"""The frozen image path of Video-LLaMA's VL branch: EVA ViT-g/14 -> ln_vision -> BLIP-2 image Q-Former.

transformers has both architectures: `Blip2VisionModel` is LAVIS's EVA ViT-g (qkv without bias plus
separate q/v biases, pre-LN blocks, exact GELU, no final norm) and `Blip2QFormerModel` is the BLIP-2
Q-Former with the text parts removed. Two LAVIS details transformers does not reproduce, handled here:

- `ln_vision` is a plain `nn.LayerNorm(1408)` (eps 1e-5, not the ViT's 1e-6) that LAVIS computes in
  fp32 under fp16 autocast. transformers maps `ln_vision` to `post_layernorm`, built with the ViT's eps,
  so `post_layernorm` is replaced by `Fp32LayerNorm(eps=1e-5)`; its keys are unchanged.
- Video-LLaMA uses 39 blocks of the 40-block EVA-CLIP-g (the penultimate layer's features).

Output per frame: the 32 query tokens' last hidden states, [32, 768] (the feature store's VL unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel


@dataclass(frozen=True)
class ImageEncoderConfig:
    """Sizes of the ViT and the image Q-Former. Defaults are what Video-LLaMA loads from LAVIS."""

    image_size: int = 224
    patch_size: int = 14
    vit_width: int = 1408
    vit_depth: int = 39  # EVA-CLIP-g has 40 blocks; LAVIS's create_eva_vit_g builds 39 (penultimate features)
    vit_heads: int = 16  # 1408 // 88
    vit_mlp: int = 6144  # int(1408 * 4.3637)
    vit_eps: float = 1e-6
    ln_vision_eps: float = 1e-5  # LAVIS `LayerNorm(num_features)`: torch's default eps
    qformer_width: int = 768  # bert-base-uncased
    qformer_depth: int = 12
    qformer_heads: int = 12
    qformer_mlp: int = 3072
    qformer_eps: float = 1e-12
    cross_attention_freq: int = 2  # cross-attention to the ViT in layers 0, 2, ..., 10
    num_query_tokens: int = 32

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"ImageEncoderConfig: image_size={self.image_size} is not a multiple of {self.patch_size}")
        for name in ("vit", "qformer"):
            width, heads = getattr(self, f"{name}_width"), getattr(self, f"{name}_heads")
            if width % heads:
                raise ValueError(f"ImageEncoderConfig: {name}_width={width} is not divisible by {name}_heads={heads}")

    @property
    def vit_tokens(self) -> int:
        return 1 + (self.image_size // self.patch_size) ** 2  # 257: CLS + 16 x 16 patches

    def cross_attention_layers(self) -> list[int]:
        return [i for i in range(self.qformer_depth) if i % self.cross_attention_freq == 0]


IMAGE_ENCODER_SIZES: dict[str, ImageEncoderConfig] = {
    # LAVIS eva_vit.py create_eva_vit_g (embed_dim 1408, depth 39, heads 1408 // 88, mlp_ratio 4.3637,
    # patch 14, LayerNorm eps 1e-6) + blip2.py init_Qformer (bert-base-uncased, cross_attention_freq 2,
    # encoder_width 1408, 32 query tokens) as Video-LLaMA's video_llama.py builds them.
    "eva_vit_g": ImageEncoderConfig(),
    # Tests and the demo: the same 224 px / patch 14 token layout (257 tokens) and 32 query tokens, with
    # a 64-wide Q-Former so the VL features are [T, 32, 64].
    "tiny": ImageEncoderConfig(
        vit_width=48, vit_depth=2, vit_heads=4, vit_mlp=192, qformer_width=64, qformer_depth=2, qformer_heads=4,
        qformer_mlp=128,
    ),
    # The benchmarks' CPU stand-in (benchmarks/features.py, train_step.py): big enough that the encoder's
    # share of a training step can be fitted to the real 7B setup's (benchmarks/train_flops.py).
    "small": ImageEncoderConfig(
        vit_width=256, vit_depth=4, vit_heads=4, vit_mlp=1024, qformer_width=256, qformer_depth=2, qformer_heads=4,
        qformer_mlp=1024,
    ),
}  # fmt: skip


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, cast back (LAVIS blip2.py `LayerNorm`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = nn.functional.layer_norm(
                x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
            )
        return out.to(x.dtype)


def vision_config(cfg: ImageEncoderConfig) -> Blip2VisionConfig:
    return Blip2VisionConfig(
        hidden_size=cfg.vit_width,
        intermediate_size=cfg.vit_mlp,
        num_hidden_layers=cfg.vit_depth,
        num_attention_heads=cfg.vit_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="gelu",  # exact (erf) GELU, as nn.GELU in LAVIS
        layer_norm_eps=cfg.vit_eps,
        qkv_bias=True,
        attention_dropout=0.0,
    )


def qformer_config(cfg: ImageEncoderConfig) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        hidden_size=cfg.qformer_width,
        num_hidden_layers=cfg.qformer_depth,
        num_attention_heads=cfg.qformer_heads,
        intermediate_size=cfg.qformer_mlp,
        hidden_act="gelu",
        layer_norm_eps=cfg.qformer_eps,
        cross_attention_frequency=cfg.cross_attention_freq,
        encoder_hidden_size=cfg.vit_width,
        use_qformer_text_input=False,  # Video-LLaMA deletes the text FFN, word/position embeddings and cls head
    )


class FrozenImageEncoder(nn.Module):
    """Frames (B, 3, 224, 224), CLIP-normalised -> image Q-Former outputs (B, 32, qformer_width).

    Attribute names follow transformers (`vision`, `qformer`) plus `query_tokens`; the LAVIS key names
    are mapped onto them by `model.encoder_weights`.
    """

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = Blip2VisionModel(vision_config(cfg))
        self.vision.post_layernorm = Fp32LayerNorm(cfg.vit_width, eps=cfg.ln_vision_eps)  # = LAVIS ln_vision
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.qformer_width))
        self.qformer = Blip2QFormerModel(qformer_config(cfg))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        """Frozen: stays in eval mode whatever a parent module asks (LAVIS's `disabled_train`)."""
        return super().train(False)

    def encode_vit(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> ln_vision(ViT(frames)), (B, 257, vit_width)."""
        size = self.cfg.image_size
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, size, size):
            raise ValueError(f"image encoder expects frames (B, 3, {size}, {size}), got {tuple(frames.shape)}")
        return self.vision(pixel_values=frames).last_hidden_state

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        image_embeds = self.encode_vit(frames)  # (B, 257, 1408)
        queries = self.query_tokens.expand(frames.shape[0], -1, -1)  # (B, 32, 768)
        # Every ViT token is attended to (LAVIS passes an all-ones mask), so no mask is given.
        out = self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds)
        return out.last_hidden_state  # (B, 32, 768)
