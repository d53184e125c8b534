"""Feature shards -> batches, per rank: shard assignment, dataset mixing, views, resumable position.

Assignment: each dataset's complete shards (listed once when the run starts and kept in the data
state, so every rank and every resume sees the same list) are permuted per pass with a generator
seeded by (seed, dataset, pass); rank r takes every world-th shard of that order, so ranks read
disjoint shards. With fewer shards than ranks, ranks share a shard and split its samples by index
(rank r reads shard r % n, samples i with i % k == r // n, where k ranks read that shard).

Mixing: each optimizer step draws, for each of its grad_accum micro-batches, ONE dataset with the
configured ratios from a generator seeded by (seed, step), as the original's MultiIterLoader draws
a loader per iteration. Every rank draws the same, and each rank's streams never end (a stream that
runs out starts its next pass), so every rank runs the same number of steps.

Position: per rank and dataset, (pass, shard cursor, samples taken from that shard). A batch carries
the position right after it, so a checkpoint taken after step s resumes exactly at step s + 1's
samples: nothing in the resumed pass is seen twice. Samples are read, decoded and tokenised in a
background thread `prefetch` batches ahead of the step; the trainer measures how long it waits.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import tarfile
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from orchestration.samples import BadSample, Example, TextSpec, build_example, collate_examples
from pipelines.features import format as fmt
from pipelines.storage import StorageConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Position:
    epoch: int = 0  # passes over the dataset this rank has finished
    shard: int = 0  # index into this rank's shard list for the pass
    offset: int = 0  # samples this rank has taken from that shard


@dataclass(frozen=True)
class ShardPart:
    shard: int  # shard index in the store
    part: int  # this rank reads samples i with i % parts == part
    parts: int


def assign_shards(shards: Sequence[int], rank: int, world: int, seed: int, dataset: str, epoch: int) -> list[ShardPart]:
    """This rank's shards for one pass over `dataset`; disjoint across ranks, covering every sample."""
    if not shards:
        raise ValueError(f"dataset {dataset}: no complete shards to assign")
    order = np.random.default_rng([seed, zlib.crc32(dataset.encode()), epoch]).permutation(len(shards))
    perm = [shards[i] for i in order]
    if len(perm) >= world:
        return [ShardPart(s, 0, 1) for s in perm[rank::world]]
    index = rank % len(perm)
    readers = len(range(index, world, len(perm)))  # ranks sharing this shard
    return [ShardPart(perm[index], rank // len(perm), readers)]


class DatasetStream:
    """One dataset's samples for one rank, pass after pass, from `position` on."""

    def __init__(
        self,
        store: str,
        dataset: str,
        shards: Sequence[int],
        rank: int,
        world: int,
        seed: int,
        position: Position = Position(),
        storage: StorageConfig | None = None,
    ):
        self.store, self.dataset, self.shards = store, dataset, list(shards)
        self.rank, self.world, self.seed, self.storage = rank, world, seed, storage
        self.position = position
        self._samples = self._iterate()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[fmt.FeatureSample, int]:
        """The next sample and the pass it belongs to; `position` then points past it."""
        return next(self._samples)

    def _iterate(self) -> Iterator[tuple[fmt.FeatureSample, int]]:
        empty_passes = 0
        while True:
            epoch = self.position.epoch
            parts = assign_shards(self.shards, self.rank, self.world, self.seed, self.dataset, epoch)
            fresh = self.position.shard == 0 and self.position.offset == 0
            yielded = 0
            while self.position.shard < len(parts):
                cursor = self.position.shard
                for item in self._read_part(parts[cursor], epoch, cursor, skip=self.position.offset):
                    yielded += 1
                    yield item
                self.position = Position(epoch, cursor + 1, 0)
            empty_passes = empty_passes + 1 if fresh and not yielded else 0
            if empty_passes >= 2:  # a whole pass gave nothing: looping would hang the step
                raise RuntimeError(
                    f"{self.store}/{self.dataset}: rank {self.rank} of {self.world} reads no samples from shards "
                    f"{self.shards}; check the shards are readable and hold samples, or use fewer workers"
                )
            self.position = Position(epoch + 1, 0, 0)

    def _read_part(self, part: ShardPart, epoch: int, cursor: int, skip: int):
        uri = fmt.shard_uri(self.store, self.dataset, part.shard)
        taken = 0
        try:
            for i, sample in enumerate(fmt.iter_shard(uri, self.storage)):
                if i % part.parts != part.part:
                    continue
                taken += 1
                if taken <= skip:  # read before the checkpoint this run resumed from
                    continue
                self.position = Position(epoch, cursor, taken)
                yield sample, epoch
        except (tarfile.TarError, OSError, ValueError) as e:
            # One unreadable shard must not stop the run: skip the rest of it, loudly.
            log.warning("%s: unreadable after %d samples, skipping the rest of it (%s)", uri, taken, e)


@dataclass(frozen=True)
class Batch:
    step: int
    micro: int  # index within the step's grad_accum micro-batches
    dataset: str
    keys: tuple[str, ...]
    epochs: tuple[int, ...]  # the pass each sample came from
    tensors: dict
    positions: dict[str, Position]  # every dataset's position right after this batch


def choose_datasets(seed: int, step: int, ratios: Sequence[float], micro_batches: int) -> list[int]:
    """The dataset of each micro-batch of `step`: the same on every rank, a function of (seed, step)."""
    weights = np.asarray(ratios, dtype=np.float64)
    return [
        int(i)
        for i in np.random.default_rng([seed, step]).choice(len(weights), micro_batches, p=weights / weights.sum())
    ]


class ExampleSource:
    """A dataset stream turned into examples: a view per visit, text per the dataset's kind, bad samples skipped."""

    def __init__(self, stream: DatasetStream, text_kind: str, spec: TextSpec, tokenizer, seed: int):
        self.stream, self.text_kind, self.spec, self.tok, self.seed = stream, text_kind, spec, tokenizer, seed
        self.skipped = 0

    def take(self) -> tuple[Example, int]:
        while True:
            sample, epoch = next(self.stream)
            rng = np.random.default_rng(
                [self.seed, zlib.crc32(self.stream.dataset.encode()), epoch, zlib.crc32(sample.key.encode())]
            )
            view = int(rng.integers(max(sample.views, 1)))
            prompt = int(rng.integers(len(self.spec.prompts)))
            try:
                return build_example(self.tok, sample, self.text_kind, self.spec, view, prompt), epoch
            except BadSample as e:
                self.skipped += 1
                log.warning("%s/%s: skipped (%s); %d skipped so far", self.stream.dataset, sample.key, e, self.skipped)


class BatchLoader:
    """Batches for steps [start, stop) in order, built `prefetch` ahead in a background thread."""

    def __init__(
        self,
        sources: dict[str, ExampleSource],
        ratios: Sequence[float],
        seed: int,
        micro_batch: int,
        grad_accum: int,
        start: int,
        stop: int,
        prefetch: int,
    ):
        self.sources, self.names = sources, list(sources)
        self.ratios, self.seed = list(ratios), seed
        self.micro_batch, self.grad_accum, self.start, self.stop = micro_batch, grad_accum, start, stop
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="batch-loader", daemon=True)
        self._thread.start()

    def _build(self, step: int, micro: int, name: str) -> Batch:
        source = self.sources[name]
        taken = [source.take() for _ in range(self.micro_batch)]
        examples = [e for e, _ in taken]
        tensors = collate_examples(examples, source.tok.pad_token_id, source.spec.branch)
        positions = {n: s.stream.position for n, s in self.sources.items()}
        return Batch(
            step, micro, name, tuple(e.key for e in examples), tuple(ep for _, ep in taken), tensors, positions
        )

    def _produce(self) -> None:
        try:
            for step in range(self.start, self.stop):
                for micro, d in enumerate(choose_datasets(self.seed, step, self.ratios, self.grad_accum)):
                    if not self._put(self._build(step, micro, self.names[d])):
                        return
        except BaseException as e:  # handed to the training thread, which re-raises it
            self._put(e)
            return
        self._put(None)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def positions_to_json(positions: dict[str, Position]) -> dict:
    return {name: dataclasses.asdict(p) for name, p in positions.items()}


def positions_from_json(data: dict) -> dict[str, Position]:
    return {name: Position(**p) for name, p in data.items()}
