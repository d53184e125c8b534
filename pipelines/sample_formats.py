"""The public dataset formats Video-LLaMA trains on, written for generated samples.

Each writer names the loader or release it matches (checked against DAMO-NLP-SG/Video-LLaMA
`video_llama/datasets/datasets/*.py` and the datasets' own files):

| key            | file (under the root)                        | media it refers to                         |
|----------------|----------------------------------------------|--------------------------------------------|
| webvid_train   | webvid/train/results_train.csv               | contentUrl; webvid/videos/<page_dir>/<id>.mp4 |
| webvid_val     | webvid/val/results_val.csv                   | (same)                                     |
| cc3m_train     | cc3m/Train_GCC-training.tsv                  | url column -> images/<id>.jpg              |
| cc3m_val       | cc3m/Validation_GCC-1.1.0-Validation.tsv     | (same)                                     |
| llava_cc3m     | llava_cc3m_595k/chat.json                    | llava_cc3m_595k/images/<image>             |
| cc_sbu_align   | cc_sbu_align/filter_cap.json                 | cc_sbu_align/image/<image_id>.jpg          |
| llava_instruct | llava_instruct_150k/llava_instruct_150k.json | llava_instruct_150k/train2014/COCO_train2014_<image> |
| videochat      | videochat_11k/videochat_instruct_11k.json    | webvid/videos/<video> (<page_dir>/<id>.mp4) |

WebVid and CC3M hold every split (train and val files); the other formats are training data and
hold only the train split, so held-out samples stay unseen. Conversations ask about what is
seen (and heard) and answer correctly. Questions say "color", as the English source data does.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import storage
from pipelines.sample_media import DIRECTION_PHRASE, with_article

if TYPE_CHECKING:
    from pipelines.sample_plan import Sample

WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")
# Folders holding media copies; the generator removes files there that no sample owns.
MEDIA_DIRS = (
    "videos",
    "images",
    "webvid/videos",
    "llava_cc3m_595k/images",
    "cc_sbu_align/image",
    "llava_instruct_150k/train2014",
)
# LLaVA's brief-description instructions (LLaVA paper, appendix), as used in its CC3M-595K chat.json.
BRIEF_PROMPTS = (
    "Provide a brief description of the given image.",
    "Describe the image concisely.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
)
VIDEO_DESCRIBE_PROMPTS = (
    "Describe the following video in detail.",
    "Give a detailed description of what happens in this video.",
    "Explain what can be seen and heard in the video.",
)


@dataclass(frozen=True)
class DatasetFile:
    annotations: str  # the dataset file, path under the root
    media_dir: str  # folder under the root that the file's media paths (or URLs) resolve to
    rows: int  # entries in the file


def cc_sbu_id(sample: Sample) -> str:
    """cc_sbu_align's image_id: a bare integer string ("2"), image file `image/<id>.jpg`."""
    return str(sample.index)


def coco_id(sample: Sample) -> str:
    """LLaVA-Instruct's 12-digit COCO id; Video-LLaMA opens `COCO_train2014_<id>.jpg`."""
    return f"{sample.index:012d}"


def media_links(sample: Sample) -> list[str]:
    """Where each format expects a copy of the sample's file (paths under the root)."""
    if sample.kind == "video":  # Video-LLaMA's WebVid and VideoChat loaders open videos_dir/page_dir/videoid.mp4
        return [f"webvid/videos/{sample.page_dir}/{sample.id}.mp4"]
    if sample.split != "train":
        return []
    return [
        f"llava_cc3m_595k/images/{sample.id}.jpg",
        f"cc_sbu_align/image/{cc_sbu_id(sample)}.jpg",
        f"llava_instruct_150k/train2014/COCO_train2014_{coco_id(sample)}.jpg",
    ]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _url(sample: Sample, base_url: str, url_for: Callable[[Sample], str | None] | None) -> str:
    return (url_for(sample) if url_for else None) or f"{base_url.rstrip('/')}/{sample.file}"


def webvid_duration(seconds: float) -> str:
    """WebVid's duration column: whole seconds as ISO-8601, e.g. PT00H00M11S."""
    total = int(seconds + 0.5)
    return f"PT{total // 3600:02d}H{total // 60 % 60:02d}M{total % 60:02d}S"


def webvid_csv(videos: Sequence[Sample], base_url: str, url_for: Callable[[Sample], str | None] | None = None) -> str:
    """WebVid's results_*.csv: header videoid,contentUrl,duration,page_dir,name.

    `name` is sentence case with a full stop, like WebVid's titles; Video-LLaMA's caption
    processor (lowercase, punctuation stripped) turns it back into the sample's caption.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(WEBVID_COLUMNS)
    for s in videos:
        assert s.duration is not None
        writer.writerow(
            [s.id, _url(s, base_url, url_for), webvid_duration(s.duration), s.page_dir, _sentence(s.caption)]
        )
    return buf.getvalue()


def cc3m_tsv(images: Sequence[Sample], base_url: str, url_for: Callable[[Sample], str | None] | None = None) -> str:
    """Conceptual Captions as Google ships it: caption<TAB>url per line, no header."""
    return "".join(f"{s.caption}\t{_url(s, base_url, url_for)}\n" for s in images)


def _with_image(question: str, index: int) -> str:
    # The source data puts the placeholder before or after the question; both occur.
    return f"<image>\n{question}" if index % 2 == 0 else f"{question}\n<image>"


def _llava_turns(pairs: Sequence[tuple[str, str]], index: int) -> list[dict]:
    turns = []
    for k, (q, a) in enumerate(pairs):
        turns.append({"from": "human", "value": _with_image(q, index) if k == 0 else q})
        turns.append({"from": "gpt", "value": a})
    return turns


def llava_cc3m_chat(images: Sequence[Sample]) -> list[dict]:
    """LLaVA-CC3M-Pretrain-595K chat.json: one brief-description turn per image, the caption as answer."""
    return [
        {
            "id": s.id,
            "image": f"{s.id}.jpg",
            "conversations": _llava_turns([(BRIEF_PROMPTS[s.index % len(BRIEF_PROMPTS)], s.caption)], s.index),
        }
        for s in images
    ]


def cc_sbu_align(images: Sequence[Sample]) -> dict:
    """MiniGPT-4's cc_sbu_align filter_cap.json: {"annotations": [{"image_id", "caption"}]}."""
    return {
        "annotations": [
            {
                "image_id": cc_sbu_id(s),
                "caption": f"The image shows {with_article(s.colour)} {s.shape} on a plain {s.background} background. "
                f"The {s.shape} is the only object in the picture.",
            }
            for s in images
        ]
    }


