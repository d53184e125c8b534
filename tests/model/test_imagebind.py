"""ImageBind-Huge audio and vision encoders: sizes, `imagebind_huge.pth` loading, and the forward."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model.encoder_weights import (
    CheckpointError,
    count_original_params,
    imagebind_layout,
    load_imagebind,
    read_state_dict,
    save_random_imagebind,
)
from model.imagebind import IMAGEBIND_SIZES, ImageBindEncoder

TINY = IMAGEBIND_SIZES["tiny"]
HUGE = IMAGEBIND_SIZES["huge"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_imagebind(tmp_path_factory.mktemp("imagebind") / "imagebind_huge.pth", TINY, seed=4)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    module = ImageBindEncoder(TINY)
    report = load_imagebind(module, checkpoint)
    return module, read_state_dict(checkpoint), report


def test_real_size_param_counts_match_imagebind_huge():
    def block(w, bias_kv):
        attn = 3 * w * w + 3 * w + (w * w + w) + (2 * w if bias_kv else 0)
        return attn + 4 * w + (4 * w * w + 4 * w) + (4 * w * w + w)  # norm_1/norm_2, fc1, fc2

    audio_tokens = 1 + ((128 - 16) // 10 + 1) * ((204 - 16) // 10 + 1)
    assert audio_tokens == 229
    audio = 768 + 768 * 16 * 16 + 2 * 768 + audio_tokens * 768  # cls, conv (no bias), stem LayerNorm, positions
    audio += 12 * block(768, True) + 2 * 768 + 1024 * 768  # blocks with bias_k/bias_v; head LayerNorm + Linear
    assert audio == 86_235_648
    vision = 1280 + 1280 * 3 * 2 * 14 * 14 + 257 * 1280 + 2 * 1280  # cls, Conv3d (no bias), positions, pre-LN
    vision += 32 * block(1280, False) + 2 * 1280 + 1024 * 1280
    assert vision == 632_829_440

    layout = imagebind_layout(HUGE)
    count = lambda modality: count_original_params(layout, lambda k: f".{modality}." in k and "logit" not in k)  # noqa: E731
    assert count("audio") == audio and count("vision") == vision
    with torch.device("meta"):
        module = ImageBindEncoder(HUGE)
    numel = lambda modality: sum(p.numel() for k, p in module.named_parameters() if f".{modality}." in k)  # noqa: E731
    assert numel("audio") == audio and numel("vision") == vision
    assert HUGE.audio_grid == (12, 19) and HUGE.vision_tokens == 257


def test_real_layout_matches_the_reference_key_shapes():
    layout = imagebind_layout(HUGE)
    assert layout["modality_preprocessors.vision.rgbt_stem.proj.1.weight"] == (1280, 3, 2, 14, 14)
    assert layout["modality_preprocessors.vision.pos_embedding_helper.pos_embed"] == (1, 257, 1280)
    assert layout["modality_trunks.vision.blocks.31.attn.in_proj_weight"] == (3840, 1280)
    assert layout["modality_trunks.vision.blocks.0.mlp.fc1.weight"] == (5120, 1280)
    assert layout["modality_heads.vision.2.weight"] == (1024, 1280)
    assert layout["modality_preprocessors.audio.rgbt_stem.proj.weight"] == (768, 1, 16, 16)
    assert layout["modality_preprocessors.audio.pos_embedding_helper.pos_embed"] == (1, 229, 768)
    assert layout["modality_trunks.audio.blocks.11.attn.bias_k"] == (1, 1, 768)
    assert layout["modality_trunks.audio.blocks.0.attn.in_proj_weight"] == (2304, 768)
    assert layout["modality_heads.audio.2.weight"] == (1024, 768)
    assert layout["modality_postprocessors.audio.1.log_logit_scale"] == ()
    assert "modality_trunks.vision.blocks.0.attn.bias_k" not in layout  # add_bias_kv only for audio
    assert "modality_trunks.audio.pre_transformer_layer.0.weight" not in layout  # pre-LN only for vision


def test_every_tensor_lands_and_other_modalities_are_ignored(loaded):
    module, tensors, report = loaded
    state = module.state_dict()
    assert set(state) == set(imagebind_layout(TINY)) == set(report.used)
    assert all(torch.equal(state[k], tensors[k]) for k in state)
    assert sorted(report.ignored) == [
        "modality_heads.depth.2.weight",
        "modality_postprocessors.text.1.log_logit_scale",
        "modality_trunks.text.blocks.0.attn.in_proj_weight",
    ]


def _attention(q, k, v, heads):
    b, n, d = q.shape
    split = lambda t: t.reshape(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
    weights = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)
    return (weights @ split(v)).transpose(1, 2).reshape(b, n, d)


def imagebind_forward(t, cfg, modality, x):
    """ImageBind's forward for one modality from the raw checkpoint tensors, in plain torch ops."""
    pre, trunk, head = (f"modality_{part}.{modality}." for part in ("preprocessors", "trunks", "heads"))
    if modality == "vision":
        w, heads, depth = cfg.vision_width, cfg.vision_heads, cfg.vision_depth
        video = x.unsqueeze(2).repeat(1, 1, 2, 1, 1)  # an image is a 2-frame video
        tokens = F.conv3d(video, t[pre + "rgbt_stem.proj.1.weight"], stride=(2, 14, 14)).flatten(2).transpose(1, 2)
    else:
        w, heads, depth = cfg.audio_width, cfg.audio_heads, cfg.audio_depth
        tokens = F.conv2d(x, t[pre + "rgbt_stem.proj.weight"], stride=10).flatten(2).transpose(1, 2)
        norm = (t[pre + "rgbt_stem.norm_layer.weight"], t[pre + "rgbt_stem.norm_layer.bias"])
        tokens = F.layer_norm(tokens, (w,), *norm, eps=1e-5)
    tokens = torch.cat([t[pre + "cls_token"].expand(len(x), -1, -1), tokens], 1)
    tokens = tokens + t[pre + "pos_embedding_helper.pos_embed"]
    if modality == "vision":
        ln = (t[trunk + "pre_transformer_layer.0.weight"], t[trunk + "pre_transformer_layer.0.bias"])
        tokens = F.layer_norm(tokens, (w,), *ln, eps=1e-6)
    for i in range(depth):
        b = {k.removeprefix(f"{trunk}blocks.{i}."): v for k, v in t.items() if k.startswith(f"{trunk}blocks.{i}.")}
        h = F.layer_norm(tokens, (w,), b["norm_1.weight"], b["norm_1.bias"], eps=1e-6)
        q, k, v = F.linear(h, b["attn.in_proj_weight"], b["attn.in_proj_bias"]).chunk(3, dim=-1)
        if "attn.bias_k" in b:  # one extra learned key/value per sequence
            k = torch.cat([k, b["attn.bias_k"].expand(len(x), 1, w)], 1)
            v = torch.cat([v, b["attn.bias_v"].expand(len(x), 1, w)], 1)
        tokens = tokens + F.linear(_attention(q, k, v, heads), b["attn.out_proj.weight"], b["attn.out_proj.bias"])
        h = F.layer_norm(tokens, (w,), b["norm_2.weight"], b["norm_2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, b["mlp.fc1.weight"], b["mlp.fc1.bias"])), b["mlp.fc2.weight"], b["mlp.fc2.bias"]
        )
        tokens = tokens + h
    cls = F.layer_norm(tokens, (w,), t[head + "0.weight"], t[head + "0.bias"], eps=1e-6)[:, 0]
    emb = F.normalize(F.linear(cls, t[head + "2.weight"]), dim=-1)
    if modality == "audio":
        emb = emb * t["modality_postprocessors.audio.1.log_logit_scale"].exp()
    return emb


def test_audio_forward_matches_a_plain_torch_recomputation(loaded):
    module, tensors, _ = loaded
    clips = torch.randn(2, 8, 1, 128, 204, generator=torch.Generator().manual_seed(0))
    out = module.encode_audio(clips)
    assert out.shape == (2, 8, 64) and out.dtype == torch.float32
    expected = imagebind_forward(tensors, TINY, "audio", clips.flatten(0, 1)).view(2, 8, 64)
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
    assert torch.allclose(out.norm(dim=-1), torch.full((2, 8), 20.0), atol=1e-4)  # the fixed x20
    assert not torch.allclose(out[0, 0], out[0, 1], atol=1e-2)


def test_vision_forward_matches_and_the_x20_option(loaded):
    module, tensors, _ = loaded
    frames = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    out = module.encode_vision(frames)
    assert out.shape == (3, 64)
    assert torch.allclose(out, imagebind_forward(tensors, TINY, "vision", frames), atol=1e-5)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)  # the original does not scale vision
    scaled = ImageBindEncoder(dataclasses.replace(TINY, scale_vision_like_audio=True))
    scaled.load_state_dict(module.state_dict())
    assert torch.allclose(scaled.encode_vision(frames), 20 * out, atol=1e-4)


