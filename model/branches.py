"""The trainable Video-LLaMA branches: frozen-encoder features in, LLM-token embeddings out.

VL: per-frame image Q-Former outputs (B, T, 32, H) + frame position embedding, flattened to T*32
tokens, read by a 2-layer video Q-Former with 32 queries, projected to the LLM width.
AL: ImageBind vectors (B, T, D) (8 audio clips, or T video frames while training on images)
+ clip position embedding, read by a 2-layer audio Q-Former with 8 queries, projected.

Attribute names follow the original (`video_Qformer`, `llama_proj`, ...); transformers'
`Blip2QFormerModel` with `cross_attention_frequency=1` is the same architecture as the original's
text-less BERT Q-Former. Its parameter names differ from the released checkpoints only
mechanically (`layernorm` vs `bert.embeddings.LayerNorm`, `attention.attention` vs
`attention.self`); `model.checkpoint` maps between them.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from model.config import ModelSize, QFormerSize


def qformer_config(q: QFormerSize) -> Blip2QFormerConfig:
    """A text-less BERT Q-Former with cross-attention in every layer."""
    return Blip2QFormerConfig(
        hidden_size=q.hidden,
        num_hidden_layers=q.layers,
        num_attention_heads=q.heads,
        intermediate_size=q.intermediate,
        hidden_act="gelu",
        hidden_dropout_prob=q.dropout,
        attention_probs_dropout_prob=q.dropout,
        layer_norm_eps=q.layer_norm_eps,
        initializer_range=q.initializer_range,
        cross_attention_frequency=1,  # the original's video/audio heads cross-attend in every layer
        encoder_hidden_size=q.encoder_width,
        use_qformer_text_input=False,  # no text FFN: the released files have only `*_query` FFNs
    )


def _query_tokens(q: QFormerSize) -> nn.Parameter:
    # N(0, 0.02) as the original's `init_video_Qformer`
    return nn.Parameter(torch.zeros(1, q.num_query_tokens, q.hidden).normal_(mean=0.0, std=q.initializer_range))


def _key_mask(mask: torch.Tensor | None, batch: int, steps: int, repeat: int, device) -> torch.Tensor:
    """(B, T) validity of frames/clips -> (B, T*repeat) mask over the Q-Former's cross-attention keys."""
    if mask is None:
        return torch.ones(batch, steps * repeat, dtype=torch.long, device=device)
    if mask.shape != (batch, steps):
        raise ValueError(f"mask must be (batch, steps) = {(batch, steps)}, got {tuple(mask.shape)}")
    if not mask.bool().any(dim=1).all():
        raise ValueError("every sample needs at least one valid frame/clip in its mask")
    return mask.long().repeat_interleave(repeat, dim=1)  # (B, T*repeat)


class VideoBranch(nn.Module):
    """Video Q-Former over T frames of 32 image-Q-Former tokens -> 32 LLM-token embeddings."""

    def __init__(self, q: QFormerSize, llm_hidden: int):
        super().__init__()
        self.q = q
        self.video_frame_position_embedding = nn.Embedding(q.max_positions, q.encoder_width)
        self.video_query_tokens = _query_tokens(q)
        self.video_Qformer = Blip2QFormerModel(qformer_config(q))
        self.llama_proj = nn.Linear(q.hidden, llm_hidden)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, T, Q, H) per-frame image Q-Former output, T <= 32 (an image is T=1);
        frame_mask (B, T), 1 for real frames, for batches padded to a common T. -> (B, 32, llm_hidden)."""
        if features.ndim != 4 or features.shape[-1] != self.q.encoder_width:
            raise ValueError(
                f"video features must be (batch, frames, queries, {self.q.encoder_width}), got {tuple(features.shape)}"
            )
        b, t, nq, _ = features.shape
        if t > self.q.max_positions:
            raise ValueError(f"{t} frames, but the frame position table has {self.q.max_positions} rows")
        positions = self.video_frame_position_embedding(torch.arange(t, device=features.device))  # (T, H)
        frames = features + positions[None, :, None, :]  # (B, T, Q, H): one position per frame, shared by its Q
        frames = frames.reshape(b, t * nq, -1)  # (B, T*Q, H)
        keys_mask = _key_mask(frame_mask, b, t, nq, features.device)
        queries = self.video_query_tokens.expand(b, -1, -1)  # (B, 32, hidden)
        hidden = self.video_Qformer(
            query_embeds=queries, encoder_hidden_states=frames, encoder_attention_mask=keys_mask
        ).last_hidden_state  # (B, 32, hidden)
        return self.llama_proj(hidden)  # (B, 32, llm_hidden)


class AudioBranch(nn.Module):
    """Audio Q-Former over T ImageBind vectors (8 audio clips, or video frames) -> 8 LLM-token embeddings."""

    def __init__(self, q: QFormerSize, llm_hidden: int):
        super().__init__()
        self.q = q
        self.audio_position_embedding = nn.Embedding(q.max_positions, q.encoder_width)
        self.audio_query_tokens = _query_tokens(q)
        self.audio_Qformer = Blip2QFormerModel(qformer_config(q))
        self.audio_llama_proj = nn.Linear(q.hidden, llm_hidden)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, T, D), T <= 8; mask (B, T) for padded batches. -> (B, 8, llm_hidden)."""
        if features.ndim != 3 or features.shape[-1] != self.q.encoder_width:
            raise ValueError(
                f"ImageBind features must be (batch, clips, {self.q.encoder_width}), got {tuple(features.shape)}"
            )
        b, t, _ = features.shape
        if t > self.q.max_positions:
            raise ValueError(f"{t} clips/frames, but the audio position table has {self.q.max_positions} rows")
        clips = features + self.audio_position_embedding(torch.arange(t, device=features.device))  # (B, T, D)
        queries = self.audio_query_tokens.expand(b, -1, -1)  # (B, 8, hidden)
        hidden = self.audio_Qformer(
            query_embeds=queries,
            encoder_hidden_states=clips,
            encoder_attention_mask=_key_mask(mask, b, t, 1, clips.device),
        ).last_hidden_state  # (B, 8, hidden)
        return self.audio_llama_proj(hidden)  # (B, 8, llm_hidden)


BRANCHES = ("vl", "al")


def build_branches(size: ModelSize, which: tuple[str, ...] = BRANCHES, llm_hidden: int | None = None) -> nn.ModuleDict:
    """The trainable modules as one `nn.ModuleDict` ({"vl": VideoBranch, "al": AudioBranch}), so a
    trainer hands exactly these to the optimizer and a checkpoint holds exactly these."""
    unknown = set(which) - set(BRANCHES)
    if unknown:
        raise ValueError(f"unknown branches {sorted(unknown)}; choose from {BRANCHES}")
    hidden = llm_hidden or size.llm.hidden
    modules: dict[str, nn.Module] = {}
    if "vl" in which:
        modules["vl"] = VideoBranch(size.vl, hidden)
    if "al" in which:
        modules["al"] = AudioBranch(size.al, hidden)
    return nn.ModuleDict(modules)