def image_questions(s: Sample) -> list[tuple[str, str]]:
    return [
        ("What color is the shape in the image?", f"The {s.shape} is {s.colour}."),
        ("What shape is shown in the image?", f"It is a {s.shape}."),
        ("What color is the background?", f"The background is {s.background}."),
        ("Describe the image briefly.", _sentence(s.caption)),
    ]


def llava_instruct(images: Sequence[Sample]) -> list[dict]:
    """LLaVA-Instruct-150K: multi-turn human/gpt conversations, `<image>` in the first human turn."""
    out = []
    for s in images:
        pairs = image_questions(s)
        k = s.index % len(pairs)
        out.append(
            {
                "id": coco_id(s),
                "image": f"{coco_id(s)}.jpg",
                "conversations": _llava_turns(pairs[k:] + pairs[:k], s.index),
            }
        )
    return out


def _sound(s: Sample) -> str:
    if not s.has_audio:
        return "There is no sound."
    return f"A tone plays and its pitch {'rises' if s.pitch == 'rising' else 'falls'} steadily."


def video_questions(s: Sample) -> list[tuple[str, str]]:
    assert s.direction is not None
    pairs = [
        ("What color is the moving shape?", f"The {s.shape} is {s.colour}."),
        ("What shape moves in the video?", f"A {s.shape}."),
        ("Which way does the shape move?", f"It moves {DIRECTION_PHRASE[s.direction]}."),
        ("What color is the background?", f"The background is {s.background}."),
    ]
    k = s.index % len(pairs)
    pairs = pairs[k:] + pairs[:k]
    pairs.append(("What do you hear in the video?", _sound(s)))
    return pairs


def videochat(videos: Sequence[Sample]) -> list[dict]:
    """VideoChat's videochat_instruct_11k.json: {"video": "<page_dir>/<videoid>.mp4", "QA": [{"q", "a"}]}.

    Like the original, entries alternate between one detailed description and a multi-turn
    conversation; Video-LLaMA reads only `q` and `a` and joins `video` to its videos_dir.
    """
    out = []
    for s in videos:
        assert s.direction is not None
        if s.index % 2 == 0:
            answer = (
                f"In the video, {with_article(s.colour)} {s.shape} moves {DIRECTION_PHRASE[s.direction]} "
                f"across a plain {s.background} background. {_sound(s)}"
            )
            qa = [{"q": VIDEO_DESCRIBE_PROMPTS[s.index // 2 % len(VIDEO_DESCRIBE_PROMPTS)], "a": answer}]
        else:
            qa = [{"q": q, "a": a} for q, a in video_questions(s)]
        out.append({"video": f"{s.page_dir}/{s.id}.mp4", "QA": qa})
    return out


def write_all(root: Path, samples: Sequence[Sample], base_url: str) -> dict[str, DatasetFile]:
    """Write every format file under `root`; return them by key (see the module table)."""

    def pick(kind: str, split: str) -> list[Sample]:
        return [s for s in samples if s.kind == kind and s.split == split]

    videos, val_videos = pick("video", "train"), pick("video", "val")
    images, val_images = pick("image", "train"), pick("image", "val")
    files = {
        "webvid_train": ("webvid/train/results_train.csv", "webvid/videos", webvid_csv(videos, base_url), videos),
        "webvid_val": ("webvid/val/results_val.csv", "webvid/videos", webvid_csv(val_videos, base_url), val_videos),
        "cc3m_train": ("cc3m/Train_GCC-training.tsv", "images", cc3m_tsv(images, base_url), images),
        "cc3m_val": ("cc3m/Validation_GCC-1.1.0-Validation.tsv", "images", cc3m_tsv(val_images, base_url), val_images),
        "llava_cc3m": ("llava_cc3m_595k/chat.json", "llava_cc3m_595k/images", llava_cc3m_chat(images), images),
        "cc_sbu_align": ("cc_sbu_align/filter_cap.json", "cc_sbu_align/image", cc_sbu_align(images), images),
        "llava_instruct": (
            "llava_instruct_150k/llava_instruct_150k.json",
            "llava_instruct_150k/train2014",
            llava_instruct(images),
            images,
        ),
        "videochat": ("videochat_11k/videochat_instruct_11k.json", "webvid/videos", videochat(videos), videos),
    }
    out = {}
    for key, (rel, media_dir, content, rows) in files.items():
        text = content if isinstance(content, str) else json.dumps(content) + "\n"
        storage.write_text(str(root / rel), text)
        out[key] = DatasetFile(annotations=rel, media_dir=media_dir, rows=len(rows))
    return out
