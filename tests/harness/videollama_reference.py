"""The released Video-LLaMA checkpoint layout, transcribed by hand from
shared/reference/videollama_checkpoint_keys.md (not derived from model/, so tests that compare
the two can fail). Defaults are the real sizes; the arguments give the tiny layout too.
"""

from __future__ import annotations

import torch

Shapes = dict[str, tuple[int, ...]]


def qformer_keys(prefix: str, hidden: int = 768, encoder_width: int = 768, ffn: int = 3072, layers: int = 2) -> Shapes:
    """`{prefix}.bert.*` of a text-less 2-layer Q-Former with cross-attention in every layer."""
    keys: Shapes = {
        f"{prefix}.bert.embeddings.LayerNorm.weight": (hidden,),
        f"{prefix}.bert.embeddings.LayerNorm.bias": (hidden,),
    }
    for layer in range(layers):
        p = f"{prefix}.bert.encoder.layer.{layer}."
        for block, kv_width in (("attention", hidden), ("crossattention", encoder_width)):
            keys[f"{p}{block}.self.query.weight"] = (hidden, hidden)
            keys[f"{p}{block}.self.query.bias"] = (hidden,)
            for kv in ("key", "value"):
                keys[f"{p}{block}.self.{kv}.weight"] = (hidden, kv_width)
                keys[f"{p}{block}.self.{kv}.bias"] = (hidden,)
            keys[f"{p}{block}.output.dense.weight"] = (hidden, hidden)
            keys[f"{p}{block}.output.dense.bias"] = (hidden,)
            keys[f"{p}{block}.output.LayerNorm.weight"] = (hidden,)
            keys[f"{p}{block}.output.LayerNorm.bias"] = (hidden,)
        keys[f"{p}intermediate_query.dense.weight"] = (ffn, hidden)
        keys[f"{p}intermediate_query.dense.bias"] = (ffn,)
        keys[f"{p}output_query.dense.weight"] = (hidden, ffn)
        keys[f"{p}output_query.dense.bias"] = (hidden,)
        keys[f"{p}output_query.LayerNorm.weight"] = (hidden,)
        keys[f"{p}output_query.LayerNorm.bias"] = (hidden,)
    return keys


def vl_keys(llm_hidden: int, hidden: int = 768, encoder_width: int = 768, ffn: int = 3072, queries: int = 32) -> Shapes:
    """The VL branch: `video_query_tokens`, `video_frame_position_embedding`, `video_Qformer`, `llama_proj`."""
    return {
        "video_query_tokens": (1, queries, hidden),
        "video_frame_position_embedding.weight": (32, encoder_width),
        "llama_proj.weight": (llm_hidden, hidden),
        "llama_proj.bias": (llm_hidden,),
        **qformer_keys("video_Qformer", hidden, encoder_width, ffn),
    }


def al_keys(llm_hidden: int, hidden: int = 768, encoder_width: int = 1024, ffn: int = 3072, queries: int = 8) -> Shapes:
    """The AL branch: the same Q-Former pattern over ImageBind's 1024-d output, 8 queries."""
    return {
        "audio_query_tokens": (1, queries, hidden),
        "audio_position_embedding.weight": (8, encoder_width),
        "audio_llama_proj.weight": (llm_hidden, hidden),
        "audio_llama_proj.bias": (llm_hidden,),
        **qformer_keys("audio_Qformer", hidden, encoder_width, ffn),
    }


def ignorable_buffers(branch: str, llm_layers: int = 32, head_dim: int = 128) -> dict[str, torch.Tensor]:
    """Buffers a released file carries besides the trained parameters (the original saved every buffer)."""
    out = {
        "Qformer.bert.embeddings.position_ids": torch.arange(512).expand(1, -1).clone(),
        "video_Qformer.bert.embeddings.position_ids": torch.arange(512).expand(1, -1).clone(),
    }
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for layer in range(llm_layers):
        out[f"llama_model.model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    if branch == "al":
        out["audio_Qformer.bert.embeddings.position_ids"] = torch.arange(512).expand(1, -1).clone()
        out["audio_encoder.modality_preprocessors.text.mask"] = torch.full((77, 77), float("-inf")).triu(1)
        for modality, scale in (("audio", 20.0), ("depth", 5.0), ("thermal", 10.0), ("imu", 5.0)):
            out[f"audio_encoder.modality_postprocessors.{modality}.1.log_logit_scale"] = torch.tensor(scale).log()
    return out


def random_state(shapes: Shapes, seed: int) -> dict[str, torch.Tensor]:
    """Random fp32 values for each key (seeded), as a trained file would hold."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}


def param_count(shapes: Shapes) -> int:
    total = 0
    for shape in shapes.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
