"""Which frozen encoders extraction runs, and where their weights come from (local folder or s3://)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

from model.frozen_encoders import EncoderCheckpoints
from model.image_encoder import IMAGE_ENCODER_SIZES
from model.imagebind import IMAGEBIND_SIZES
from pipelines import storage
from pipelines.config import config_dataclass
from pipelines.storage import StorageConfig

DTYPES = ("float32", "bfloat16", "float16")


@config_dataclass
class EncoderConfig:
    """The frozen encoders: sizes from model/'s tables, weights as the released files in one folder."""

    # Folder (local or s3://) with blip2_pretrained_flant5xxl.pth, imagebind_huge.pth and eva_vit_g.pth
    # (the last may be left out when the BLIP-2 file carries the ViT).
    weights: str = ""
    image: str = "eva_vit_g"  # model.image_encoder.IMAGE_ENCODER_SIZES key
    imagebind: str = "huge"  # model.imagebind.IMAGEBIND_SIZES key
    # Autocast dtype. Video-LLaMA runs its frozen encoders under fp16 autocast; bf16 has the range to
    # spare and is the GPU choice here; float32 on CPU. Part of the fingerprint: features differ.
    dtype: str = "float32"
    cache_dir: str | None = None  # where actors keep local copies of s3:// weights; None = system temp dir

    def __post_init__(self):
        if not self.weights:
            raise ValueError("encoders.weights: required, the folder (or s3:// prefix) holding the released files")
        if self.image not in IMAGE_ENCODER_SIZES:
            raise ValueError(f"encoders.image={self.image!r}: choose one of {', '.join(IMAGE_ENCODER_SIZES)}")
        if self.imagebind not in IMAGEBIND_SIZES:
            raise ValueError(f"encoders.imagebind={self.imagebind!r}: choose one of {', '.join(IMAGEBIND_SIZES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"encoders.dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")


def encoder_identity(cfg: EncoderConfig) -> dict:
    """`FrozenEncoders.identity()` of the stack `cfg` builds, without loading it (the driver fingerprints
    before any actor starts; each actor checks its loaded stack against this)."""
    return {
        "image_encoder": dataclasses.asdict(IMAGE_ENCODER_SIZES[cfg.image]),
        "imagebind": dataclasses.asdict(IMAGEBIND_SIZES[cfg.imagebind]),
        "dtype": cfg.dtype,
    }


def _local_copy(uri: str, dest: Path, storage_cfg: StorageConfig | None) -> Path:
    """Download `uri` to `dest` unless a copy of the same size is there (several actors per node share it)."""
    fs, path = storage.filesystem(uri, storage_cfg)
    size = fs.info(path)["size"]
    if dest.exists() and dest.stat().st_size == size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    fs.get(path, str(tmp))
    tmp.replace(dest)
    return dest


def local_checkpoints(cfg: EncoderConfig, storage_cfg: StorageConfig | None = None) -> EncoderCheckpoints:
    """Local paths of the weight files, copied from object storage first when `weights` is remote."""
    names = EncoderCheckpoints.in_directory(".")
    if storage.is_remote(cfg.weights):
        tag = hashlib.sha256(cfg.weights.encode()).hexdigest()[:12]
        folder = Path(cfg.cache_dir or tempfile.gettempdir()) / "vllama-weights" / tag
        for name in (names.blip2.name, names.imagebind.name, names.eva_vit.name):
            uri = storage.join(cfg.weights, name)
            if storage.exists(uri, storage_cfg):
                _local_copy(uri, folder / name, storage_cfg)
        local = folder
    else:
        local = Path(storage.filesystem(cfg.weights)[1])
    paths = EncoderCheckpoints.in_directory(local)
    return dataclasses.replace(paths, eva_vit=paths.eva_vit if paths.eva_vit.exists() else None)