def _edited(tmp_path, source, edit):
    tensors = read_state_dict(source)
    edit(tensors)
    torch.save(tensors, tmp_path / "edited.pth")
    return tmp_path / "edited.pth"


def test_bad_files_fail_naming_the_key(tmp_path, checkpoint):
    key = "modality_trunks.audio.blocks.1.attn.bias_k"
    with pytest.raises(CheckpointError, match=f"missing keys: {key}"):
        load_imagebind(ImageBindEncoder(TINY), _edited(tmp_path, checkpoint, lambda t: t.pop(key)))
    extra = "modality_trunks.audio.blocks.0.attn.rel_pos"
    with pytest.raises(CheckpointError, match=f"unexpected keys: {extra}"):
        load_imagebind(
            ImageBindEncoder(TINY), _edited(tmp_path, checkpoint, lambda t: t.update({extra: torch.ones(2)}))
        )
    narrower = ImageBindEncoder(dataclasses.replace(TINY, out_dim=32))
    with pytest.raises(CheckpointError, match=r"wrong shapes: modality_heads.vision.2.weight \(64, 48\)"):
        load_imagebind(narrower, checkpoint)


def test_encoder_is_frozen_and_checks_inputs():
    module = ImageBindEncoder(TINY)
    assert not any(p.requires_grad for p in module.parameters())
    module.train()
    assert not any(m.training for m in module.modules())
    with pytest.raises(ValueError, match=r"clips \(B, S, 1, 128, 204\)"):
        module.encode_audio(torch.zeros(2, 1, 128, 204))
    with pytest.raises(ValueError, match=r"frames \(B, 3, H, W\)"):
        module.encode_vision(torch.zeros(2, 224, 224))
