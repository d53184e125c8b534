"""Everything frozen in Video-LLaMA, built from checkpoint files: what the feature-extraction job runs.

One object, loaded once per worker:
- `encode_frames`: normalised frames (B, 3, 224, 224) -> image Q-Former outputs (B, 32, H) and
  ImageBind vision embeddings (B, D), the VL and AL training features of a frame.
- `encode_audio`: fbank clips (B, 8, 1, 128, 204) -> ImageBind audio embeddings (B, 8, D).

Precision: a bf16/fp16 `dtype` runs the forward under autocast, as Video-LLaMA runs its encoders under
fp16 autocast (its ViT's Linear/Conv weights are also stored in fp16; autocast casts fp32 weights to the
same values per op, so parameters stay fp32 here at the cost of 2 bytes per parameter more memory).
LayerNorms, ln_vision and the L2 normalisation run in fp32. Outputs are fp32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.encoder_weights import (
    LoadReport,
    load_image_encoder,
    load_imagebind,
    save_random_blip2,
    save_random_eva_vit,
    save_random_imagebind,
)
from model.image_encoder import IMAGE_ENCODER_SIZES, FrozenImageEncoder
from model.imagebind import IMAGEBIND_SIZES, ImageBindEncoder

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class EncoderCheckpoints:
    """Local paths of the three original files. `eva_vit` may be None when the BLIP-2 file holds the ViT."""

    blip2: Path
    imagebind: Path
    eva_vit: Path | None = None

    @classmethod
    def in_directory(cls, directory: str | Path) -> EncoderCheckpoints:
        """The released file names in one directory."""
        d = Path(directory)
        return cls(d / "blip2_pretrained_flant5xxl.pth", d / "imagebind_huge.pth", d / "eva_vit_g.pth")


def save_random_checkpoints(
    directory: str | Path, image_size: str = "tiny", imagebind_size: str = "tiny", seed: int = 0, init: str = "trained"
) -> EncoderCheckpoints:
    """Random-valued files in the original layouts and names, for tests and the demo (loaded like real ones).
    `init="fan_in"` makes tiny encoders whose features keep what the frames show (see encoder_weights)."""
    paths = EncoderCheckpoints.in_directory(directory)
    save_random_eva_vit(paths.eva_vit, IMAGE_ENCODER_SIZES[image_size], seed, init=init)
    save_random_blip2(paths.blip2, IMAGE_ENCODER_SIZES[image_size], seed + 1, init=init)
    save_random_imagebind(paths.imagebind, IMAGEBIND_SIZES[imagebind_size], seed + 2, init=init)
    return paths


def _on_meta(build):
    """Build on the meta device and allocate uninitialised storage: loading fills every tensor, so
    the random initialisation of a billion parameters is skipped."""
    with torch.device("meta"):
        module = build()
    stray = [name for name, _ in module.named_buffers() if name not in module.state_dict()]
    if stray:  # a buffer no checkpoint carries would be left uninitialised
        raise RuntimeError(f"{type(module).__name__}: non-persistent buffers {stray} cannot be built on meta")
    return module.to_empty(device="cpu")


class FrozenEncoders(nn.Module):
    """The frozen ViT + image Q-Former and ImageBind audio/vision, in eval mode with gradients off."""

    def __init__(self, image: FrozenImageEncoder, imagebind: ImageBindEncoder, dtype: torch.dtype = torch.float32):
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype} not supported; use one of {_DTYPES} (fp32 on CPU, bf16/fp16 on GPU)")
        self.image = image
        self.imagebind = imagebind
        self.dtype = dtype
        self.reports: list[LoadReport] = []
        self.eval()

    @classmethod
    def from_checkpoints(
        cls,
        paths: EncoderCheckpoints,
        image_size: str = "eva_vit_g",
        imagebind_size: str = "huge",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> FrozenEncoders:
        """Build both encoders at the named sizes and fill them from local files (see encoder_weights)."""
        for name, table in ((image_size, IMAGE_ENCODER_SIZES), (imagebind_size, IMAGEBIND_SIZES)):
            if name not in table:
                raise ValueError(f"unknown encoder size {name!r}; choose one of {sorted(table)}")
        image = _on_meta(lambda: FrozenImageEncoder(IMAGE_ENCODER_SIZES[image_size]))
        reports = load_image_encoder(image, paths.blip2, paths.eva_vit)
        imagebind = _on_meta(lambda: ImageBindEncoder(IMAGEBIND_SIZES[imagebind_size]))
        reports.append(load_imagebind(imagebind, paths.imagebind))
        stack = cls(image, imagebind, dtype).to(device)
        stack.reports = reports
        return stack

    def identity(self) -> dict:
        """What determines the features besides the weights and preprocessing: for a store's fingerprint."""
        return {
            "image_encoder": dataclasses.asdict(self.image.cfg),
            "imagebind": dataclasses.asdict(self.imagebind.cfg),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def train(self, mode: bool = True) -> FrozenEncoders:
        return super().train(False)  # frozen: always eval

    @property
    def device(self) -> torch.device:
        return self.image.query_tokens.device

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 224, 224) -> ((B, 32, H) image Q-Former features, (B, D) ImageBind vision), fp32."""
        frames = frames.to(self.device, torch.float32)
        with self._autocast():
            qformer = self.image(frames)  # (B, 32, H)
            vision = self.imagebind.encode_vision(frames)  # (B, D)
        return qformer.float(), vision.float()

    @torch.no_grad()
    def encode_audio(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 8, 1, 128, 204) fbank clips -> (B, 8, D) ImageBind audio embeddings (norm 20), fp32."""
        with self._autocast():
            return self.imagebind.encode_audio(clips.to(self.device, torch.float32)).float()
