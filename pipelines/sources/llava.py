"""LLaVA's two releases Video-LLaMA trains on, as `media_sets` formats.

- LLaVA-CC3M-Pretrain-595K (`chat.json` + `images/` or `images.zip`): one brief-description turn
  per CC3M image; stage 1 reads it as an image-caption set, the caption being the answer. So its
  json carries `caption` (what MiniGPT-4/Video-LLaMA's CC-SBU webdataset loader reads) and `txt`
  is that caption cleaned as their caption processor does.
- LLaVA-Instruct-150K (`llava_instruct_150k.json` + COCO `train2014/`): multi-turn conversations;
  Video-LLaMA opens `COCO_train2014_<image>` and replaces `<image>` with the image's query tokens.

Both are lists of `{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}`.
The normalised `turns` pair each human turn with the gpt answer after it, text unchanged, so the
`<image>` marker stays where LLaVA put it (before or after the question).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipelines.sources.media_sets import Entry, SetFormat, safe_media_path

IMAGE_MARKER = "<image>"
COCO_PREFIX = "COCO_train2014_"  # Video-LLaMA's llava_instruct loader: 'COCO_train2014_' + sample['image']


def turns(conversations: Any) -> list[list[str]]:
    """[[human, gpt], ...] from LLaVA's alternating turns; ValueError naming the first turn that breaks it."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' is missing or not a non-empty list")
    pairs: list[list[str]] = []
    for i, turn in enumerate(conversations):
        expected = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
            got = turn.get("from") if isinstance(turn, dict) else type(turn).__name__
            raise ValueError(f"conversation turn {i} is {got!r}; expected a {expected!r} turn with a string 'value'")
        if expected == "human":
            pairs.append([turn["value"]])
        else:
            pairs[-1].append(turn["value"])
    if len(pairs[-1]) != 2:
        raise ValueError(f"the last human turn ({len(conversations) - 1}) has no gpt answer")
    if not any(IMAGE_MARKER in text for pair in pairs for text in pair):
        raise ValueError(f"no {IMAGE_MARKER} marker in the conversation: the image would not reach the model")
    return pairs


def _entries(doc: Any, media_of, caption: bool) -> Iterator[Entry]:
    if not isinstance(doc, list):
        raise ValueError(f"expected a JSON list of {{id, image, conversations}} entries, got {type(doc).__name__}")
    for item in doc:
        if not isinstance(item, dict):
            yield Entry("", "", item, problem=f"entry is a {type(item).__name__}, not an object")
            continue
        try:
            media = safe_media_path(media_of(item.get("image")))
            pairs = turns(item.get("conversations"))
        except ValueError as e:
            yield Entry(str(item.get("id", "")), "", item, problem=str(e))
            continue
        fields: dict = {"turns": pairs, "media_marker": IMAGE_MARKER}
        if caption:
            fields["caption"] = pairs[0][1]  # the one answer: the image's CC3M caption
        yield Entry(str(item.get("id", "")), media, item, fields)


def _coco_name(image: Any) -> Any:
    return COCO_PREFIX + image if isinstance(image, str) else image


def llava595k_entries(doc: Any) -> Iterator[Entry]:
    return _entries(doc, lambda image: image, caption=True)


def llava_instruct_entries(doc: Any) -> Iterator[Entry]:
    return _entries(doc, _coco_name, caption=False)


LLAVA_595K = SetFormat("llava595k", "image", llava595k_entries, txt="clean")
LLAVA_INSTRUCT = SetFormat("llava_instruct", "image", llava_instruct_entries)
