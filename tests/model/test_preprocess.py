"""Frame sampling, crops and normalisation; audio clips, resampling and the Kaldi fbank."""

from __future__ import annotations

import math

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.preprocess import (
    FRAME_MEAN,
    FRAME_STD,
    AudioPreprocessConfig,
    clip_sample_ranges,
    kaldi_fbank,
    mel_banks,
    preprocess_audio,
    preprocess_image,
    preprocess_video,
    random_resized_crop_params,
    resample,
    sample_frame_indices,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- frame indices


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (100, [0, 12, 25, 37, 50, 62, 75, 87]),  # floor(arange(0, 100, 12.5))
        (19, [0, 2, 4, 7, 9, 11, 14, 16]),  # step 2.375
        (8, [0, 1, 2, 3, 4, 5, 6, 7]),
        (5, [0, 1, 2, 3, 4]),  # shorter than 8 frames: every frame, as the original
        (1, [0]),
    ],
)
def test_uniform_indices_follow_the_formula(n, expected):
    assert sample_frame_indices(n, "uniform") == expected


def test_headtail_draws_four_sorted_indices_from_each_half():
    indices = sample_frame_indices(100, "headtail", generator=gen(3))
    head, tail = indices[:4], indices[4:]
    assert head == sorted(head) and tail == sorted(tail)
    assert len(set(head)) == 4 and len(set(tail)) == 4
    assert all(0 <= i < 50 for i in head) and all(50 <= i < 100 for i in tail)
    assert sample_frame_indices(100, "headtail", generator=gen(3)) == indices
    assert sample_frame_indices(100, "headtail", generator=gen(4)) != indices
    # Short videos: min(8, n) // 2 per half, like rnd.sample over each half.
    five = sample_frame_indices(5, "headtail", generator=gen(0))
    assert len(five) == 4 and all(i < 2 for i in five[:2]) and all(2 <= i < 5 for i in five[2:])


def test_headtail_is_uniform_over_each_half():
    counts = np.zeros(20)
    for seed in range(2000):
        for i in sample_frame_indices(20, "headtail", generator=gen(seed)):
            counts[i] += 1
    # Each index is kept with probability 4/10 per draw: 800 expected, sd ~22.
    assert np.all(np.abs(counts - 800) < 110), counts


def test_frame_sampling_rejects_bad_input():
    with pytest.raises(ValueError, match="0 frames"):
        sample_frame_indices(0, "uniform")
    with pytest.raises(ValueError, match="unknown frame sampling 'rand'"):
        sample_frame_indices(10, "rand")
    with pytest.raises(ValueError, match="torch.Generator"):
        sample_frame_indices(10, "headtail")
    with pytest.raises(ValueError, match="at least 2 frames"):
        sample_frame_indices(1, "headtail", generator=gen(0))


# ---------------------------------------------------------------- crops and normalisation


def test_crop_params_stay_in_scale_and_ratio_and_repeat_with_the_seed():
    for seed in range(200):
        top, left, h, w = random_resized_crop_params(224, 224, gen(seed))
        assert 0 <= top <= 224 - h and 0 <= left <= 224 - w
        assert 0.5 - 0.01 <= h * w / 224**2 <= 1.0  # rounding h and w moves the area slightly
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    assert random_resized_crop_params(224, 224, gen(7)) == random_resized_crop_params(224, 224, gen(7))


def test_crop_params_fall_back_to_a_centred_crop():
    # 10 x 1000: every candidate is taller than 10 px, so torchvision's fallback applies:
    # height kept, width = round(10 * 4/3) = 13, centred.
    assert random_resized_crop_params(10, 1000, gen(0)) == (0, 493, 10, 13)
    # 1000 x 10: width kept, height = round(10 / (3/4)) = 13, centred.
    assert random_resized_crop_params(1000, 10, gen(0)) == (493, 0, 13, 10)


def test_normalisation_matches_the_formula():
    frames = np.zeros((2, 224, 224, 3), dtype=np.uint8)
    frames[0, 5, 7] = (0, 128, 255)
    frames[1, :, :] = (255, 255, 255)
    out = preprocess_video(frames, train=False)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    for c, value in enumerate((0, 128, 255)):
        assert out[0, c, 5, 7].item() == pytest.approx((value / 255 - FRAME_MEAN[c]) / FRAME_STD[c], abs=1e-6)
        assert out[1, c].unique().tolist() == pytest.approx([(1 - FRAME_MEAN[c]) / FRAME_STD[c]], abs=1e-6)


