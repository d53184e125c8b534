"""Video-LLaMA: the trainable branches on top of the frozen LLM, fed with precomputed features.

Training reads the frozen encoders' outputs from the feature store, so `forward(batch)` takes
features, never pixels:

    batch = {
        "input_ids", "attention_mask", "labels": (B, L) from model.text (placeholders included),
        "vl_features": (B, T, 32, H) image Q-Former outputs per frame (T <= 32; an image is T = 1),
        "vl_mask":     (B, T) optional, 1 on real frames when samples are padded to one T,
        "al_features": (B, T, D) ImageBind audio clips (T = 8) or vision frames (AL training on video),
        "al_mask":     (B, T) optional,
    }

VL outputs go to the `<ImageHere>` positions, AL outputs to `<AudioHere>`; a batch may carry
either or both. For generation from raw media, pass the frozen-encoder stack
(`model.frozen_encoders.FrozenEncoders`); it is used, never trained or saved here.

For DeepSpeed: `model.branches` (an `nn.ModuleDict`) is everything trainable, so the optimizer
gets `model.trainable_parameters()` and checkpoints hold `model.trainable_state_dict()`; the LLM
has `requires_grad=False` everywhere, which is what `exclude_frozen_parameters=True` keys on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from model.branches import BRANCHES, build_branches
from model.config import ModelSize
from model.llm import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, FrozenLlama
from model.text import Sample as TextSample
from model.text import collate, generation_prompt, media_block, template

if TYPE_CHECKING:  # the frozen stack is optional here; training reads features from the store
    from model.frozen_encoders import FrozenEncoders


@dataclass(frozen=True)
class Reply:
    text: str
    token_ids: list[int]


class VideoLLaMA(nn.Module):
    def __init__(
        self,
        size: ModelSize,
        llm: FrozenLlama,
        branches: Sequence[str] = BRANCHES,
        encoders: FrozenEncoders | None = None,
    ):
        super().__init__()
        if llm.hidden_size != size.llm.hidden:
            raise ValueError(
                f"the LLM has hidden size {llm.hidden_size}, size {size.name!r} expects {size.llm.hidden}; "
                "pick the size that matches the LLM directory"
            )
        self.size = size
        self.llm = llm
        self.branches = build_branches(size, tuple(branches), llm.hidden_size)
        # Not a submodule: the encoders have their own weights, device and precision, and must not
        # appear in this model's parameters or state dict.
        object.__setattr__(self, "encoders", encoders)
        self.set_trainable(branches)

    # ---- what the trainer needs -------------------------------------------------------------
    def set_trainable(self, which: Sequence[str]) -> None:
        """Train only these branches (VL stages: ["vl"], AL stages: ["al"]); the LLM is always frozen."""
        unknown = set(which) - set(self.branches)
        if unknown:
            raise ValueError(f"no branch {sorted(unknown)} in this model; it has {list(self.branches)}")
        for name, branch in self.branches.items():
            branch.requires_grad_(name in which)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"branches.{n}", p) for n, p in self.branches.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Branch weights keyed as model.checkpoint expects (`vl.video_Qformer...`); no LLM weights."""
        return self.branches.state_dict()

    # ---- training ---------------------------------------------------------------------------
    def media(self, batch: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Branch outputs keyed by the placeholder id they replace."""
        out = {}
        if batch.get("vl_features") is not None:
            out[self.llm.image_token_id] = self._branch("vl")(batch["vl_features"], batch.get("vl_mask"))
        if batch.get("al_features") is not None:
            out[self.llm.audio_token_id] = self._branch("al")(batch["al_features"], batch.get("al_mask"))
        return out

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The LM loss of a stage-1 or stage-2 batch (the format is the same; only labels differ)."""
        return self.llm(batch["input_ids"], batch["attention_mask"], batch["labels"], self.media(batch))

    def _branch(self, name: str) -> nn.Module:
        if name not in self.branches:
            raise ValueError(f"the batch has {name} features but the model has no {name} branch")
        return self.branches[name]

    # ---- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        *,
        video: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        vl_features: torch.Tensor | None = None,
        al_features: torch.Tensor | None = None,
        al_features_from: str = "audio",
        template_name: str = "llama2",
        history: Sequence[tuple[str, str]] = (),
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 0.9,
        seed: int | None = None,
    ) -> Reply:
        """Answer `prompt` about a video (T, 3, 224, 224), an image (3, 224, 224), audio fbank
        (8, 1, 128, 204), or precomputed features: vl_features (T, 32, H), al_features (T, D) of
        `al_features_from` ("audio", or "video"/"image" for ImageBind vision frames). Without
        placeholders in `prompt`, media blocks (`<Video>...</Video> `) go before it, as the original chat."""
        media: dict[str, tuple[torch.Tensor, str]] = {}  # branch -> (features, media kind)
        if video is not None or image is not None:
            frames = video if video is not None else image.unsqueeze(0)  # an image is a 1-frame video
            media.update(self._encode_frames(frames, "video" if video is not None else "image"))
        if audio is not None:
            media["al"] = (self._encoders().encode_audio(audio.unsqueeze(0))[0], "audio")  # (8, D)
        if vl_features is not None:
            media["vl"] = (vl_features, "video" if vl_features.shape[-3] > 1 else "image")
        if al_features is not None:
            media["al"] = (al_features, al_features_from)
        if not media:
            raise ValueError("generate needs a video, an image, audio, or precomputed features")
        was_training = self.training
        self.eval()  # no dropout in the branches while answering
        try:
            options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p)
            return self._generate(prompt, media, template_name, history, seed=seed, **options)
        finally:
            self.train(was_training)

    def _encode_frames(self, frames: torch.Tensor, kind: str) -> dict[str, tuple[torch.Tensor, str]]:
        """Frames go through the image path to the VL branch; an AL-only model reads them through
        ImageBind vision instead, as AL training does."""
        qformer, vision = self._encoders().encode_frames(frames)  # (T, 32, H), (T, D)
        return {"vl": (qformer, kind)} if "vl" in self.branches else {"al": (vision, kind)}

    def _generate(self, prompt, media, template_name, history, **options) -> Reply:
        tok, tpl = self.llm.tokenizer, template(template_name)
        blocks, batch = [], {}
        for branch, placeholder, q in (
            ("vl", IMAGE_PLACEHOLDER, self.size.vl),
            ("al", AUDIO_PLACEHOLDER, self.size.al),
        ):
            if branch in media:
                feats, kind = media[branch]
                batch[f"{branch}_features"] = feats.float().unsqueeze(0)  # (1, T, 32, H) or (1, T, D)
                blocks.append(media_block(kind, q.num_query_tokens, placeholder))
        has_placeholders = IMAGE_PLACEHOLDER in prompt or AUDIO_PLACEHOLDER in prompt
        message = prompt if has_placeholders else " ".join([*blocks, prompt])
        ids = generation_prompt(tok, message, template_name, history)
        text = collate([TextSample(ids, ids)], tok.pad_token_id, padding_side="left")
        device = self.llm.model.device
        new = self.llm.generate(
            text["input_ids"].to(device),
            text["attention_mask"].to(device),
            self.media({k: v.to(device) for k, v in batch.items()}),
            stop_strings=[tpl.end_sym] if tpl.end_sym != tok.eos_token else [],
            **options,
        )[0].tolist()
        answer = tok.decode(new, skip_special_tokens=True).split(tpl.end_sym)[0].strip()
        return Reply(text=answer, token_ids=new)

    def _encoders(self) -> FrozenEncoders:
        if self.encoders is None:
            raise ValueError("raw media needs a frozen encoder stack: VideoLLaMA(..., encoders=...)")
        return self.encoders
