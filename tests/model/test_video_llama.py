"""The composed model at tiny size: stage-1/stage-2 losses, gradient isolation, generation paths."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from model.config import SIZES
from model.frozen_encoders import FrozenEncoders, save_random_checkpoints
from model.llm import AUDIO_PLACEHOLDER, FrozenLlama
from model.text import caption_sample, collate, conversation_sample, media_block
from model.tiny import build_tokenizer, llama_config, save_tiny_llama
from model.video_llama import VideoLLaMA

TINY = SIZES["tiny"]
H, D = TINY.vl.encoder_width, TINY.al.encoder_width  # the tiny frozen stack's output widths


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """The real frozen stack at tiny size, loaded from random checkpoints in the original layouts."""
    paths = save_random_checkpoints(tmp_path_factory.mktemp("encoders"))
    return FrozenEncoders.from_checkpoints(paths, image_size="tiny", imagebind_size="tiny")


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return FrozenLlama.from_pretrained(save_tiny_llama(tmp_path_factory.mktemp("tiny-llama")), dtype=torch.float32)


@pytest.fixture
def model(llm, encoders):
    torch.manual_seed(0)
    return VideoLLaMA(TINY, llm, encoders=encoders)


def stage1_batch(tok, n: int, placeholder: str = "<ImageHere>") -> dict:
    captions = ["a red circle moves to the left", "a blue square on a black background"]
    return collate([caption_sample(tok, c, n, placeholder) for c in captions], tok.pad_token_id)


def stage2_batch(tok) -> dict:
    question = media_block("video", 32) + " " + media_block("audio", 8, AUDIO_PLACEHOLDER) + " What is it?"
    samples = [
        conversation_sample(tok, [(question, "a green triangle"), ("Which direction?", "up")], "llama2"),
        conversation_sample(tok, [(question, "a tone rising")], "llama2"),
    ]
    return collate(samples, tok.pad_token_id)


def test_stage1_losses_for_video_image_and_imagebind_frames(model, llm):
    tok = llm.tokenizer
    video = stage1_batch(tok, 32) | {"vl_features": torch.randn(2, 8, 32, H)}
    image = stage1_batch(tok, 32) | {"vl_features": torch.randn(2, 1, 32, H)}
    al_frames = stage1_batch(tok, 8, AUDIO_PLACEHOLDER) | {"al_features": torch.randn(2, 8, D)}
    for batch in (video, image, al_frames):
        loss = model(batch)
        # Untrained tiny model: about the entropy of a uniform guess over the vocabulary.
        assert loss.ndim == 0 and abs(loss.item() - math.log(TINY.llm.vocab_size)) < 1.0


def test_stage2_loss_with_both_branches_in_one_prompt(model, llm):
    batch = stage2_batch(llm.tokenizer) | {"vl_features": torch.randn(2, 8, 32, H), "al_features": torch.randn(2, 8, D)}
    assert torch.isfinite(model(batch))


@pytest.mark.parametrize("train, frozen", [("vl", "al"), ("al", "vl")])
def test_gradient_reaches_every_trainable_tensor_and_no_frozen_one(model, llm, train, frozen):
    model.set_trainable([train])
    model.train()
    batch = stage2_batch(llm.tokenizer) | {"vl_features": torch.randn(2, 8, 32, H), "al_features": torch.randn(2, 8, D)}
    model(batch).backward()
    for name, p in model.branches[train].named_parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.branches[frozen].parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.llm.parameters())
    assert not model.llm.model.training  # model.train() leaves the LLM in eval mode
    names = [n for n, _ in model.trainable_parameters()]
    assert names and all(n.startswith(f"branches.{train}.") for n in names)


def test_trainable_state_excludes_the_llm(model):
    state = model.trainable_state_dict()
    assert state and all(k.startswith(("vl.", "al.")) for k in state)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith("llm.") for n in frozen)


def test_real_sizes_compose_on_the_meta_device():
    tok = build_tokenizer()  # only its placeholder ids are used
    with torch.device("meta"):
        model = VideoLLaMA(SIZES["7b"], FrozenLlama(LlamaForCausalLM(llama_config(SIZES["7b"].llm)), tok))
    trainable = sum(p.numel() for _, p in model.trainable_parameters())
    assert trainable == 22_104_064 + 22_855_680  # VL + AL with their 4096-wide projections
    assert model.llm.model.num_parameters() == 6_738_415_616


def test_llm_and_size_must_agree(llm):
    with pytest.raises(ValueError, match="hidden size 128, size '7b' expects 4096"):
        VideoLLaMA(SIZES["7b"], llm)


def test_generation_is_deterministic(model):
    feats = torch.randn(8, 32, H, generator=torch.Generator().manual_seed(1))
    greedy = model.generate("What colour is the shape?", vl_features=feats, max_new_tokens=8)
    assert len(greedy.token_ids) == 8
    assert greedy == model.generate("What colour is the shape?", vl_features=feats, max_new_tokens=8)
    sampled = model.generate("Describe the video.", vl_features=feats, do_sample=True, seed=5, template_name="vicuna")
    assert sampled == model.generate(
        "Describe the video.", vl_features=feats, do_sample=True, seed=5, template_name="vicuna"
    )


def test_generation_from_raw_media_goes_through_the_encoders(model):
    g = torch.Generator().manual_seed(2)
    frames = torch.randn(8, 3, 224, 224, generator=g)
    fbank = torch.randn(8, 1, 128, 204, generator=g)
    enc = model.encoders
    kwargs = dict(max_new_tokens=6)
    assert model.generate("q", video=frames, **kwargs) == model.generate(
        "q", vl_features=enc.encode_frames(frames)[0], **kwargs
    )
    assert model.generate("q", image=frames[0], **kwargs) == model.generate(
        "q", vl_features=enc.encode_frames(frames[:1])[0], **kwargs
    )
    assert model.generate("q", audio=fbank, **kwargs) == model.generate(
        "q", al_features=enc.encode_audio(fbank[None])[0], **kwargs
    )


def test_audio_only_model_reads_video_through_imagebind_vision(llm, encoders):
    model = VideoLLaMA(TINY, llm, branches=["al"], encoders=encoders)
    frames = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    feats = encoders.encode_frames(frames)[1]  # (T, D) ImageBind vision
    expected = model.generate("q", al_features=feats, al_features_from="video", max_new_tokens=6)
    assert model.generate("q", video=frames, max_new_tokens=6) == expected


def test_generation_needs_media_and_encoders(llm):
    model = VideoLLaMA(TINY, llm)
    with pytest.raises(ValueError, match="needs a video, an image, audio, or precomputed features"):
        model.generate("q")
    with pytest.raises(ValueError, match="raw media needs a frozen encoder stack"):
        model.generate("q", video=torch.zeros(8, 3, 224, 224))
