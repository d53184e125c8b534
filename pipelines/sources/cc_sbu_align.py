"""MiniGPT-4's cc_sbu_align (`filter_cap.json` + `image/`) as a `media_sets` format.

`{"annotations": [{"image_id": "2", "caption": "..."}]}`; the image is `image/<image_id>.jpg`
(Video-LLaMA's CCSBUAlignDataset). The set has no questions: at training time a prompt such as
"<Img><ImageHere></Img> Describe this image in detail." is drawn from a list and the caption is the
answer, verbatim (no caption processor runs on it). So `txt` is the caption as is, and there are
no `turns`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipelines.sources.media_sets import Entry, SetFormat, safe_media_path


def entries(doc: Any) -> Iterator[Entry]:
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(annotations, list):
        raise ValueError('expected {"annotations": [{"image_id", "caption"}, ...]}')
    for item in annotations:
        image_id = item.get("image_id") if isinstance(item, dict) else None
        caption = item.get("caption") if isinstance(item, dict) else None
        if not isinstance(image_id, str | int) or not isinstance(caption, str) or not caption.strip():
            yield Entry(str(image_id or ""), "", item, problem="needs a string 'image_id' and a non-empty 'caption'")
            continue
        try:
            media = safe_media_path(f"{image_id}.jpg")
        except ValueError as e:
            yield Entry(str(image_id), "", item, problem=str(e))
            continue
        yield Entry(str(image_id), media, item, {"caption": caption})


FORMAT = SetFormat("cc_sbu_align", "image", entries, txt="raw")
