"""EVA ViT-g + ln_vision + BLIP-2 image Q-Former: sizes, LAVIS checkpoint loading, and the forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.encoder_weights import (
    CheckpointError,
    blip2_qformer_layout,
    count_original_params,
    eva_vit_layout,
    load_image_encoder,
    read_state_dict,
    save_random_blip2,
    save_random_eva_vit,
)
from model.image_encoder import IMAGE_ENCODER_SIZES, FrozenImageEncoder

TINY = IMAGE_ENCODER_SIZES["tiny"]
REAL = IMAGE_ENCODER_SIZES["eva_vit_g"]


@pytest.fixture(scope="module")
def lavis_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lavis")
    eva = save_random_eva_vit(root / "eva_vit_g.pth", TINY, seed=1)
    blip2 = save_random_blip2(root / "blip2_pretrained_flant5xxl.pth", TINY, seed=2)
    return eva, blip2


@pytest.fixture(scope="module")
def loaded(lavis_files):
    eva, blip2 = lavis_files
    module = FrozenImageEncoder(TINY)
    reports = load_image_encoder(module, blip2, eva)
    return module, read_state_dict(eva), read_state_dict(blip2, nested="model"), reports


# ---------------------------------------------------------------- sizes


def test_real_size_param_counts_match_lavis():
    w, mlp = 1408, 6144
    block = 2 * w + 3 * w * w + 2 * w + (w * w + w) + 2 * w + (mlp * w + mlp) + (w * mlp + w)  # norms, qkv, q/v bias
    assert block == 25_248_768
    embed = w + 257 * w + (w * 3 * 14 * 14 + w)  # cls, pos, patch conv with bias
    eva_vit_g_39 = embed + 39 * block
    assert eva_vit_g_39 == 985_894_528
    h, enc, ffn = 768, 1408, 3072
    self_attn = 3 * (h * h + h) + (h * h + h) + 2 * h
    cross_attn = (h * h + h) + 2 * (enc * h + h) + (h * h + h) + 2 * h
    query_ffn = (ffn * h + ffn) + (h * ffn + h) + 2 * h
    qformer = 2 * h + 6 * (self_attn + cross_attn + query_ffn) + 6 * (self_attn + query_ffn)
    assert qformer == 105_137_664

    # The layouts (original key names and shapes) count the same.
    assert count_original_params(eva_vit_layout(REAL)) == eva_vit_g_39
    blip2 = blip2_qformer_layout(REAL)
    assert count_original_params(blip2, lambda k: k.startswith("Qformer.")) == qformer
    assert blip2["query_tokens"] == (1, 32, 768) and blip2["ln_vision.weight"] == (1408,)

    # Built on meta: transformers fuses the q/v biases with a zero k bias into one qkv.bias (+1408 per block).
    with torch.device("meta"):
        module = FrozenImageEncoder(REAL)
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert numel(module.vision) == eva_vit_g_39 + 2 * 1408 + 39 * 1408 == 985_952_256
    assert numel(module.qformer) == qformer
    assert module.query_tokens.numel() == 32 * 768
    assert len(module.vision.encoder.layers) == 39 and module.cfg.vit_tokens == 257


def test_real_layout_matches_the_reference_key_shapes():
    vit = eva_vit_layout(REAL, "visual_encoder.")
    assert vit["visual_encoder.cls_token"] == (1, 1, 1408)
    assert vit["visual_encoder.pos_embed"] == (1, 257, 1408)
    assert vit["visual_encoder.patch_embed.proj.weight"] == (1408, 3, 14, 14)
    assert vit["visual_encoder.blocks.38.attn.qkv.weight"] == (4224, 1408)
    assert vit["visual_encoder.blocks.38.attn.q_bias"] == vit["visual_encoder.blocks.38.attn.v_bias"] == (1408,)
    assert vit["visual_encoder.blocks.0.mlp.fc1.weight"] == (6144, 1408)
    assert vit["visual_encoder.blocks.0.mlp.fc2.weight"] == (1408, 6144)
    assert not any(k.startswith("visual_encoder.blocks.39.") for k in vit)  # 39 of EVA-CLIP-g's 40 blocks
    blip2 = blip2_qformer_layout(REAL)
    cross = sorted({int(k.split(".")[4]) for k in blip2 if ".crossattention." in k})
    assert cross == [0, 2, 4, 6, 8, 10]
    assert blip2["Qformer.bert.encoder.layer.10.crossattention.self.key.weight"] == (768, 1408)
    assert blip2["Qformer.bert.encoder.layer.11.intermediate_query.dense.weight"] == (3072, 768)
    assert not any(".intermediate." in k or "word_embeddings" in k for k in blip2)  # text parts removed


# ---------------------------------------------------------------- loading


def test_every_lavis_tensor_lands_in_place(loaded):
    module, vit, blip2, _ = loaded
    w = TINY.vit_width
    emb = module.vision.embeddings
    assert torch.equal(emb.class_embedding, vit["cls_token"]) and torch.equal(emb.position_embedding, vit["pos_embed"])
    assert torch.equal(emb.patch_embedding.weight, vit["patch_embed.proj.weight"])
    assert torch.equal(emb.patch_embedding.bias, vit["patch_embed.proj.bias"])
    for i, layer in enumerate(module.vision.encoder.layers):
        p = f"blocks.{i}."
        pairs = [
            (layer.layer_norm1.weight, "norm1.weight"), (layer.layer_norm1.bias, "norm1.bias"),
            (layer.self_attn.qkv.weight, "attn.qkv.weight"), (layer.self_attn.projection.weight, "attn.proj.weight"),
            (layer.self_attn.projection.bias, "attn.proj.bias"), (layer.layer_norm2.weight, "norm2.weight"),
            (layer.layer_norm2.bias, "norm2.bias"), (layer.mlp.fc1.weight, "mlp.fc1.weight"),
            (layer.mlp.fc1.bias, "mlp.fc1.bias"), (layer.mlp.fc2.weight, "mlp.fc2.weight"),
            (layer.mlp.fc2.bias, "mlp.fc2.bias"),
        ]  # fmt: skip
        assert all(torch.equal(param, vit[p + key]) for param, key in pairs)
        qkv_bias = layer.self_attn.qkv.bias
        assert torch.equal(qkv_bias[:w], vit[p + "attn.q_bias"]) and torch.equal(
            qkv_bias[2 * w :], vit[p + "attn.v_bias"]
        )
        assert torch.all(qkv_bias[w : 2 * w] == 0)
    assert torch.equal(module.vision.post_layernorm.weight, blip2["ln_vision.weight"])
    assert torch.equal(module.vision.post_layernorm.bias, blip2["ln_vision.bias"])
    assert torch.equal(module.query_tokens, blip2["query_tokens"])
    assert torch.equal(module.qformer.layernorm.weight, blip2["Qformer.bert.embeddings.LayerNorm.weight"])
    for i, layer in enumerate(module.qformer.encoder.layer):
        p = f"Qformer.bert.encoder.layer.{i}."
        for part in ("attention", "crossattention") if i % 2 == 0 else ("attention",):
            attn = getattr(layer, part)
            for name in ("query", "key", "value"):
                assert torch.equal(getattr(attn.attention, name).weight, blip2[f"{p}{part}.self.{name}.weight"])
                assert torch.equal(getattr(attn.attention, name).bias, blip2[f"{p}{part}.self.{name}.bias"])
            assert torch.equal(attn.output.dense.weight, blip2[f"{p}{part}.output.dense.weight"])
            assert torch.equal(attn.output.LayerNorm.bias, blip2[f"{p}{part}.output.LayerNorm.bias"])
        assert hasattr(layer, "crossattention") == (i % 2 == 0)
        assert torch.equal(layer.intermediate_query.dense.weight, blip2[p + "intermediate_query.dense.weight"])
        assert torch.equal(layer.output_query.dense.bias, blip2[p + "output_query.dense.bias"])
        assert torch.equal(layer.output_query.LayerNorm.weight, blip2[p + "output_query.LayerNorm.weight"])


def test_load_reports_used_and_ignored_keys(loaded):
    _, vit, blip2, (eva_report, blip2_report) = loaded
    assert len(eva_report.used) == len(eva_vit_layout(TINY)) == 4 + 2 * 13
    assert sorted(eva_report.ignored) == sorted(k for k in vit if k.startswith("blocks.2."))  # the 40th-block analogue
    assert set(blip2_report.ignored) == {
        "Qformer.bert.embeddings.word_embeddings.weight",
        "Qformer.bert.encoder.layer.0.intermediate.dense.weight",
        "Qformer.bert.encoder.layer.0.output.LayerNorm.weight",
        "Qformer.cls.predictions.bias",
        "t5_proj.weight",
    }
    assert "ignored 5" in blip2_report.summary() and "Q-Former text FFN" in blip2_report.summary()


def test_vit_weights_in_the_blip2_file_win(tmp_path, lavis_files):
    eva, _ = lavis_files
    blip2 = save_random_blip2(tmp_path / "blip2_with_vit.pth", TINY, seed=9, with_vit=True)
    module = FrozenImageEncoder(TINY)
    eva_report, _ = load_image_encoder(module, blip2, eva)
    vit = read_state_dict(blip2, nested="model")
    assert torch.equal(module.vision.encoder.layers[1].mlp.fc2.weight, vit["visual_encoder.blocks.1.mlp.fc2.weight"])
    assert eva_report.used == [] and "superseded" in eva_report.ignored["blocks.0.mlp.fc1.weight"]
    load_image_encoder(FrozenImageEncoder(TINY), blip2)  # the BLIP-2 file alone suffices then


def _edited(tmp_path, source, edit, nested=None):
    tensors = read_state_dict(source, nested=nested)
    edit(tensors)
    path = tmp_path / "edited.pth"
    torch.save({nested: tensors} if nested else tensors, path)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.__setitem__("blocks.1.attn.q_bias", torch.zeros(47)),
            r"wrong shapes: blocks.1.attn.q_bias \(47,\)",
        ),
        (lambda t: t.pop("blocks.0.mlp.fc2.bias"), "missing keys: blocks.0.mlp.fc2.bias"),
        (lambda t: t.__setitem__("blocks.0.attn.rel_pos", torch.zeros(3)), "unexpected keys: blocks.0.attn.rel_pos"),
    ],
)
def test_bad_eva_files_fail_naming_the_key(tmp_path, lavis_files, edit, message):
    eva, blip2 = lavis_files
    with pytest.raises(CheckpointError, match=message):
        load_image_encoder(FrozenImageEncoder(TINY), blip2, _edited(tmp_path, eva, edit))


def test_bad_blip2_files_fail_naming_the_key(tmp_path, lavis_files):
    eva, blip2 = lavis_files
    key = "Qformer.bert.encoder.layer.0.crossattention.self.key.weight"
    with pytest.raises(CheckpointError, match=f"missing keys: {key}"):
        load_image_encoder(FrozenImageEncoder(TINY), _edited(tmp_path, blip2, lambda t: t.pop(key), "model"), eva)
    with pytest.raises(CheckpointError, match="no visual_encoder"):
        load_image_encoder(FrozenImageEncoder(TINY), blip2)


class NotATensor:
    pass


def test_files_needing_pickle_code_are_refused(tmp_path, lavis_files):
    tensors = read_state_dict(lavis_files[1], nested="model")
    torch.save({"model": tensors, "config": NotATensor()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match=r"refused: unpickling it would run code \(.*NotATensor\)"):
        read_state_dict(tmp_path / "pickled.pth", nested="model")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: not a torch.save file"):
        read_state_dict(tmp_path / "garbage.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "absent.pth")


# ---------------------------------------------------------------- forward


def _attention(q, k, v, heads):
    b, n, d = q.shape
    split = lambda t: t.reshape(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
    weights = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)
    return (weights @ split(v)).transpose(1, 2).reshape(b, n, d)


def _bert_attention(x, context, t, prefix, heads):
    lin = lambda z, name: F.linear(z, t[f"{prefix}{name}.weight"], t[f"{prefix}{name}.bias"])  # noqa: E731
    out = lin(
        _attention(lin(x, "self.query"), lin(context, "self.key"), lin(context, "self.value"), heads), "output.dense"
    )
    ln = (t[prefix + "output.LayerNorm.weight"], t[prefix + "output.LayerNorm.bias"])
    return F.layer_norm(out + x, x.shape[-1:], *ln, eps=1e-12)


def lavis_forward(vit, blip2, cfg, frames):
    """Video-LLaMA's frozen image path from the raw LAVIS tensors, in plain torch ops."""
    w = cfg.vit_width
    x = F.conv2d(frames, vit["patch_embed.proj.weight"], vit["patch_embed.proj.bias"], stride=cfg.patch_size)
    x = torch.cat([vit["cls_token"].expand(len(frames), -1, -1), x.flatten(2).transpose(1, 2)], 1) + vit["pos_embed"]
    for i in range(cfg.vit_depth):
        t = {k.removeprefix(f"blocks.{i}."): v for k, v in vit.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (w,), t["norm1.weight"], t["norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, t["attn.qkv.weight"]).chunk(3, dim=-1)
        attn = _attention(q + t["attn.q_bias"], k, v + t["attn.v_bias"], cfg.vit_heads)  # no k bias
        x = x + F.linear(attn, t["attn.proj.weight"], t["attn.proj.bias"])
        h = F.layer_norm(x, (w,), t["norm2.weight"], t["norm2.bias"], eps=1e-6)
        x = x + F.linear(
            F.gelu(F.linear(h, t["mlp.fc1.weight"], t["mlp.fc1.bias"])), t["mlp.fc2.weight"], t["mlp.fc2.bias"]
        )
    image = F.layer_norm(x, (w,), blip2["ln_vision.weight"], blip2["ln_vision.bias"], eps=1e-5)
    ln = (blip2["Qformer.bert.embeddings.LayerNorm.weight"], blip2["Qformer.bert.embeddings.LayerNorm.bias"])
    h = F.layer_norm(blip2["query_tokens"].expand(len(frames), -1, -1), (cfg.qformer_width,), *ln, eps=1e-12)
    for i in range(cfg.qformer_depth):
        p = f"Qformer.bert.encoder.layer.{i}."
        h = _bert_attention(h, h, blip2, p + "attention.", cfg.qformer_heads)
        if i % cfg.cross_attention_freq == 0:
            h = _bert_attention(h, image, blip2, p + "crossattention.", cfg.qformer_heads)
        mid = F.gelu(
            F.linear(h, blip2[p + "intermediate_query.dense.weight"], blip2[p + "intermediate_query.dense.bias"])
        )
        out = F.linear(mid, blip2[p + "output_query.dense.weight"], blip2[p + "output_query.dense.bias"])
        ln = (blip2[p + "output_query.LayerNorm.weight"], blip2[p + "output_query.LayerNorm.bias"])
        h = F.layer_norm(out + h, h.shape[-1:], *ln, eps=1e-12)
    return h


def test_forward_matches_a_plain_torch_recomputation(loaded):
    module, vit, blip2, _ = loaded
    frames = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = module(frames)
    assert out.shape == (3, 32, 64) and out.dtype == torch.float32
    expected = lavis_forward(vit, blip2, TINY, frames)
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # the image matters


def test_ln_vision_uses_eps_1e5_in_fp32(loaded):
    module = loaded[0]
    ln = module.vision.post_layernorm
    x = 1e-3 * torch.randn(2, 257, 48, generator=torch.Generator().manual_seed(1))  # small variance: eps matters
    assert torch.allclose(ln(x), F.layer_norm(x, (48,), ln.weight, ln.bias, eps=1e-5), atol=1e-6)
    assert not torch.allclose(ln(x), F.layer_norm(x, (48,), ln.weight, ln.bias, eps=1e-6), atol=1e-3)
    half = ln(x.bfloat16())
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, F.layer_norm(x.bfloat16().float(), (48,), ln.weight, ln.bias, eps=1e-5).bfloat16())


def test_encoder_is_frozen():
    module = FrozenImageEncoder(TINY)
    assert not any(p.requires_grad for p in module.parameters())
    module.train()
    assert not any(m.training for m in module.modules())
    with pytest.raises(ValueError, match=r"frames \(B, 3, 224, 224\)"):
        module(torch.zeros(2, 3, 256, 256))
