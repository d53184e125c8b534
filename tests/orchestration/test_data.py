"""Feature shards -> batches: disjoint shard assignment, per-step dataset choice, views, exact resume."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
from harness.feature_store import StoreSpec, write_dataset, write_shard, write_store

from model.text import IGNORE_INDEX
from model.tiny import build_tokenizer
from orchestration.data import (
    BatchLoader,
    DatasetStream,
    ExampleSource,
    Position,
    assign_shards,
    choose_datasets,
)
from orchestration.samples import BadSample, TextSpec, build_example
from orchestration.train_config import ALIGNMENT_PROMPTS
from pipelines import storage
from pipelines.features import format as fmt

TOK = build_tokenizer()
VL1 = TextSpec(branch="vl", num_tokens=32, template="llama2", max_txt_len=32, max_len=512, prompts=ALIGNMENT_PROMPTS)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_ranks_cover_every_sample_once_per_pass(world, n_shards):
    per_shard = 6
    for epoch in range(3):
        seen = collections.Counter()
        for rank in range(world):
            for part in assign_shards(list(range(n_shards)), rank, world, seed=5, dataset="webvid", epoch=epoch):
                seen.update((part.shard, i) for i in range(per_shard) if i % part.parts == part.part)
        assert seen == collections.Counter({(s, i): 1 for s in range(n_shards) for i in range(per_shard)})


def test_shard_order_is_a_fresh_permutation_per_pass_and_seed():
    orders = {
        (seed, epoch): tuple(p.shard for p in assign_shards(list(range(20)), 0, 1, seed, "webvid", epoch))
        for seed in (0, 1)
        for epoch in (0, 1)
    }
    assert len(set(orders.values())) == 4
    assert orders[(0, 0)] == tuple(p.shard for p in assign_shards(list(range(20)), 0, 1, 0, "webvid", 0))


def test_dataset_choice_is_per_step_shared_and_follows_ratios():
    assert choose_datasets(42, 7, [100, 24], 3) == choose_datasets(42, 7, [100, 24], 3)
    picks = [choose_datasets(42, step, [100, 24], 1)[0] for step in range(5000)]
    assert np.mean(picks) == pytest.approx(24 / 124, abs=0.015)  # share of the second dataset


@pytest.fixture
def store(tmp_path):
    return write_store(str(tmp_path / "store"), {"webvid": 21, "cc": 10}, per_shard=4)


def _take(stream, n):
    return [(s.key, epoch) for (s, epoch) in itertools.islice(stream, n)]


def test_stream_resumes_exactly_where_its_position_points(store):
    shards = fmt.complete_shards(store, "webvid")
    full = DatasetStream(store, "webvid", shards, rank=1, world=2, seed=3)
    reference = _take(full, 40)  # several passes: rank 1 holds 10 or 11 of the 21 samples per pass
    assert sorted(k for k, e in reference if e == 0) == sorted(set(k for k, e in reference if e == 0))
    for cut in (0, 1, 3, 4, 11, 25):
        stream = DatasetStream(store, "webvid", shards, rank=1, world=2, seed=3)
        head = _take(stream, cut)
        resumed = DatasetStream(store, "webvid", shards, rank=1, world=2, seed=3, position=stream.position)
        assert head + _take(resumed, 40 - cut) == reference, cut


def test_two_ranks_read_disjoint_samples_that_cover_the_dataset(store):
    shards = fmt.complete_shards(store, "webvid")
    keys = [set(k for k, e in _take(DatasetStream(store, "webvid", shards, r, 2, 3), 30) if e == 0) for r in (0, 1)]
    assert not keys[0] & keys[1]
    assert len(keys[0] | keys[1]) == 21


def test_unreadable_shard_is_skipped_not_fatal(tmp_path, caplog):
    store = str(tmp_path / "store")
    write_dataset(store, "webvid", 8, per_shard=4)
    storage.write_bytes(fmt.shard_uri(store, "webvid", 2), b"not a tar at all" * 100)
    storage.write_text(fmt.marker_uri(store, "webvid", 2), "{}")
    stream = DatasetStream(store, "webvid", [0, 1, 2], rank=0, world=1, seed=0)
    got = _take(stream, 8)
    assert {k for k, _ in got} == {f"webvid-{i:05d}" for i in range(8)}
    assert "00002.tar: unreadable" in caplog.text


def _loader(store, start, stop, positions=None, rank=0, world=2):
    spec = VL1
    sources = {}
    for name in ("webvid", "cc"):
        shards = fmt.complete_shards(store, name)
        pos = (positions or {}).get(name, Position())
        sources[name] = ExampleSource(DatasetStream(store, name, shards, rank, world, 9, pos), "caption", spec, TOK, 9)
    return BatchLoader(sources, [3, 1], seed=9, micro_batch=3, grad_accum=2, start=start, stop=stop, prefetch=2)


def test_batches_come_from_one_dataset_and_resume_exactly(store):
    loader = _loader(store, 0, 12)
    batches = list(loader)
    assert [(b.step, b.micro) for b in batches] == [(s, m) for s in range(12) for m in range(2)]
    for b in batches:
        assert all(k.startswith(b.dataset) for k in b.keys)
        assert b.tensors["vl_features"].shape == (3, 4, 32, 64)  # (B, T, 32, H)
        assert b.tensors["input_ids"].shape[0] == 3
    # resume after step 5 from the positions the last batch of step 5 carried
    after = next(b for b in batches if (b.step, b.micro) == (5, 1)).positions
    resumed = list(_loader(store, 6, 12, positions=after))
    assert [b.keys for b in resumed] == [b.keys for b in batches if b.step >= 6]
    for a, b in zip(resumed, [b for b in batches if b.step >= 6], strict=True):
        assert np.array_equal(a.tensors["vl_features"].numpy(), b.tensors["vl_features"].numpy())


def test_views_are_drawn_per_visit_and_reproducible(tmp_path):
    store = write_store(str(tmp_path / "s"), {"webvid": 4}, per_shard=4, spec=StoreSpec(views=5, frames=2))
    draws = collections.defaultdict(list)
    stream = DatasetStream(store, "webvid", [0], 0, 1, seed=1)
    source = ExampleSource(stream, "caption", VL1, TOK, seed=1)
    originals = {s.key: s.vl for s in fmt.iter_shard(fmt.shard_uri(store, "webvid", 0))}
    for _ in range(40):  # 10 passes
        example, epoch = source.take()
        view = next(v for v in range(5) if np.array_equal(originals[example.key][v], example.features))
        draws[example.key].append(view)
    assert all(len(set(v)) > 1 for v in draws.values())  # not always the same view
    again = ExampleSource(DatasetStream(store, "webvid", [0], 0, 1, seed=1), "caption", VL1, TOK, seed=1)
    first = [again.take()[0].features for _ in range(4)]
    assert all(np.array_equal(f, originals[k][draws[k][0]]) for f, k in zip(first, sorted(originals), strict=True))


def _labels_text(sample):
    return TOK.decode([t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE_INDEX])


def test_caption_prompted_and_conversation_texts():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, 8, 32, 64)).astype(np.float16)
    caption = fmt.FeatureSample("k1", vl=feats, text="a red circle moves up")
    ex = build_example(TOK, caption, "caption", VL1, view=0)
    assert ex.text.input_ids[:2] == [TOK.bos_token_id, TOK.convert_tokens_to_ids("<ImageHere>")]
    assert _labels_text(ex.text) == "a red circle moves up\n"

    short = TextSpec(
        branch="al", num_tokens=8, template="vicuna", max_txt_len=3, max_len=512, prompts=ALIGNMENT_PROMPTS
    )
    ibv = rng.standard_normal((1, 1, 64)).astype(np.float16)
    ex = build_example(TOK, fmt.FeatureSample("k2", ibv=ibv, text="a red circle"), "prompted", short, view=0)
    assert ex.text.input_ids.count(TOK.convert_tokens_to_ids("<AudioHere>")) == 8
    assert TOK.decode(ex.text.input_ids).startswith("<s> ###Human: <Image><AudioHere>")
    assert sum(label != IGNORE_INDEX for label in ex.text.labels) == 3  # the answer cut to max_txt_len

    llava = {"conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Red."}]}
    ex = build_example(TOK, fmt.FeatureSample("k3", vl=feats[:, :1], meta=llava), "conversation", VL1, view=0)
    assert "[INST] <<SYS>>" in TOK.decode(ex.text.input_ids) and "<Image><ImageHere>" in TOK.decode(ex.text.input_ids)
    assert _labels_text(ex.text) == "Red.</s>"
    qa = {"QA": [{"q": "Which way?", "a": "Up."}], "frame_seconds": [0.0, 0.5]}
    ex = build_example(TOK, fmt.FeatureSample("k4", vl=feats, meta=qa), "conversation", VL1, view=0)
    assert "</Video> The video contains 2 frames sampled at 0.0, 0.5 seconds. Which way?" in TOK.decode(
        ex.text.input_ids
    )


@pytest.mark.parametrize(
    "sample, kind, match",
    [
        (fmt.FeatureSample("a", text="x"), "caption", "a: no vl.npy member"),
        (fmt.FeatureSample("b", vl=np.zeros((1, 1, 32, 64), np.float16), meta={}), "conversation", "neither"),
        (
            fmt.FeatureSample("c", vl=np.zeros((1, 1, 32, 64), np.float16), meta={"conversations": [
                {"from": "human", "value": "no media marker"}, {"from": "gpt", "value": "ok"}]}),
            "conversation",
            "one media block",
        ),
        (fmt.FeatureSample("d", vl=np.zeros((1, 1, 32, 64), np.float16), text=""), "caption", "nothing to learn"),
    ],
)  # fmt: skip
def test_bad_samples_say_why(sample, kind, match):
    with pytest.raises(BadSample, match=match):
        build_example(TOK, sample, kind, VL1, view=0)


def test_a_bad_sample_is_skipped_and_the_next_one_used(tmp_path):
    store = str(tmp_path / "s")
    good = fmt.FeatureSample("good", vl=np.zeros((1, 2, 32, 64), np.float16), text="a red circle")
    write_shard(fmt.shard_uri(store, "webvid", 0), [fmt.FeatureSample("bad", text="no features"), good])
    source = ExampleSource(DatasetStream(store, "webvid", [0], 0, 1, 0), "caption", VL1, TOK, 0)
    assert source.take()[0].key == "good" and source.skipped == 1
