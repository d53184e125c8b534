"""Caption cleaning as Video-LLaMA's WebVid loader does it (LAVIS `BlipCaptionProcessor.pre_caption`).

Kept free of torch and transformers so ingestion workers can import it for one regex.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")  # what BLIP's caption processor blanks out; commas stay


def clean_caption(caption: str, max_words: int = 50) -> str:
    """Lowercase, the characters .!"()*#:;~ become spaces, runs of whitespace collapse, at most `max_words` words."""
    caption = _PUNCTUATION.sub(" ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption
