"""Encoder inputs from decoded media, as Video-LLaMA prepares them (decoding itself is pipelines/' job).

Frames (video_processor.py, blip_processors.py): 8 frame indices, "uniform" or "headtail"; frames
decoded straight to 224x224 (aspect not kept); for training ONE RandomResizedCrop(224, scale 0.5-1,
bicubic) shared by the clip's frames; /255 and CLIP mean/std. Images: RandomResizedCrop for training,
Resize(224, 224) bicubic for eval, both through PIL as torchvision does for PIL images.

Audio (ImageBind data.py, clips_per_video=8): 16 kHz, 8 clips of 2 s spread evenly over the track,
128-bin Kaldi fbank per clip (torchaudio.compliance.kaldi.fbank's algorithm), padded/cropped to 204
frames, normalised with mean -4.268 and std 9.138. Output (8, 1, 128, 204).

All randomness comes from a caller's `torch.Generator`, so a seed reproduces an augmented view.
torchvision and torchaudio are not available here; their algorithms are re-implemented below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FRAME_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP statistics, used by LAVIS and Video-LLaMA
FRAME_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class FramePreprocessConfig:
    num_frames: int = 8
    size: int = 224
    crop_scale: tuple[float, float] = (0.5, 1.0)  # fraction of the frame's area kept by the training crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # torchvision's default aspect-ratio range


@dataclass(frozen=True)
class AudioPreprocessConfig:
    sample_rate: int = 16000
    clip_duration: int = 2  # seconds
    clips_per_video: int = 8  # Video-LLaMA's value (ImageBind's default is 3)
    num_mel_bins: int = 128
    target_length: int = 204  # fbank frames per clip; 2 s gives 198, so clips are zero-padded
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    mean: float = -4.268  # AudioSet fbank statistics used by ImageBind
    std: float = 9.138


# ---------------------------------------------------------------- frames


def sample_frame_indices(
    num_decoded: int, strategy: str, num_frames: int = 8, generator: torch.Generator | None = None
) -> list[int]:
    """Indices of the frames to keep from a video of `num_decoded` frames.

    uniform: floor(arange(0, n, n / k)) with k = min(num_frames, n) (inference, instruct data).
    headtail: k // 2 sorted random indices from each half, without replacement (WebVid training).
    Videos shorter than `num_frames` give fewer frames, as in the original.
    """
    if num_decoded < 1:
        raise ValueError(f"cannot sample frames from a video with {num_decoded} frames")
    k = min(num_frames, num_decoded)
    if strategy == "uniform":
        return np.arange(0, num_decoded, num_decoded / k).astype(int).tolist()
    if strategy != "headtail":
        raise ValueError(f"unknown frame sampling {strategy!r}; use 'uniform' or 'headtail'")
    if generator is None:
        raise ValueError("headtail sampling is random: pass a seeded torch.Generator")
    if k < 2:
        raise ValueError(f"headtail sampling needs at least 2 frames, the video has {num_decoded}")
    half = num_decoded // 2
    head = torch.randperm(half, generator=generator)[: k // 2]
    tail = half + torch.randperm(num_decoded - half, generator=generator)[: k // 2]
    return sorted(head.tolist()) + sorted(tail.tolist())


def random_resized_crop_params(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop: torchvision RandomResizedCrop.get_params, drawing from `generator`."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio)).tolist()  # float32, as torchvision
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    # Ten misses (extreme aspect ratios): the largest centred crop within the ratio range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def normalize_frames(pixels: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) values in 0-255 -> /255, then (x - mean) / std per channel, fp32."""
    mean = torch.tensor(FRAME_MEAN).view(3, 1, 1)
    std = torch.tensor(FRAME_STD).view(3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def preprocess_video(
    frames: np.ndarray | torch.Tensor,
    train: bool,
    generator: torch.Generator | None = None,
    cfg: FramePreprocessConfig = FramePreprocessConfig(),
) -> torch.Tensor:
    """Decoded uint8 frames (T, 224, 224, 3) -> encoder input (T, 3, 224, 224).

    Training: one crop for all frames, resized with torch bicubic (no antialias, as torchvision's video
    transform), then quantised back to uint8 by truncation as the original's ToUint8 does. The original
    lets bicubic overshoot wrap around in that cast; here it is clamped to 0-255 first.
    """
    clip = torch.as_tensor(frames)
    size = cfg.size
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {clip.dtype} {tuple(clip.shape)}")
    if tuple(clip.shape[1:3]) != (size, size):
        raise ValueError(
            f"frames are {tuple(clip.shape[1:3])}; decode them straight to {size}x{size} (aspect not kept)"
        )
    clip = clip.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    if train:
        if generator is None:
            raise ValueError("training crops are random: pass a seeded torch.Generator")
        top, left, h, w = random_resized_crop_params(size, size, generator, cfg.crop_scale, cfg.crop_ratio)
        clip = clip[:, :, top : top + h, left : left + w]
        clip = F.interpolate(clip, size=(size, size), mode="bicubic", align_corners=False)
        clip = clip.clamp(0, 255).to(torch.uint8)
    return normalize_frames(clip)


def preprocess_image(
    image: np.ndarray | Image.Image,
    train: bool,
    generator: torch.Generator | None = None,
    cfg: FramePreprocessConfig = FramePreprocessConfig(),
) -> torch.Tensor:
    """An RGB image (H, W, 3) uint8 or PIL -> (3, 224, 224): RandomResizedCrop (train) or Resize (eval)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    img = img.convert("RGB")
    size = (cfg.size, cfg.size)
    if train:
        if generator is None:
            raise ValueError("training crops are random: pass a seeded torch.Generator")
        top, left, h, w = random_resized_crop_params(img.height, img.width, generator, cfg.crop_scale, cfg.crop_ratio)
        img = img.crop((left, top, left + w, top + h))
    pixels = torch.from_numpy(np.asarray(img.resize(size, Image.Resampling.BICUBIC)).copy())  # (H, W, 3)
    return normalize_frames(pixels.permute(2, 0, 1))


# ---------------------------------------------------------------- audio


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int, lowpass_width: int = 6) -> torch.Tensor:
    """(..., N) -> (..., ceil(N * new / orig)): windowed-sinc polyphase resampling.

    torchaudio.functional.resample's default method (Hann-windowed sinc, 6 zero crossings, rolloff
    0.99), which ImageBind's loader applies; one FIR filter per output phase, run as a strided conv1d.
    """
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
    cutoff = min(orig, new) * 0.99  # below the lower Nyquist, in units where the rates are orig and new
    width = math.ceil(lowpass_width * orig / cutoff)  # filter half-length in input samples
    dtype = waveform.dtype
    idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx) * cutoff  # (new, 1, taps)
    t = t.clamp(-lowpass_width, lowpass_width)
    window = torch.cos(t * math.pi / lowpass_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (cutoff / orig)
    shape = waveform.shape
    flat = F.pad(waveform.reshape(-1, shape[-1]), (width, width + orig))  # (C, N + pad)
    out = F.conv1d(flat[:, None], kernel, stride=orig)  # (C, new, N / orig + 1)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # interleave the phases
    return out[:, : math.ceil(new * shape[-1] / orig)].reshape(*shape[:-1], -1)


def clip_sample_ranges(num_samples: int, cfg: AudioPreprocessConfig = AudioPreprocessConfig()) -> list[tuple[int, int]]:
    """[start, end) sample ranges of the clips: pytorchvideo's ConstantClipsPerVideoSampler, exact fractions.

    Clip starts are evenly spaced over [0, duration - clip_duration]; audio no longer than one clip
    gives `clips_per_video` copies of [0, clip_duration), truncated to the audio.
    """
    duration = num_samples / cfg.sample_rate
    clip = Fraction(cfg.clip_duration)
    max_start = Fraction(max(duration - clip, 0))
    step = max_start / max(cfg.clips_per_video - 1, 1)
    starts = [step * i for i in range(cfg.clips_per_video)]
    return [(int(s * cfg.sample_rate), int((s + clip) * cfg.sample_rate)) for s in starts]


@lru_cache(maxsize=8)
def mel_banks(num_bins: int, padded_window: int, sample_rate: float, low_freq: float = 20.0) -> torch.Tensor:
    """(num_bins, padded_window // 2 + 1) triangular filters on the mel scale 1127 ln(1 + f / 700), Kaldi style.

    Computed in float32 in the same order as torchaudio.compliance.kaldi.get_mel_banks; the Nyquist
    bin gets no weight.
    """

    def mel(freq):
        return 1127.0 * (1.0 + freq / 700.0).log() if torch.is_tensor(freq) else 1127.0 * math.log(1.0 + freq / 700.0)

    mel_low, mel_high = mel(low_freq), mel(0.5 * sample_rate)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left, center, right = (mel_low + (index + k) * delta for k in (0, 1, 2))  # (num_bins, 1) each
    fft_mel = mel(sample_rate / padded_window * torch.arange(padded_window / 2)).unsqueeze(0)  # (1, n_fft / 2)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return F.pad(banks, (0, 1))


def kaldi_fbank(
    waveform: torch.Tensor, sample_rate: int, num_mel_bins: int, frame_length_ms: float, frame_shift_ms: float
) -> torch.Tensor:
    """1-D waveform -> log mel filterbank (frames, num_mel_bins), as ImageBind calls kaldi.fbank.

    Options fixed to that call: hanning window, no dither, htk_compat, no energy column; Kaldi defaults
    otherwise (snip edges, per-frame DC removal, pre-emphasis 0.97, FFT size rounded up to a power of 2,
    power spectrum, log floored at float32 epsilon).
    """
    shift = int(sample_rate * frame_shift_ms * 0.001)
    size = int(sample_rate * frame_length_ms * 0.001)
    if waveform.ndim != 1 or waveform.numel() < size:
        raise ValueError(f"fbank needs a 1-D waveform of at least {size} samples, got shape {tuple(waveform.shape)}")
    padded = 1 << (size - 1).bit_length()
    frames = waveform.float().unfold(0, size, shift)  # (m, size), m = 1 + (N - size) // shift
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = (frames - 0.97 * previous) * torch.hann_window(size, periodic=False)
    power = torch.fft.rfft(F.pad(frames, (0, padded - size))).abs().pow(2)  # (m, padded // 2 + 1)
    energies = power @ mel_banks(num_mel_bins, padded, float(sample_rate)).T  # (m, num_mel_bins)
    return energies.clamp_min(torch.finfo(torch.float32).eps).log()


def melspec_clip(clip: torch.Tensor, cfg: AudioPreprocessConfig = AudioPreprocessConfig()) -> torch.Tensor:
    """(channels, n) waveform clip -> normalised (1, num_mel_bins, target_length).

    Like ImageBind's waveform2melspec: the clip's mean is removed, kaldi.fbank reads channel 0 only,
    frames are zero-padded or cut to target_length, and the normalisation comes after the padding.
    """
    clip = clip - clip.mean()
    fbank = kaldi_fbank(clip[0], cfg.sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms).T
    missing = cfg.target_length - fbank.shape[1]
    fbank = F.pad(fbank, (0, missing)) if missing > 0 else fbank[:, : cfg.target_length]  # (mel, target)
    return ((fbank - cfg.mean) / cfg.std).unsqueeze(0)


def preprocess_audio(
    waveform: np.ndarray | torch.Tensor, sample_rate: int, cfg: AudioPreprocessConfig = AudioPreprocessConfig()
) -> torch.Tensor:
    """Decoded audio (N,) or (channels, N), float in [-1, 1] -> ImageBind input (8, 1, 128, 204).

    Stereo is not mixed down: as in the original, the fbank reads the first channel.
    """
    audio = torch.as_tensor(np.array(waveform, dtype=np.float32))  # a copy: decoded buffers are read-only
    audio = audio.unsqueeze(0) if audio.ndim == 1 else audio
    if audio.ndim != 2:
        raise ValueError(f"expected audio (N,) or (channels, N), got shape {tuple(audio.shape)}")
    audio = resample(audio, sample_rate, cfg.sample_rate)
    min_samples = int(cfg.sample_rate * cfg.frame_length_ms * 0.001)
    if audio.shape[1] < min_samples:
        raise ValueError(f"audio of {audio.shape[1]} samples at {cfg.sample_rate} Hz is shorter than one fbank frame")
    clips = [melspec_clip(audio[:, start:end], cfg) for start, end in clip_sample_ranges(audio.shape[1], cfg)]
    return torch.stack(clips)  # (8, 1, 128, 204)
