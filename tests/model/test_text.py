"""Token sequences and label masks for stage 1 and stage 2, asserted token by token on the tiny tokenizer."""

from __future__ import annotations

import pytest
import torch

from model.llm import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER
from model.text import (
    IGNORE_INDEX,
    caption_sample,
    clean_caption,
    collate,
    conversation_sample,
    expand_placeholders,
    generation_prompt,
    media_block,
)
from model.tiny import build_tokenizer

QUESTION_1 = media_block("video", 32) + " What colour is the shape?"
QUESTION_2 = "Which direction does it move?"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def supervised(tok, sample) -> list[tuple[int, str]]:
    """(position, token) of every supervised label; each label must equal the input token there."""
    out = []
    for pos, (token_id, label) in enumerate(zip(sample.input_ids, sample.labels, strict=True)):
        if label != IGNORE_INDEX:
            assert label == token_id, f"position {pos}: label {label} != input {token_id}"
            out.append((pos, tok.convert_ids_to_tokens(token_id)))
    return out


def test_clean_caption_matches_webvid_processing():
    raw = 'A Red Circle... moves (fast)!  to the LEFT; ok~ "yes", #1: done*'
    assert clean_caption(raw) == "a red circle moves fast to the left ok yes , 1 done"  # commas are kept, as in LAVIS
    long = " ".join(f"w{i}" for i in range(60))
    assert clean_caption(long) == " ".join(f"w{i}" for i in range(50))
    assert clean_caption("  Spaces\tand\n") == "spaces\tand"


def test_stage1_caption_sample(tok):
    sample = caption_sample(tok, "a red circle moves to the left", n_media=32)
    image_id = tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    caption = ids(tok, "a red circle moves to the left\n")
    assert sample.input_ids == [tok.bos_token_id] + [image_id] * 32 + caption
    assert supervised(tok, sample) == [
        (33, "▁a"), (34, "▁red"), (35, "▁circle"), (36, "▁moves"), (37, "▁to"), (38, "▁the"), (39, "▁left"), (40, "\n"),
    ]  # fmt: skip
    assert sample.labels[:33] == [IGNORE_INDEX] * 33  # BOS and the 32 visual tokens


def test_stage1_truncates_caption_and_end_symbol_together(tok):
    sample = caption_sample(tok, " ".join(["red"] * 40), n_media=8, placeholder=AUDIO_PLACEHOLDER, max_txt_len=32)
    assert len(sample.input_ids) == 1 + 8 + 32
    assert tok.convert_ids_to_tokens(sample.input_ids[-1]) == "▁red"  # the '\n' fell off, as in the original
    assert sample.input_ids[1:9] == [tok.convert_tokens_to_ids(AUDIO_PLACEHOLDER)] * 8


def test_stage1_batch_padding_is_masked(tok):
    short = caption_sample(tok, "a blue square", 32)
    long = caption_sample(tok, "a red circle moves to the left", 32)
    batch = collate([short, long], tok.pad_token_id)
    n = len(short.input_ids)
    assert batch["input_ids"].shape == (2, len(long.input_ids))
    assert batch["input_ids"][0, n:].tolist() == [tok.pad_token_id] * (len(long.input_ids) - n)
    assert batch["labels"][0, n:].eq(IGNORE_INDEX).all() and batch["attention_mask"][0, n:].eq(0).all()
    assert batch["attention_mask"][1].eq(1).all()
    assert batch["labels"][0, :n].tolist() == short.labels


def test_two_turn_llama2_conversation_supervises_exactly_the_answers(tok):
    sample = conversation_sample(tok, [(QUESTION_1, "red"), (QUESTION_2, "left")], "llama2")
    turn1 = ids(tok, f"[INST] <<SYS>>\n \n<</SYS>>\n\n{QUESTION_1} [/INST] ")
    turn2 = [tok.bos_token_id] + ids(tok, f"[INST] {QUESTION_2} [/INST] ")
    a1, a2 = 1 + len(turn1), 1 + len(turn1) + 2 + len(turn2)
    assert supervised(tok, sample) == [(a1, "▁red"), (a1 + 1, "</s>"), (a2, "▁left"), (a2 + 1, "</s>")]
    assert sample.input_ids == [tok.bos_token_id, *turn1, *ids(tok, "red</s>"), *turn2, *ids(tok, "left</s>")]
    assert sample.input_ids.count(tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)) == 32
    assert tok.decode(sample.input_ids[:a1], skip_special_tokens=True) == (
        "[INST] <<SYS>>\n \n<</SYS>>\n\n<Video></Video> What colour is the shape? [/INST] "
    )


