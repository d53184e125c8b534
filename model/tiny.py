"""Build and save the tiny LLaMA and its tokenizer, locally and deterministically (no downloads).

The tokenizer is a LLaMA-style BPE (`▁` word boundaries, byte fallback so no text is ever
unknown) trained in memory on the words the generated sample data and templates use. Its layout
mirrors LLaMA's: <unk> 0, <s> 1, </s> 2, then <pad> 3 (LLaMA has none; we want one), the 256 byte
tokens, the learnt pieces; `<ImageHere>` / `<AudioHere>` come right after the base vocabulary,
outside the embedding table, exactly as 32000 / 32001 sit outside LLaMA-2's 32000 rows.

    python -m model.tiny OUT_DIR   # writes a directory loadable by AutoTokenizer / LlamaForCausalLM
    python -m model.tiny OUT_DIR --texts texts.json --steps 400   # ... trained on those texts first

A random LLM cannot be steered into saying anything sensible, and there are no weights to download,
so the tests and the demo first train the tiny LLaMA on the caption and conversation TEXT of the
sample data alone (`pretrain_tiny_llama`, plain torch, a minute on a CPU) and then freeze it: it
knows the language of the captions, and only the Video-LLaMA branch learns to tie it to the media.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import string
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from model.config import SIZES, LlmSize
from model.llm import PLACEHOLDERS
from model.text import Sample, collate

log = logging.getLogger(__name__)

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))

# What the sample data's captions and conversations say (colours, shapes, motions, tones),
# plus the question words and template markers, so common words are single tokens.
_WORD_TEXT = (
    # colours, shapes, motion and sound of the generated samples (pipelines/sample_media.py)
    "red green blue yellow purple orange white black pink cyan gray grey brown circle square triangle shape shapes "
    "left right up down moves moving move across way rising falling rises falls tone pitch plays steadily sound "
    "background plain only object picture image video audio clip frame frames "
    # captions, questions and answers of every sample format (pipelines/sample_formats.py)
    "a an the to on in of and with is it its this that there no yes what which color colour does do you see hear "
    "shows shown describe description brief briefly detail detailed concisely concise summarize visual content "
    "give given provide provided short clear explanation subsequent share interpretation following happens explain "
    "can be seen heard please answer question "
    "zero one two three four five six seven eight nine"
)
WORDS = _WORD_TEXT.split()
MARKERS = ("###Human:", "###Assistant:", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")
MARKERS += ("<Video>", "</Video>", "<Image>", "</Image>", "<Audio>", "</Audio>")
ALPHABET = sorted(set(string.ascii_letters + string.digits + string.punctuation + "\n") | {"▁"})


def _corpus() -> list[str]:
    # Word frequency decides merge order; repeating the word list makes whole words win over
    # marker fragments. Sorted, fixed inputs keep the trained merges identical on every run.
    return [" ".join(WORDS * 4 + list(MARKERS))] + [w.capitalize() for w in WORDS] + list(string.digits)


def build_tokenizer(size: LlmSize = SIZES["tiny"].llm) -> PreTrainedTokenizerFast:
    """A fast tokenizer with `size.vocab_size` base tokens and the two placeholders appended."""
    n_pieces = size.vocab_size - len(SPECIALS) - len(BYTE_TOKENS)
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=n_pieces, special_tokens=[], initial_alphabet=ALPHABET, min_frequency=1, show_progress=False
    )
    bpe.train_from_iterator(_corpus(), trainer)
    learnt = json.loads(bpe.to_str())["model"]
    if len(learnt["vocab"]) != n_pieces:
        raise RuntimeError(f"tiny tokenizer learnt {len(learnt['vocab'])} pieces, the size table wants {n_pieces}")

    # Re-lay the vocabulary as LLaMA does: specials, bytes, then the learnt pieces in their order.
    order = [*SPECIALS, *BYTE_TOKENS, *sorted(learnt["vocab"], key=learnt["vocab"].get)]
    vocab = {tok: i for i, tok in enumerate(order)}
    merges = [tuple(m) for m in learnt["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = bpe.pre_tokenizer
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.add_tokens(list(PLACEHOLDERS), special_tokens=True)
    ids = fast.convert_tokens_to_ids(list(PLACEHOLDERS))
    if ids != [size.vocab_size, size.vocab_size + 1]:
        raise RuntimeError(f"placeholders got ids {ids}, expected {size.vocab_size} and {size.vocab_size + 1}")
    return fast


def llama_config(size: LlmSize, tokenizer: PreTrainedTokenizerFast | None = None) -> LlamaConfig:
    """A LLaMA-2 style config at `size` (no GQA unless kv_heads < heads, untied embeddings)."""
    return LlamaConfig(
        vocab_size=size.vocab_size,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.max_positions,
        rms_norm_eps=size.rms_norm_eps,
        rope_theta=size.rope_theta,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=tokenizer.pad_token_id if tokenizer is not None else None,
    )


def build_tiny_llama(
    seed: int = 0, size: LlmSize = SIZES["tiny"].llm
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised tiny LLaMA (fixed seed) and its tokenizer."""
    tokenizer = build_tokenizer(size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(size, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_tiny_llama(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny LLaMA + tokenizer as a HF directory (safetensors weights)."""
    out = Path(out_dir)
    model, tokenizer = build_tiny_llama(seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pretrain_tiny_llama(
    out_dir: str | Path,
    texts: Sequence[str],
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> tuple[Path, list[float]]:
    """Train the tiny LLaMA as a plain language model on `texts` ([BOS] + text, every token
    supervised), save it like `save_tiny_llama`, and return the directory and the loss per step.

    AdamW, linear warmup over the first 10 % of steps then cosine to 10 % of `lr`; batches are
    drawn with replacement from a generator seeded by `seed`, so the result is reproducible."""
    if not texts:
        raise ValueError("pretrain_tiny_llama needs texts to learn from (captions, conversations)")
    model, tokenizer = build_tiny_llama(seed)
    encoded = [
        [tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False).input_ids][
            : model.config.max_position_embeddings
        ]
        for t in texts
    ]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps))),
    )
    losses = []
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        batch = collate([Sample(encoded[r], encoded[r]) for r in rows], tokenizer.pad_token_id)
        loss = model(**batch).loss  # labels are -100 on padding, so padding is never learnt
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.info("tiny LLaMA trained on %d texts for %d steps: loss %.3f -> %.3f", len(texts), steps, losses[0], losses[-1])
    return out, losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the tiny LLaMA and tokenizer to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texts", help="a JSON list of strings to train the LLaMA on first (else: random weights)")
    parser.add_argument("--steps", type=int, default=400, help="training steps with --texts")
    args = parser.parse_args(argv)
    if args.texts is None:
        print(save_tiny_llama(args.out_dir, args.seed))
        return
    texts = json.loads(Path(args.texts).read_text())
    out, losses = pretrain_tiny_llama(args.out_dir, texts, steps=args.steps, seed=args.seed)
    print(f"{out} (loss {losses[0]:.3f} -> {losses[-1]:.3f})")


if __name__ == "__main__":
    main()
