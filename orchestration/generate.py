"""Answer a prompt about a video, an image or a feature-store sample, from trained branch weights.

Weights: our export (`videollama_<branch>_<size>.pth` or `.safetensors`) or a released Video-LLaMA
`.pth`, local or s3://. Media: a video or an image file (decoded with ffmpeg / Pillow, preprocessed
as the original's inference: 8 uniform frames, resize to 224, CLIP normalisation; audio as ImageBind
fbank clips), which needs the frozen encoder checkpoints; or a feature-store sample
`{store}/{dataset}/{key}`, whose stored features are used directly (view 0).

Chat mode wraps the prompt in the template (stage 2). Caption mode feeds `[BOS] + media` and lets
the model continue, the stage-1 training format, to see what a stage-1 model learnt.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import numpy as np
import torch

from model.config import ModelSize, model_size
from model.llm import FrozenLlama
from model.text import Sample as TextSample
from model.text import collate
from model.video_llama import Reply, VideoLLaMA
from pipelines import storage
from pipelines.features import format as fmt
from pipelines.media import ffmpeg_bin


@dataclass(frozen=True)
class Media:
    """What `generate` passes on: raw frames/audio or stored features, per the model's branches."""

    video: torch.Tensor | None = None  # (T, 3, 224, 224)
    image: torch.Tensor | None = None  # (3, 224, 224)
    audio: torch.Tensor | None = None  # (8, 1, 128, 204)
    vl_features: torch.Tensor | None = None  # (T, 32, H)
    al_features: torch.Tensor | None = None  # (T, D)
    al_from: str = "audio"


def load_weights(uri: str, size_name: str | None) -> tuple[dict[str, torch.Tensor], ModelSize]:
    """Branch tensors and their size from one of our exports or a released checkpoint."""
    from model.checkpoint import CheckpointError, import_reference, load_branches, read_torch_file

    data = storage.read_bytes(uri)
    if uri.endswith(".safetensors"):
        return load_branches(data, uri)
    if size_name is None:
        raise CheckpointError(f"{uri}: a .pth does not say its size; pass --size (tiny, 7b, 13b)")
    size = model_size(size_name)
    state, _ = import_reference(read_torch_file(data, uri), size, source=uri)
    return state, size


def load_model(weights: str, llm: str, size_name: str | None = None, encoders: str | None = None) -> VideoLLaMA:
    """The frozen LLM (fp32 on CPU, bf16 on GPU), the branches the weights hold, optional encoders."""
    from model.checkpoint import load_into
    from model.frozen_encoders import EncoderCheckpoints, FrozenEncoders

    state, size = load_weights(weights, size_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    branches = sorted({k.partition(".")[0] for k in state})
    stack = None
    if encoders:
        paths = EncoderCheckpoints.in_directory(encoders)
        stack = FrozenEncoders.from_checkpoints(paths, size.image_encoder, size.imagebind, device, dtype)
    model = VideoLLaMA(size, FrozenLlama.from_pretrained(llm, dtype=dtype), branches=branches, encoders=stack)
    load_into(model.branches, state)
    return model.to(device).eval()


def decode_video(path: str, num_frames: int = 8) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 frames (T, 224, 224, 3), uniformly sampled, and mono 16 kHz audio if the file has any."""
    from model.preprocess import sample_frame_indices

    scale = ["-vf", "scale=224:224:flags=bicubic", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run([ffmpeg_bin(), "-v", "error", "-i", path, *scale], capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 224, 224, 3)
    if len(frames) == 0:
        raise ValueError(f"{path}: no video frames decoded")
    frames = frames[sample_frame_indices(len(frames), "uniform", num_frames)]
    pcm = ["-vn", "-ac", "1", "-ar", "16000", "-f", "f32le", "-"]
    sound = subprocess.run([ffmpeg_bin(), "-v", "error", "-i", path, *pcm], capture_output=True, check=False).stdout
    audio = np.frombuffer(sound, np.float32) if len(sound) >= 16000 * 4 * 0.025 else None
    return frames, audio


def media_from_file(path: str, kind: str) -> Media:
    from PIL import Image

    from model.preprocess import preprocess_audio, preprocess_image, preprocess_video

    if kind == "image":
        return Media(image=preprocess_image(Image.open(path), train=False))
    frames, audio = decode_video(path)
    return Media(
        video=preprocess_video(frames, train=False),
        audio=preprocess_audio(audio, 16000) if audio is not None else None,
    )


def find_sample(ref: str) -> fmt.FeatureSample:
    """`{store}/{dataset}/{key}` -> the stored sample (its shards are scanned in order)."""
    store, dataset, key = ref.rsplit("/", 2) if ref.count("/") >= 2 else (None, None, None)
    if not store:
        raise ValueError(f"{ref!r}: expected STORE/DATASET/KEY, e.g. /data/features/abc123/webvid/1000000007")
    for index in fmt.complete_shards(store, dataset):
        for sample in fmt.iter_shard(fmt.shard_uri(store, dataset, index)):
            if sample.key == key:
                return sample
    raise KeyError(f"{ref}: no sample {key!r} in the complete shards of {store}/{dataset}")


def media_from_sample(sample: fmt.FeatureSample, view: int = 0) -> Media:
    vl = torch.from_numpy(sample.vl[view].astype(np.float32)) if sample.vl is not None else None
    ibv = torch.from_numpy(sample.ibv[view].astype(np.float32)) if sample.ibv is not None else None
    kind = "image" if (vl if vl is not None else ibv).shape[0] == 1 else "video"
    return Media(vl_features=vl, al_features=ibv, al_from=kind)


def answer(model: VideoLLaMA, media: Media, prompt: str, **options) -> Reply:
    """Chat mode: the prompt in the template, media blocks before it (VideoLLaMA.generate)."""
    feats = {}
    if media.vl_features is not None and "vl" in model.branches:
        feats["vl_features"] = media.vl_features
    if media.al_features is not None and "al" in model.branches:
        feats |= {"al_features": media.al_features, "al_features_from": media.al_from}
    raw = {"video": media.video, "image": media.image, "audio": media.audio if "al" in model.branches else None}
    return model.generate(prompt, **feats, **raw, **options)


@torch.no_grad()
def caption(model: VideoLLaMA, features: torch.Tensor, max_new_tokens: int = 24, **options) -> Reply:
    """Caption mode for one sample's features ((T, 32, H) VL or (T, D) AL): `[BOS] + media`, greedy
    unless `do_sample`, stopping at the stage-1 end symbol '\\n'."""
    branch = "vl" if "vl" in model.branches else "al"
    tok, q = model.llm.tokenizer, model.size.vl if branch == "vl" else model.size.al
    placeholder = model.llm.image_token_id if branch == "vl" else model.llm.audio_token_id
    ids = [tok.bos_token_id] + [placeholder] * q.num_query_tokens
    text = collate([TextSample(ids, ids)], tok.pad_token_id, padding_side="left")
    device = model.llm.model.device
    was_training = model.training
    model.eval()  # no dropout in the branch while answering
    try:
        media = model.media({f"{branch}_features": features.float().unsqueeze(0).to(device)})
        new = model.llm.generate(
            text["input_ids"].to(device), text["attention_mask"].to(device), media,
            max_new_tokens=max_new_tokens, stop_strings=["\n"], **options,
        )[0].tolist()  # fmt: skip
    finally:
        model.train(was_training)
    return Reply(text=tok.decode(new, skip_special_tokens=True).split("\n")[0].strip(), token_ids=new)