def test_two_turn_vicuna_conversation_supervises_exactly_the_answers(tok):
    sample = conversation_sample(tok, [(QUESTION_1, "red"), (QUESTION_2, "left")], "vicuna")
    turn1 = ids(tok, f"###Human: {QUESTION_1} ###Assistant: ")
    turn2 = ids(tok, f"###Human: {QUESTION_2} ###Assistant: ")
    answer1 = ids(tok, "red###")
    a1 = 1 + len(turn1)
    a2 = a1 + len(answer1) + len(turn2)
    assert supervised(tok, sample) == [
        (a1, "▁red"), (a1 + 1, "##"), (a1 + 2, "#"), (a2, "▁left"), (a2 + 1, "##"), (a2 + 2, "#"),
    ]  # fmt: skip
    assert tok.decode(sample.input_ids[a1 + 3 : a2]) == "###Human: Which direction does it move? ###Assistant: "


def test_audio_branch_conversation_uses_eight_audio_placeholders(tok):
    question = expand_placeholders("<Image><ImageHere></Image> Describe this image.", 8, target=AUDIO_PLACEHOLDER)
    assert question == f"<Image>{AUDIO_PLACEHOLDER * 8}</Image> Describe this image."
    sample = conversation_sample(tok, [(question, "a green triangle")], "llama2")
    assert sample.input_ids.count(tok.convert_tokens_to_ids(AUDIO_PLACEHOLDER)) == 8
    assert [t for _, t in supervised(tok, sample)] == ["▁a", "▁green", "▁triangle", "</s>"]


def test_expand_placeholders_normalises_runs():
    assert expand_placeholders("x <ImageHere> y", 3) == "x <ImageHere><ImageHere><ImageHere> y"
    assert expand_placeholders("<ImageHere>" * 5, 2) == "<ImageHere><ImageHere>"
    assert (
        expand_placeholders("<image>\nWhat is it?", 2, source="<image>", target=IMAGE_PLACEHOLDER)
        == "<ImageHere><ImageHere>\nWhat is it?"
    )


def test_a_cut_through_the_placeholders_is_an_error(tok):
    with pytest.raises(ValueError, match="cut at max_len=20 splits its media placeholders"):
        conversation_sample(tok, [(QUESTION_1, "red")], "vicuna", max_len=20)
    cut = conversation_sample(tok, [(QUESTION_1, "red " * 30)], "vicuna", max_len=60)
    assert len(cut.input_ids) == 60 and len(cut.labels) == 60


def test_generation_prompt_ends_at_the_assistant_turn(tok):
    prompt = generation_prompt(tok, QUESTION_2, "llama2", history=[(QUESTION_1, "red")])
    full = conversation_sample(tok, [(QUESTION_1, "red"), (QUESTION_2, "left")], "llama2").input_ids
    assert prompt == full[: len(prompt)]
    assert tok.decode(full[len(prompt) :]) == "left</s>"
    first = generation_prompt(tok, QUESTION_1, "vicuna")
    assert first[0] == tok.bos_token_id and tok.decode(first[-8:]).endswith("###Assistant: ")


def test_left_padding_for_generation(tok):
    a = caption_sample(tok, "red", 2)
    b = caption_sample(tok, "a red circle", 2)
    batch = collate([a, b], tok.pad_token_id, padding_side="left")
    pad = len(b.input_ids) - len(a.input_ids)
    assert batch["attention_mask"][0].tolist() == [0] * pad + [1] * len(a.input_ids)
    assert torch.equal(batch["input_ids"][0, pad:], torch.tensor(a.input_ids))


def test_unknown_template_is_named(tok):
    with pytest.raises(ValueError, match="unknown prompt template 'chatml'; known: vicuna, llama2"):
        conversation_sample(tok, [("q", "a")], "chatml")