def smooth_clip(frames: int) -> np.ndarray:
    """Frame t is a smooth gradient plus t, so bicubic resizing stays inside 0-255."""
    y, x = np.mgrid[0:224, 0:224]
    base = 60 + 0.2 * x + 0.15 * y + 10 * np.sin(x / 9.0)
    clip = np.stack([base + t for t in range(frames)])[..., None] + np.array([0, 20, 40])
    return clip.astype(np.uint8)


def test_training_crop_is_shared_by_all_frames_and_reproducible():
    clip = smooth_clip(8)
    out = preprocess_video(clip, train=True, generator=gen(11))
    # Each frame alone, with the same seed, gets the same crop.
    for t in (0, 5):
        assert torch.equal(preprocess_video(clip[t : t + 1], train=True, generator=gen(11))[0], out[t])
    # Input frames differ by +t, and so do the cropped ones: the same region was taken from each.
    # (Bicubic weights sum to 1 only up to float rounding, so a truncation may land one level off.)
    pixels = out * torch.tensor(FRAME_STD).view(3, 1, 1) + torch.tensor(FRAME_MEAN).view(3, 1, 1)
    steps = (pixels * 255).round() - (pixels[:1] * 255).round()
    off = (steps - torch.arange(8.0).view(8, 1, 1, 1)).abs()
    assert off.max() <= 1 and (off > 0).float().mean() < 0.01
    assert not torch.equal(preprocess_video(clip, train=True, generator=gen(12)), out)


def test_training_crop_is_crop_then_bicubic_then_uint8():
    clip = smooth_clip(2)
    top, left, h, w = random_resized_crop_params(224, 224, gen(5))
    region = torch.from_numpy(clip).permute(0, 3, 1, 2).float()[:, :, top : top + h, left : left + w]
    resized = F.interpolate(region, size=(224, 224), mode="bicubic", align_corners=False)
    expected = (resized.clamp(0, 255).floor() / 255 - torch.tensor(FRAME_MEAN).view(3, 1, 1)) / torch.tensor(
        FRAME_STD
    ).view(3, 1, 1)
    assert torch.allclose(preprocess_video(clip, train=True, generator=gen(5)), expected, atol=1e-6)


def test_video_input_errors_say_what_to_do():
    with pytest.raises(ValueError, match="decode them straight to 224x224"):
        preprocess_video(np.zeros((8, 240, 320, 3), np.uint8), train=False)
    with pytest.raises(ValueError, match="uint8 frames"):
        preprocess_video(np.zeros((8, 224, 224, 3), np.float32), train=False)
    with pytest.raises(ValueError, match="torch.Generator"):
        preprocess_video(np.zeros((8, 224, 224, 3), np.uint8), train=True)


def test_image_eval_is_a_pil_bicubic_resize_and_train_a_seeded_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(180, 300, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC)).astype(np.float32)
    expected = (torch.from_numpy(resized).permute(2, 0, 1) / 255 - torch.tensor(FRAME_MEAN).view(3, 1, 1)) / (
        torch.tensor(FRAME_STD).view(3, 1, 1)
    )
    assert torch.allclose(preprocess_image(image, train=False), expected, atol=1e-6)
    top, left, h, w = random_resized_crop_params(180, 300, gen(2))
    crop = Image.fromarray(image[top : top + h, left : left + w]).resize((224, 224), Image.Resampling.BICUBIC)
    train = preprocess_image(image, train=True, generator=gen(2))
    assert torch.allclose(train, preprocess_image(np.asarray(crop), train=False), atol=1e-6)


# ---------------------------------------------------------------- audio


def test_clip_ranges_follow_the_constant_clips_sampler():
    # 10 s at 16 kHz: starts at i * 8/7 s, each 2 s long.
    starts = [0, 18285, 36571, 54857, 73142, 91428, 109714, 128000]
    assert clip_sample_ranges(160_000) == [(s, s + 32_000) for s in starts]
    # Audio shorter than a clip: 8 copies of [0, 2 s), cut to the audio by slicing.
    assert clip_sample_ranges(24_000) == [(0, 32_000)] * 8


def sine(freqs, sample_rate, seconds, phase=0.0):
    t = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    return sum(a * torch.sin(2 * math.pi * f * t + phase) for f, a in freqs).float()


@pytest.mark.parametrize("sample_rate", [44100, 48000, 22050])
def test_resampling_reproduces_a_known_signal(sample_rate):
    tones = [(440, 0.5), (3000, 0.25)]
    out = resample(sine(tones, sample_rate, 1.0)[None], sample_rate, 16000)[0]
    expected = sine(tones, 16000, 1.0)
    assert out.shape == expected.shape == (16000,)
    inner = slice(200, -200)  # the ends see the zero padding
    assert (out[inner] - expected[inner]).abs().max() < 1e-3


