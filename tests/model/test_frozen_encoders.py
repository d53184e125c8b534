"""The whole frozen stack from checkpoint files, as the feature-extraction job builds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.frozen_encoders import EncoderCheckpoints, FrozenEncoders, save_random_checkpoints
from model.preprocess import preprocess_audio, preprocess_video


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_random_checkpoints(tmp_path_factory.mktemp("encoders"), seed=5)


@pytest.fixture(scope="module")
def stack(paths):
    return FrozenEncoders.from_checkpoints(paths, image_size="tiny", imagebind_size="tiny")


def test_random_checkpoints_use_the_released_names(paths, tmp_path):
    assert [p.name for p in (paths.eva_vit, paths.blip2, paths.imagebind)] == [
        "eva_vit_g.pth",
        "blip2_pretrained_flant5xxl.pth",
        "imagebind_huge.pth",
    ]
    assert EncoderCheckpoints.in_directory(paths.blip2.parent) == paths
    again = save_random_checkpoints(tmp_path, seed=5)  # same seed, same values
    key = "modality_heads.audio.2.weight"
    assert torch.equal(torch.load(again.imagebind)[key], torch.load(paths.imagebind)[key])


def test_stack_maps_frames_and_clips_to_features(stack):
    frames = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    qformer, vision = stack.encode_frames(frames)
    assert qformer.shape == (4, 32, 64) and vision.shape == (4, 64)
    assert torch.allclose(qformer, stack.image(frames)) and torch.allclose(
        vision, stack.imagebind.encode_vision(frames)
    )
    clips = torch.randn(2, 8, 1, 128, 204, generator=torch.Generator().manual_seed(1))
    audio = stack.encode_audio(clips)
    assert audio.shape == (2, 8, 64) and torch.allclose(audio, stack.imagebind.encode_audio(clips))
    assert [len(r.used) > 0 for r in stack.reports] == [True, True, True]
    assert stack.identity()["image_encoder"]["num_query_tokens"] == 32 and stack.identity()["dtype"] == "float32"


def test_stack_runs_on_preprocessed_media(stack):
    rng = np.random.default_rng(0)
    frames = preprocess_video(rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8), train=False)
    clips = preprocess_audio((0.1 * rng.standard_normal(3 * 16000)).astype(np.float32), 16000)
    qformer, vision = stack.encode_frames(frames)
    audio = stack.encode_audio(clips.unsqueeze(0))
    assert qformer.shape == (8, 32, 64) and vision.shape == (8, 64) and audio.shape == (1, 8, 64)
    assert torch.isfinite(qformer).all() and torch.allclose(audio.norm(dim=-1), torch.full((1, 8), 20.0), atol=1e-4)


def test_bf16_runs_under_autocast_and_returns_fp32(paths, stack):
    half = FrozenEncoders.from_checkpoints(paths, image_size="tiny", imagebind_size="tiny", dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in half.parameters())  # weights stay fp32; matmuls run in bf16
    frames = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    (q32, v32), (q16, v16) = stack.encode_frames(frames), half.encode_frames(frames)
    assert q16.dtype == v16.dtype == torch.float32
    assert not torch.equal(q16, q32)  # bf16 arithmetic did happen
    assert torch.allclose(q16, q32, atol=0.05) and torch.allclose(v16, v32, atol=0.05)


def test_stack_is_frozen_and_validates_arguments(paths, stack):
    assert not any(p.requires_grad for p in stack.parameters())
    stack.train()
    assert not any(m.training for m in stack.modules())
    with pytest.raises(ValueError, match="unknown encoder size 'no_such_size'"):
        FrozenEncoders.from_checkpoints(paths, image_size="no_such_size")
    with pytest.raises(ValueError, match="dtype torch.int8 not supported"):
        FrozenEncoders(stack.image, stack.imagebind, dtype=torch.int8)


def test_fan_in_random_encoders_let_the_image_through(paths, stack, tmp_path):
    """With 0.02-scaled weights the tiny stack's output barely depends on the image; fan_in scaling fixes that."""
    fan_in = save_random_checkpoints(tmp_path, seed=5, init="fan_in")
    weight = torch.load(fan_in.imagebind)["modality_heads.audio.2.weight"]  # Linear(32 -> 64)
    assert weight.std().item() == pytest.approx(32**-0.5, rel=0.15)
    wide = FrozenEncoders.from_checkpoints(fan_in, image_size="tiny", imagebind_size="tiny")
    frames = torch.zeros(2, 3, 224, 224)
    frames[1, 0] = 2.0  # a red frame against a black one (normalised units)

    def spread(encoders):  # how far the two frames' image Q-Former outputs are apart, per value
        q, _ = encoders.encode_frames(frames)
        return (q[0] - q[1]).abs().mean().item()

    assert spread(stack) < 0.1 < spread(wide)
    with pytest.raises(ValueError, match="unknown random init 'xavier'"):
        save_random_checkpoints(tmp_path / "x", init="xavier")
