"""The frozen LLaMA: loads a HF-format directory, splices branch outputs in at placeholder ids,
returns the LM loss, and generates.

The placeholders `<ImageHere>` (32000 for LLaMA-2/Vicuna) and `<AudioHere>` (32001) are added to the
tokenizer only: their ids sit past the embedding table, which is never resized. Before embedding
they are replaced by id 0, and the embeddings at those positions are overwritten by the VL / AL
branch outputs, in order, as the original's `forward` does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<ImageHere>"
AUDIO_PLACEHOLDER = "<AudioHere>"
PLACEHOLDERS = (IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER)


def add_placeholder_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Make sure both placeholders are single special tokens; returns {token: id}.

    A tokenizer without a pad token pads with `<unk>`, as the original does for LLaMA."""
    missing = [t for t in PLACEHOLDERS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return {t: tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDERS}


def stage_locally(uri: str, storage_options: Mapping | None = None) -> tuple[str, contextlib.ExitStack]:
    """A local directory holding `uri` (an `s3://` model directory is downloaded to a temp dir that
    lives as long as the returned ExitStack). Local paths are used in place."""
    stack = contextlib.ExitStack()
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://"), stack
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri, **dict(storage_options or {}))
    local = stack.enter_context(tempfile.TemporaryDirectory(prefix="vllama-llm-"))
    fs.get(path.rstrip("/") + "/", local + "/", recursive=True)
    return local, stack


class FrozenLlama(nn.Module):
    """LlamaForCausalLM with every parameter frozen, plus the placeholder splice."""

    def __init__(self, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        ids = add_placeholder_tokens(tokenizer)
        self.image_token_id, self.audio_token_id = ids[IMAGE_PLACEHOLDER], ids[AUDIO_PLACEHOLDER]

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        storage_options: Mapping | None = None,
    ) -> FrozenLlama:
        """Load a HF-format LLaMA directory (local or `s3://`) in `dtype` (bf16, as the original)."""
        local, stack = stage_locally(str(path), storage_options)
        with stack:
            if not os.path.exists(os.path.join(local, "config.json")):
                raise FileNotFoundError(f"{path}: no config.json; expected a HF-format LLaMA directory")
            tokenizer = AutoTokenizer.from_pretrained(local)
            model = LlamaForCausalLM.from_pretrained(local, dtype=dtype)
        if device is not None:
            model = model.to(device)
        log.info("loaded %s: %.2fB parameters, %s", path, model.num_parameters() / 1e9, dtype)
        return cls(model, tokenizer)

    def train(self, mode: bool = True) -> FrozenLlama:
        """The LLM stays in eval mode whatever the trainer asks: it is frozen."""
        super().train(False)
        return self

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def placeholder_id(self, token: str) -> int:
        return {IMAGE_PLACEHOLDER: self.image_token_id, AUDIO_PLACEHOLDER: self.audio_token_id}[token]

    def embed(self, input_ids: torch.Tensor, media: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        """input_ids (B, L) with placeholder runs; media {placeholder id: (B, N, hidden)} where every
        row holds exactly N of that placeholder. -> (B, L, hidden) in the LLM's dtype."""
        media = dict(media or {})
        table = self.model.get_input_embeddings()
        is_placeholder = (input_ids == self.image_token_id) | (input_ids == self.audio_token_id)
        embeds = table(input_ids.masked_fill(is_placeholder, 0))  # (B, L, hidden)
        for token_id in (self.image_token_id, self.audio_token_id):
            at = input_ids == token_id  # (B, L)
            if token_id not in media:
                if at.any():
                    raise ValueError(f"input has {self.tokenizer.convert_ids_to_tokens(token_id)} but no features")
                continue
            feats = media.pop(token_id)
            counts = at.sum(dim=1)
            if feats.shape[0] != input_ids.shape[0] or (counts != feats.shape[1]).any():
                raise ValueError(
                    f"{self.tokenizer.convert_ids_to_tokens(token_id)}: per-row placeholder counts "
                    f"{counts.tolist()} do not match features of shape {tuple(feats.shape)} (batch, tokens, hidden)"
                )
            # Row-major scatter: row b's N features fill row b's N placeholders, in order.
            embeds = embeds.masked_scatter(at.unsqueeze(-1), feats.to(embeds.dtype))
        if media:
            raise ValueError(f"features for unknown placeholder ids {sorted(media)}")
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        media: Mapping[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mean next-token loss over the positions whose label is not -100 (shifted inside HF)."""
        embeds = self.embed(input_ids, media)
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels).loss

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: Mapping[int, torch.Tensor] | None = None,
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 0.9,
        seed: int | None = None,
        stop_strings: Sequence[str] = (),
    ) -> torch.Tensor:
        """New token ids (B, <= max_new_tokens) after left-padded prompts; greedy unless `do_sample`.
        `seed` makes sampling reproducible without touching the caller's global RNG state."""
        embeds = self.embed(input_ids, media)
        options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=1)
        if do_sample:
            # top_k 50 is transformers' default, which the original's chat sampled with alongside top_p.
            options.update(temperature=temperature, top_p=top_p, top_k=50)
        if stop_strings:
            options.update(stop_strings=list(stop_strings), tokenizer=self.tokenizer)
        devices = [embeds.device] if embeds.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return self.model.generate(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                **options,
            )