def test_resampling_removes_content_above_the_new_nyquist():
    out = resample(sine([(12000, 1.0)], 48000, 1.0)[None], 48000, 16000)[0]
    assert out[200:-200].abs().max() < 0.01  # would alias to 4 kHz at full amplitude without the filter


def knf_fbank(wave: np.ndarray, bins: int) -> np.ndarray:
    """kaldi-native-fbank (C++ Kaldi port) with the options ImageBind passes to torchaudio's kaldi.fbank."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.mel_opts.num_bins = bins
    opts.use_energy = False
    opts.htk_compat = True
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, wave.tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


@pytest.mark.parametrize("bins", [64, 80, 120])
def test_fbank_matches_kaldi_native_fbank(bins):
    rng = np.random.default_rng(0)
    wave = sine([(440, 0.3), (3150, 0.2)], 16000, 2.3).numpy() + 0.05 * rng.standard_normal(36800)
    wave = wave.astype(np.float32)
    ours = kaldi_fbank(torch.from_numpy(wave), 16000, bins, 25.0, 10.0).numpy()
    ref = knf_fbank(wave, bins)
    assert ours.shape == ref.shape == (228, bins)  # 1 + (36800 - 400) // 160
    assert np.abs(ours - ref).max() < 2e-3 and np.abs(ours - ref).mean() < 5e-5


def test_128_bin_filters_follow_kaldis_mel_formula():
    # Kaldi refuses 128 bins at a 512-point FFT (bin 3 covers no FFT bin); torchaudio, which ImageBind
    # calls, keeps it as an all-zero filter, so that fbank row is log(float32 eps) for every frame.
    banks = mel_banks(128, 512, 16000.0).double()
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    edges = mel(20.0) + np.arange(130) * (mel(8000.0) - mel(20.0)) / 129
    fft_mel = mel(np.arange(257) * 16000.0 / 512)
    up = (fft_mel[None] - edges[:128, None]) / (edges[1:129, None] - edges[:128, None])
    down = (edges[2:, None] - fft_mel[None]) / (edges[2:, None] - edges[1:129, None])
    expected = np.maximum(0.0, np.minimum(up, down))
    expected[:, 256] = 0.0  # Kaldi gives the Nyquist bin no weight
    assert np.abs(banks.numpy() - expected).max() < 1e-4
    assert (banks.sum(1) == 0).nonzero().flatten().tolist() == [3]
    fbank = kaldi_fbank(sine([(440, 0.3)], 16000, 1.0), 16000, 128, 25.0, 10.0)
    assert torch.all(fbank[:, 3] == math.log(torch.finfo(torch.float32).eps))


def test_audio_preprocessing_pads_normalises_and_uses_channel_zero():
    cfg = AudioPreprocessConfig()
    rng = np.random.default_rng(1)
    left = (0.3 * rng.standard_normal(160_000)).astype(np.float32)  # 10 s
    clips = preprocess_audio(left, 16000)
    assert clips.shape == (8, 1, 128, 204)
    # 2 s gives 198 fbank frames; the 6 padded frames are 0 before normalisation.
    assert torch.allclose(clips[:, :, :, 198:], torch.full((8, 1, 128, 6), (0 - cfg.mean) / cfg.std))
    first = kaldi_fbank(torch.from_numpy(left[:32000] - left[:32000].mean()), 16000, 128, 25.0, 10.0).T
    assert torch.allclose(clips[0, 0, :, :198], (first - cfg.mean) / cfg.std, atol=1e-5)
    # Stereo: the first channel decides (per-frame DC removal cancels the shared mean shift).
    stereo = np.stack([left, rng.standard_normal(160_000).astype(np.float32)])
    assert torch.allclose(preprocess_audio(stereo, 16000), clips, atol=1e-3)


def test_short_audio_repeats_one_padded_clip_and_resamples():
    one_second = sine([(440, 0.3)], 44100, 1.0)
    clips = preprocess_audio(one_second.numpy(), 44100)
    assert clips.shape == (8, 1, 128, 204)
    assert all(torch.equal(clips[i], clips[0]) for i in range(8))
    assert torch.allclose(clips[0, 0, :, 98:], torch.tensor((0 + 4.268) / 9.138))  # 1 s = 98 fbank frames
    assert torch.allclose(clips, preprocess_audio(resample(one_second[None], 44100, 16000), 16000))
    with pytest.raises(ValueError, match="shorter than one fbank frame"):
        preprocess_audio(np.zeros(300, np.float32), 16000)
