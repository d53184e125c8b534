"""The frozen LLaMA wrapper and the tiny LLaMA/tokenizer: loading, splicing, loss, generation."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaForCausalLM

from model.config import SIZES
from model.llm import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, FrozenLlama
from model.text import IGNORE_INDEX, caption_sample, collate
from model.tiny import build_tokenizer, llama_config, save_tiny_llama

TINY = SIZES["tiny"].llm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return FrozenLlama.from_pretrained(tiny_dir, dtype=torch.float32)


def test_tiny_directory_loads_with_plain_transformers(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_dir)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids([IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER]) == [TINY.vocab_size, TINY.vocab_size + 1]
    assert model.get_input_embeddings().weight.shape == (TINY.vocab_size, TINY.hidden)  # placeholders not embedded
    assert model.config.num_hidden_layers == TINY.layers


def test_tiny_tokenizer_covers_the_sample_vocabulary_and_is_reproducible():
    tok = build_tokenizer()
    assert tok.backend_tokenizer.to_str() == build_tokenizer().backend_tokenizer.to_str()
    caption = "a red circle moves to the left on a black background"
    pieces = tok.tokenize(caption)
    assert pieces == ["▁" + w for w in caption.split()]  # every sample word is one token
    for text in ["What colour is the shape? Describe the video.", "tone rising, 440 Hz!", "ünïcödé → ok"]:
        encoded = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in encoded  # byte fallback: nothing is unknown
        assert tok.decode(encoded) == text


def sample_data_texts() -> list[str]:
    """Every caption, question and answer the sample-data generator writes (text only, no media)."""
    from pipelines import sample_formats
    from pipelines.sample_plan import plan

    samples = plan(seed=0, videos=24, images=16, val_fraction=0.25)
    videos = [s for s in samples if s.kind == "video"]
    images = [s for s in samples if s.kind == "image"]
    texts = [s.caption for s in samples]
    texts += [a["caption"] for a in sample_formats.cc_sbu_align(images)["annotations"]]
    for item in sample_formats.llava_cc3m_chat(images) + sample_formats.llava_instruct(images):
        texts += [turn["value"].replace("<image>", "").strip() for turn in item["conversations"]]
    texts += [text for item in sample_formats.videochat(videos) for qa in item["QA"] for text in (qa["q"], qa["a"])]
    return texts


def test_tiny_tokenizer_covers_the_sample_data_text():
    tok = build_tokenizer()
    texts = sample_data_texts()
    words = {w for text in texts for w in re.findall(r"\b[a-z]+\b", text)}
    assert {"red", "circle", "moves", "left", "background", "tone", "pitch", "rises"} <= words  # the real texts
    for word in sorted(words):
        assert tok.tokenize(f"a {word}")[1:] == [f"▁{word}"], word  # every lowercase word is one token
    for text in texts:
        encoded = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in encoded and tok.decode(encoded) == text, text


def test_placeholders_are_spliced_in_order_without_resizing(llm):
    tok = llm.tokenizer
    row = [tok.bos_token_id, llm.image_token_id, llm.image_token_id, 500, llm.audio_token_id, 501]
    input_ids = torch.tensor([row, row])
    image = torch.randn(2, 2, TINY.hidden)
    audio = torch.randn(2, 1, TINY.hidden)
    embeds = llm.embed(input_ids, {llm.image_token_id: image, llm.audio_token_id: audio})
    table = llm.model.get_input_embeddings().weight
    assert table.shape[0] == TINY.vocab_size
    for b in range(2):
        torch.testing.assert_close(embeds[b, 1:3], image[b], rtol=0, atol=0)
        torch.testing.assert_close(embeds[b, 4], audio[b, 0], rtol=0, atol=0)
        torch.testing.assert_close(embeds[b, [0, 3, 5]], table[[tok.bos_token_id, 500, 501]], rtol=0, atol=0)


def test_placeholder_count_mismatch_is_named(llm):
    input_ids = torch.tensor([[1, llm.image_token_id, llm.image_token_id, 5]])
    with pytest.raises(ValueError, match=r"<ImageHere>: per-row placeholder counts \[2\] do not match .*\(1, 3, 128\)"):
        llm.embed(input_ids, {llm.image_token_id: torch.randn(1, 3, TINY.hidden)})
    with pytest.raises(ValueError, match="input has <ImageHere> but no features"):
        llm.embed(input_ids, {})


def test_loss_is_next_token_cross_entropy_on_supervised_positions(llm):
    tok = llm.tokenizer
    batch = collate(
        [caption_sample(tok, "a red circle", 4), caption_sample(tok, "a blue square moves up", 4)], tok.pad_token_id
    )
    media = {llm.image_token_id: torch.randn(2, 4, TINY.hidden)}
    loss = llm(batch["input_ids"], batch["attention_mask"], batch["labels"], media)
    logits = llm.model(
        inputs_embeds=llm.embed(batch["input_ids"], media), attention_mask=batch["attention_mask"]
    ).logits
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(loss, expected)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == len(tok.tokenize("a red circle\n")) + len(
        tok.tokenize("a blue square moves up\n")
    )


def test_llm_is_frozen_and_stays_in_eval_mode(llm):
    assert not any(p.requires_grad for p in llm.parameters())
    llm.train()
    assert not llm.model.training


def test_bf16_load_takes_fp32_features(tiny_dir):
    llm16 = FrozenLlama.from_pretrained(tiny_dir)  # bf16 is the default, as the original
    assert llm16.dtype == torch.bfloat16
    tok = llm16.tokenizer
    batch = collate([caption_sample(tok, "a red circle", 4)], tok.pad_token_id)
    feats = torch.randn(1, 4, TINY.hidden, requires_grad=True)
    loss = llm16(batch["input_ids"], batch["attention_mask"], batch["labels"], {llm16.image_token_id: feats})
    loss.backward()
    assert torch.isfinite(loss) and feats.grad is not None and feats.grad.abs().sum() > 0


def test_generation_is_deterministic_and_leaves_global_rng_alone(llm):
    tok = llm.tokenizer
    prompt = collate([caption_sample(tok, "what colour", 4)], tok.pad_token_id, padding_side="left")
    media = {llm.image_token_id: torch.randn(1, 4, TINY.hidden, generator=torch.Generator().manual_seed(0))}
    args = (prompt["input_ids"], prompt["attention_mask"], media)
    greedy = llm.generate(*args, max_new_tokens=12)
    assert greedy.shape == (1, 12)
    assert torch.equal(greedy, llm.generate(*args, max_new_tokens=12))
    state = torch.get_rng_state()
    sampled = llm.generate(*args, max_new_tokens=12, do_sample=True, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(sampled, llm.generate(*args, max_new_tokens=12, do_sample=True, seed=7))
    assert not torch.equal(sampled, llm.generate(*args, max_new_tokens=12, do_sample=True, seed=8))


def test_loads_from_s3(tiny_dir, s3_bucket, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.endpoint_url})
    fs.put(str(tiny_dir) + "/", f"{s3_bucket[5:]}/llm/", recursive=True)
    llm = FrozenLlama.from_pretrained(f"{s3_bucket}/llm", dtype=torch.float32)
    local = FrozenLlama.from_pretrained(tiny_dir, dtype=torch.float32)
    for (name, a), (_, b) in zip(llm.model.state_dict().items(), local.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert llm.image_token_id == TINY.vocab_size


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no config.json"):
        FrozenLlama.from_pretrained(tmp_path)


@pytest.mark.parametrize("name, params", [("7b", 6_738_415_616), ("13b", 13_015_864_320)])
def test_real_llama2_shapes_on_meta_device(name, params):
    """LLaMA-2 7B/13B as published (Llama-2-{7b,13b}-hf parameter counts), built without memory."""
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(SIZES[name].llm))
    assert model.num_parameters() == params
    assert model.get_input_embeddings().weight.shape == (32000, SIZES[name].llm.hidden)
