"""Token sequences and loss masks for both training stages, and WebVid caption cleaning.

Stage 1 (captions):  [BOS] + N placeholders + caption + end_sym('\\n'), caption part cut to
max_txt_len tokens; labels -100 on BOS, placeholders and padding.

Stage 2 (instructions): one template per LLM family, applied turn by turn:
  vicuna  '###Human: {} ###Assistant: '                      answer + '###'
  llama2  '[INST] <<SYS>>\\n \\n<</SYS>>\\n\\n{} [/INST] '      answer + '</s>'  (later turns '<s>[INST] {} [/INST] ')
The human side (template text, media placeholders, question) is masked; the answer and its end
symbol are supervised. Each piece is tokenised on its own and concatenated, so the mask boundary
is exact by construction (the original re-tokenises prefixes and counts, which is off by one or
two tokens in places). A single prompt (cc_sbu_align's "<Image><ImageHere></Image> Describe
this image in detail.") is a one-turn conversation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from model.captions import clean_caption  # noqa: F401  (re-exported: part of the text API)
from model.llm import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER

IGNORE_INDEX = -100
MEDIA_TAGS = {"video": "Video", "image": "Image", "audio": "Audio"}


@dataclass(frozen=True)
class Template:
    name: str
    first_turn: str  # the first human turn; "{}" is the message (media block included)
    next_turn: str  # every later human turn
    end_sym: str  # closes each answer and is supervised, so the model learns to stop
    bos_each_turn: bool  # llama-2 chat opens every turn after the first with <s>


TEMPLATES = {
    # Video-LLaMA's `prompt_template` for Vicuna (train_configs/*stage2*.yaml), end_sym "###".
    "vicuna": Template("vicuna", "###Human: {} ###Assistant: ", "###Human: {} ###Assistant: ", "###", False),
    # LLaMA-2 chat with the original's system prompt " " (conversation_video.py), end "</s>" = EOS.
    "llama2": Template("llama2", "[INST] <<SYS>>\n \n<</SYS>>\n\n{} [/INST] ", "[INST] {} [/INST] ", "</s>", True),
}


@dataclass(frozen=True)
class Sample:
    input_ids: list[int]
    labels: list[int]


def template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def media_block(kind: str, n: int, placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """`<Video>` + n placeholders + `</Video>` (kind video/image/audio); 32 for the VL branch, 8 for AL."""
    if kind not in MEDIA_TAGS:
        raise ValueError(f"unknown media kind {kind!r}; known: {', '.join(MEDIA_TAGS)}")
    tag = MEDIA_TAGS[kind]
    return f"<{tag}>{placeholder * n}</{tag}>"


def expand_placeholders(text: str, n: int, source: str = IMAGE_PLACEHOLDER, target: str | None = None) -> str:
    """Every run of `source` markers becomes exactly n `target` placeholders (a prompt file's single
    `<ImageHere>` -> 32 for VL, or 8 `<AudioHere>` when the AL branch reads the same data)."""
    return re.sub(f"(?:{re.escape(source)})+", (target or source) * n, text)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids if text else []


def caption_sample(
    tokenizer: PreTrainedTokenizerBase,
    caption: str,
    n_media: int,
    placeholder: str = IMAGE_PLACEHOLDER,
    max_txt_len: int = 32,
    end_sym: str = "\n",
) -> Sample:
    """Stage 1: [BOS] + n_media placeholders + (caption + end_sym)[:max_txt_len]."""
    text = _ids(tokenizer, caption + end_sym)[:max_txt_len]  # the original truncates caption+end_sym together
    media = [tokenizer.convert_tokens_to_ids(placeholder)] * n_media
    return Sample([tokenizer.bos_token_id, *media, *text], [IGNORE_INDEX] * (1 + n_media) + text)


def _human_turn(tokenizer: PreTrainedTokenizerBase, tpl: Template, i: int, message: str) -> list[int]:
    bos = [tokenizer.bos_token_id] if i > 0 and tpl.bos_each_turn else []
    return bos + _ids(tokenizer, (tpl.first_turn if i == 0 else tpl.next_turn).format(message))


def _dialogue(tokenizer: PreTrainedTokenizerBase, tpl: Template, turns: Sequence[tuple[str, str]]) -> Sample:
    """[BOS] + for each (question, answer): masked human turn, supervised answer + end_sym."""
    ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    for i, (question, answer) in enumerate(turns):
        human = _human_turn(tokenizer, tpl, i, question)
        reply = _ids(tokenizer, answer + tpl.end_sym)  # answer and end symbol together, as the original
        ids += human + reply
        labels += [IGNORE_INDEX] * len(human) + reply
    return Sample(ids, labels)


def conversation_sample(
    tokenizer: PreTrainedTokenizerBase,
    turns: Sequence[tuple[str, str]],
    template_name: str,
    max_len: int = 512,
) -> Sample:
    """Stage 2: the whole conversation, cut to `max_len` tokens. A cut through the media
    placeholders is an error (the features would not fit): raise `max_len` or shorten it."""
    if not turns:
        raise ValueError("a conversation needs at least one (question, answer) turn")
    sample = _dialogue(tokenizer, template(template_name), turns)
    placeholders = {tokenizer.convert_tokens_to_ids(p) for p in (IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER)}
    if any(t in placeholders for t in sample.input_ids[max_len:]):
        n = len(sample.input_ids)
        raise ValueError(f"conversation of {n} tokens cut at max_len={max_len} splits its media placeholders")
    return Sample(sample.input_ids[:max_len], sample.labels[:max_len])


def generation_prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    template_name: str,
    history: Sequence[tuple[str, str]] = (),
) -> list[int]:
    """Token ids that end where the assistant's answer begins (earlier turns given as history)."""
    tpl = template(template_name)
    return _dialogue(tokenizer, tpl, history).input_ids + _human_turn(tokenizer, tpl, len(history), question)


def collate(samples: Sequence[Sample], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest sample: input_ids, attention_mask (0 on padding), labels (-100 on padding).
    Training pads on the right (as the original); generation pads prompts on the left."""
    width = max(len(s.input_ids) for s in samples)
    out = {k: torch.full((len(samples), width), v) for k, v in (("input_ids", pad_id), ("labels", IGNORE_INDEX))}
    out["attention_mask"] = torch.zeros(len(samples), width, dtype=torch.long)
    for row, s in enumerate(samples):
        span = slice(0, len(s.input_ids)) if padding_side == "right" else slice(width - len(s.input_ids), width)
        out["input_ids"][row, span] = torch.tensor(s.input_ids)
        out["labels"][row, span] = torch.tensor(s.labels)
        out["attention_mask"][row, span] = 1
    return out
