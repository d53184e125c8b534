"""ImageBind-Huge, the audio and vision encoders Video-LLaMA's audio-language branch uses (frozen).

Written by hand: no maintained package ships ImageBind. It follows facebookresearch/ImageBind
(`imagebind_model.py`, `transformer.py`, `multimodal_preprocessors.py`, `helpers.py`) and the copy
inside Video-LLaMA, whose `get_audio_feature` keeps one embedding per clip/frame instead of
averaging them. Module names reproduce the original's, so `imagebind_huge.pth` keys
(`modality_trunks.audio.blocks.3.attn.in_proj_weight`, ...) are this module's state-dict keys.

Per modality: preprocessor (patch stem + CLS + learned positions) -> trunk (pre-LN blocks) ->
head (LayerNorm, CLS token, Linear without bias) -> postprocessor (L2-normalise; audio x20).

Left out on purpose: the text/depth/thermal/IMU modalities (unused) and drop path (audio trunk
0.1): a frozen encoder only runs in eval mode, where drop path is the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ImageBindConfig:
    """Sizes of the two ImageBind encoders used. Defaults are the released ImageBind-Huge."""

    out_dim: int = 1024  # the shared embedding space; the AL Q-Former's cross-attention width
    # Vision: ViT-H/14 over a 2-frame "video" (an image is repeated to 2 frames, Conv3d kernel 2x14x14).
    vision_width: int = 1280
    vision_depth: int = 32
    vision_heads: int = 16
    image_size: int = 224
    vision_patch: int = 14
    video_frames: int = 2
    # Audio: a ViT-B over a 128 mel x 204 frame fbank "image", 16x16 patches with stride 10 (overlapping).
    audio_width: int = 768
    audio_depth: int = 12
    audio_heads: int = 12
    num_mel_bins: int = 128
    audio_target_len: int = 204
    audio_patch: int = 16
    audio_stride: int = 10
    mlp_ratio: int = 4
    # The released model multiplies normalised audio embeddings by exp(log_logit_scale) = 20 (a fixed
    # buffer, loaded from the file) and leaves vision embeddings at unit norm. Video-LLaMA trains the AL
    # branch on vision embeddings and runs it on audio embeddings, so the two differ in scale by 20x.
    # True multiplies vision embeddings by 20 too (not the original; changes the features' identity).
    scale_vision_like_audio: bool = False

    def __post_init__(self) -> None:
        for name in ("vision", "audio"):
            width, heads = getattr(self, f"{name}_width"), getattr(self, f"{name}_heads")
            if width % heads:
                raise ValueError(f"ImageBindConfig: {name}_width={width} is not divisible by {name}_heads={heads}")
        if self.image_size % self.vision_patch:
            raise ValueError(f"ImageBindConfig: image_size={self.image_size} is not a multiple of {self.vision_patch}")

    @property
    def audio_grid(self) -> tuple[int, int]:
        """Patches along (mel, time): (128 - 16) // 10 + 1 = 12 by (204 - 16) // 10 + 1 = 19."""
        mel = (self.num_mel_bins - self.audio_patch) // self.audio_stride + 1
        time = (self.audio_target_len - self.audio_patch) // self.audio_stride + 1
        return mel, time

    @property
    def audio_tokens(self) -> int:
        mel, time = self.audio_grid
        return 1 + mel * time  # 229 with CLS

    @property
    def vision_tokens(self) -> int:
        return 1 + (self.image_size // self.vision_patch) ** 2  # 257 with CLS


IMAGEBIND_SIZES: dict[str, ImageBindConfig] = {
    # imagebind_huge() in ImageBind's imagebind_model.py: vision_embed_dim=1280, vision_num_blocks=32,
    # vision_num_heads=16, out_embed_dim=1024; audio keeps the ImageBindModel defaults (768, 12 blocks,
    # 12 heads, 128 mel bins, target length 204, kernel 16, stride 10).
    "huge": ImageBindConfig(),
    # Tests and the demo: same token layout (224 px images, 128x204 fbank), narrow and shallow,
    # out_dim 64 so the AL branch's tiny Q-Former cross-attends to [8, 64].
    "tiny": ImageBindConfig(
        out_dim=64, vision_width=48, vision_depth=2, vision_heads=4, audio_width=32, audio_depth=2, audio_heads=4
    ),
    # The benchmarks' CPU stand-in, next to image_encoder's "small".
    "small": ImageBindConfig(
        out_dim=256, vision_width=256, vision_depth=4, vision_heads=4, audio_width=256, audio_depth=2, audio_heads=4
    ),
}


class PadImageToVideo(nn.Module):
    """(B, C, H, W) -> (B, C, T, H, W) by repeating the image T times (ImageBind's PadIm2Video, "repeat")."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)  # (B, C, 1, H, W)
        if x.shape[2] == 1:
            x = x.repeat(1, 1, self.frames, 1, 1)  # (B, C, T, H, W)
        return x


class PatchStem(nn.Module):
    """Convolutional patchify, then an optional LayerNorm over channels (ImageBind's PatchEmbedGeneric)."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, D, [T,] h, w) -> (B, N, D)
        return x if self.norm_layer is None else self.norm_layer(x)


class PositionEmbedding(nn.Module):
    """Holds the learned positions as `pos_embed`, named as ImageBind's SpatioTemporalPosEmbeddingHelper."""

    def __init__(self, tokens: int, width: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))


class Preprocessor(nn.Module):
    """Patch tokens + CLS + learned positions (ImageBind's RGBDTPreprocessor / AudioPreprocessor)."""

    def __init__(self, stem: PatchStem, tokens: int, width: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.rgbt_stem = stem
        self.pos_embedding_helper = PositionEmbedding(tokens, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(x)  # (B, N, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)  # (B, 1 + N, D)
        return tokens + self.pos_embedding_helper.pos_embed


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block (ImageBind's BlockWithMasking: no layer scale, LayerNorm eps 1e-6).

    Attention is torch's nn.MultiheadAttention, as in the original; the audio trunk sets add_bias_kv,
    which appends a learned key/value (`bias_k`, `bias_v`) to every sequence.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: int, add_bias_kv: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, bias=True, add_bias_kv=add_bias_kv, batch_first=True)
        self.norm_1 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, mlp_ratio * width)
        self.norm_2 = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class Trunk(nn.Module):
    """Optional pre-transformer LayerNorm, then the blocks (ImageBind's SimpleTransformer)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: int, pre_ln: bool, add_bias_kv: bool) -> None:
        super().__init__()
        # Sequential keeps the original key `pre_transformer_layer.0.weight`.
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(width, eps=1e-6) if pre_ln else nn.Identity())
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio, add_bias_kv) for _ in range(depth)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pre_transformer_layer(tokens))


class SelectCLS(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]  # (B, N, D) -> (B, D)


class LogitScale(nn.Module):
    """Multiply by min(exp(log_logit_scale), 100); the scale is a fixed buffer in the released audio model."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("log_logit_scale", torch.tensor(math.log(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.log_logit_scale.exp(), max=100.0) * x


class Normalize(nn.Module):
    """L2-normalise in fp32: under autocast the head output is half precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1)


def _head(width: int, out_dim: int) -> nn.Sequential:
    # Indices 0 and 2 are the original keys (`modality_heads.audio.0.weight`, `.2.weight`).
    return nn.Sequential(nn.LayerNorm(width, eps=1e-6), SelectCLS(), nn.Linear(width, out_dim, bias=False))


class ImageBindEncoder(nn.Module):
    """Frozen ImageBind audio + vision encoders: clips -> per-clip embeddings, frames -> per-frame embeddings."""

    def __init__(self, cfg: ImageBindConfig) -> None:
        super().__init__()
        self.cfg = cfg
        vision_stem = PatchStem(
            nn.Sequential(
                PadImageToVideo(cfg.video_frames),
                nn.Conv3d(3, cfg.vision_width, kernel_size=self.vision_kernel, stride=self.vision_kernel, bias=False),
            )
        )
        # The audio stem's LayerNorm keeps torch's default eps (1e-5), unlike every other norm here.
        audio_stem = PatchStem(
            nn.Conv2d(1, cfg.audio_width, kernel_size=cfg.audio_patch, stride=cfg.audio_stride, bias=False),
            nn.LayerNorm(cfg.audio_width),
        )
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": Preprocessor(vision_stem, cfg.vision_tokens, cfg.vision_width),
                "audio": Preprocessor(audio_stem, cfg.audio_tokens, cfg.audio_width),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": Trunk(cfg.vision_width, cfg.vision_depth, cfg.vision_heads, cfg.mlp_ratio, True, False),
                "audio": Trunk(cfg.audio_width, cfg.audio_depth, cfg.audio_heads, cfg.mlp_ratio, False, True),
            }
        )
        self.modality_heads = nn.ModuleDict(
            {"vision": _head(cfg.vision_width, cfg.out_dim), "audio": _head(cfg.audio_width, cfg.out_dim)}
        )
        self.modality_postprocessors = nn.ModuleDict(
            {"vision": nn.Sequential(Normalize()), "audio": nn.Sequential(Normalize(), LogitScale(20.0))}
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ImageBindEncoder:
        """Frozen: stays in eval mode whatever a parent module asks (LAVIS's `disabled_train`)."""
        return super().train(False)

    @property
    def vision_kernel(self) -> tuple[int, int, int]:
        return (self.cfg.video_frames, self.cfg.vision_patch, self.cfg.vision_patch)

    def _embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        tokens = self.modality_preprocessors[modality](x)
        tokens = self.modality_trunks[modality](tokens)
        return self.modality_postprocessors[modality](self.modality_heads[modality](tokens))

    def encode_vision(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames (B, 3, 224, 224) -> unit-norm embeddings (B, out_dim), fp32."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"ImageBind vision expects frames (B, 3, H, W), got {tuple(frames.shape)}")
        emb = self._embed("vision", frames)
        if self.cfg.scale_vision_like_audio:
            emb = self.modality_postprocessors["audio"][1](emb)
        return emb

    def encode_audio(self, clips: torch.Tensor) -> torch.Tensor:
        """Normalised fbank clips (B, S, 1, 128, 204) -> embeddings of norm 20 (B, S, out_dim), fp32."""
        expected = (1, self.cfg.num_mel_bins, self.cfg.audio_target_len)
        if clips.ndim != 5 or tuple(clips.shape[2:]) != expected:
            raise ValueError(
                f"ImageBind audio expects clips (B, S, {', '.join(map(str, expected))}), got {tuple(clips.shape)}"
            )
        batch, num_clips = clips.shape[:2]
        emb = self._embed("audio", clips.flatten(0, 1))  # (B * S, out_dim)
        return emb.view(batch, num_clips, -1)  # (B, S, out_dim)
