"""One feature-store sample -> one training example: a view of its features and its token sequence.

The branch decides the features: VL reads `vl.npy` (V, T, 32, H) and fills `<ImageHere>` runs of 32;
AL reads ImageBind vision `ibv.npy` (V, T, D), as the original trains the audio branch on video
frames, and fills `<AudioHere>` runs of 8. The caller picks which of the V stored views
(orchestration/data.py draws one per visit).

Text, per dataset kind (see train_config.TextKind), built with model/text.py:
- caption: stage 1, `[BOS] + media + (caption + '\\n')[:max_txt_len]`, no prompt (the stage-1 configs set none).
- prompted: stage-2 image-caption pairs (cc_sbu_align): one of the alignment prompts in the template as
  the human turn, the caption + end symbol as the supervised answer, cut to max_txt_len tokens.
- conversation: LLaVA `conversations` ([{"from": "human"|"gpt", "value"}], `<image>` marks the media)
  or VideoChat `QA` ([{"q", "a"}], the media block goes before the first question, with the frame-time
  message when the store recorded `frame_seconds`), cut to max_len tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from model.llm import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER
from model.text import IGNORE_INDEX, Sample, caption_sample, collate, conversation_sample, expand_placeholders
from pipelines.features.format import FeatureSample

LLAVA_MEDIA = "<image>"  # LLaVA's media marker inside a human turn
FEATURE_MEMBER = {"vl": "vl", "al": "ibv"}  # which stored array each branch trains on


class BadSample(ValueError):
    """A sample that cannot become an example; the message names the key and why. It is skipped."""


@dataclass(frozen=True)
class Example:
    key: str
    features: np.ndarray  # (T, 32, H) for VL, (T, D) for AL; float16 as stored
    text: Sample


@dataclass(frozen=True)
class TextSpec:
    """Everything text-side an example needs; one per training stage."""

    branch: str  # "vl" | "al"
    num_tokens: int  # placeholders per media block: 32 VL, 8 AL (the branch's query tokens)
    template: str  # "vicuna" | "llama2" (stage 2)
    max_txt_len: int
    max_len: int
    prompts: tuple[str, ...]

    @property
    def placeholder(self) -> str:
        return IMAGE_PLACEHOLDER if self.branch == "vl" else AUDIO_PLACEHOLDER


def media_block(kind: str, spec: TextSpec) -> str:
    tag = {"video": "Video", "image": "Image"}[kind]
    return f"<{tag}>{spec.placeholder * spec.num_tokens}</{tag}>"


def caption_text(tok: PreTrainedTokenizerBase, caption: str, spec: TextSpec) -> Sample:
    return caption_sample(tok, caption, spec.num_tokens, spec.placeholder, spec.max_txt_len, end_sym="\n")


def prompted_text(tok: PreTrainedTokenizerBase, caption: str, prompt: str, spec: TextSpec) -> Sample:
    """The prompt (its single `<ImageHere>` expanded to the branch's placeholders) as the human turn,
    the caption as the answer; the answer (caption + end symbol) keeps max_txt_len tokens, as the
    original cuts the regressed text alone."""
    question = expand_placeholders(prompt, spec.num_tokens, IMAGE_PLACEHOLDER, spec.placeholder)
    full = conversation_sample(tok, [(question, caption)], spec.template, max_len=1 << 30)
    prompt_len = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    end = prompt_len + spec.max_txt_len
    return Sample(full.input_ids[:end], full.labels[:end])


def conversation_turns(meta: dict, kind: str, spec: TextSpec) -> list[tuple[str, str]]:
    """(question, answer) turns with the media block placed as the original's loaders place it."""
    block = media_block(kind, spec)
    if "QA" in meta:  # VideoChat: the block (and frame-time message) prefixes the first question
        turns = [(str(t["q"]), str(t["a"])) for t in meta["QA"]]
        seconds = meta.get("frame_seconds")
        message = ""
        if seconds:
            message = (
                f"The video contains {len(seconds)} frames sampled at {', '.join(str(s) for s in seconds)} seconds. "
            )
        if turns:
            turns[0] = (f"{block} {message}{turns[0][0]}", turns[0][1])
        return turns
    if "conversations" in meta:  # LLaVA: human/gpt alternate, <image> marks the media
        conv = meta["conversations"]
        humans = [str(t["value"]).replace(LLAVA_MEDIA, block) for t in conv[0::2]]
        answers = [str(t["value"]) for t in conv[1::2]]
        if any(t.get("from") != "human" for t in conv[0::2]) or any(t.get("from") != "gpt" for t in conv[1::2]):
            raise BadSample("conversation turns must alternate human, gpt")
        return list(zip(humans, answers, strict=False))
    raise BadSample("json holds neither 'conversations' (LLaVA) nor 'QA' (VideoChat)")


def build_example(
    tok: PreTrainedTokenizerBase,
    sample: FeatureSample,
    text_kind: str,
    spec: TextSpec,
    view: int,
    prompt_index: int = 0,
) -> Example:
    """Raises BadSample (with the key) when the sample lacks what this stage needs."""
    stored = getattr(sample, FEATURE_MEMBER[spec.branch])
    if stored is None:
        raise BadSample(f"{sample.key}: no {FEATURE_MEMBER[spec.branch]}.npy member for the {spec.branch} branch")
    features = stored[view]  # (T, 32, H) or (T, D)
    kind = "image" if features.shape[0] == 1 else "video"
    if text_kind in ("caption", "prompted") and not sample.text.strip():
        raise BadSample(f"{sample.key}: empty caption, nothing to learn")
    try:
        if text_kind == "caption":
            text = caption_text(tok, sample.text, spec)
        elif text_kind == "prompted":
            text = prompted_text(tok, sample.text, spec.prompts[prompt_index % len(spec.prompts)], spec)
        else:
            text = conversation_sample(tok, conversation_turns(sample.meta, kind, spec), spec.template, spec.max_len)
    except (KeyError, TypeError, ValueError) as e:
        raise BadSample(f"{sample.key}: {e}") from None
    placeholder_id = tok.convert_tokens_to_ids(spec.placeholder)
    if text.input_ids.count(placeholder_id) != spec.num_tokens:
        raise BadSample(f"{sample.key}: expected one media block of {spec.num_tokens} placeholders")
    if not any(label != IGNORE_INDEX for label in text.labels):
        raise BadSample(f"{sample.key}: nothing to learn (empty caption or answer)")
    return Example(sample.key, features, text)


def collate_examples(examples: Sequence[Example], pad_id: int, branch: str) -> dict[str, torch.Tensor]:
    """Right-padded text plus features padded to the longest T, with a frame mask when T differs."""
    batch = collate([e.text for e in examples], pad_id)
    steps = max(e.features.shape[0] for e in examples)
    shape = (len(examples), steps, *examples[0].features.shape[1:])
    feats = np.zeros(shape, dtype=np.float32)  # (B, T, 32, H) or (B, T, D)
    mask = torch.zeros(len(examples), steps, dtype=torch.long)
    for row, e in enumerate(examples):
        feats[row, : e.features.shape[0]] = e.features
        mask[row, : e.features.shape[0]] = 1
    batch[f"{branch}_features"] = torch.from_numpy(feats)
    if not bool(mask.all()):
        batch[f"{branch}_mask"] = mask
    return batch
