"""Which shard samples each (rank, worker) reads in an epoch, in which order, computed from the index alone.

Every process runs ``max(1, data.num_workers)`` readers; the ``world_size x workers`` readers of a run
split the shards once into fixed disjoint groups of nearly equal sample counts. Each epoch a reader
visits its shards in a new order and passes their samples through a shuffle buffer. The buffer's
output order depends only on the sample counts and a seed, so it is computed up front: a resumed run
starts at any batch of an epoch exactly, opening only the shards it still needs.
"""
from __future__ import annotations

import heapq
import random
from typing import Iterator

from jepa.data.shard_reader import Sample, SampleStream
from jepa.errors import ConfigError
from jepa.seeds import mix_seed


def assign_shards(counts: list[int], readers: int) -> list[list[int]]:
    """Split shard ids into ``readers`` groups with sample totals as equal as greedy largest-first allows."""
    heap = [(0, r) for r in range(readers)]
    groups: list[list[int]] = [[] for _ in range(readers)]
    for shard in sorted(range(len(counts)), key=lambda k: (-counts[k], k)):
        total, r = heapq.heappop(heap)
        groups[r].append(shard)
        heapq.heappush(heap, (total + counts[shard], r))
    return [sorted(g) for g in groups]


def buffer_order(n: int, size: int, rng: random.Random) -> list[int]:
    """The order in which a shuffle buffer of ``size`` emits stream positions ``0..n-1``: fill it, then each new
    sample replaces a uniformly chosen one, which is emitted; the rest is emitted shuffled at the end."""
    buf: list[int] = []
    out: list[int] = []
    for p in range(n):
        if len(buf) < size:
            buf.append(p)
            continue
        j = rng.randrange(size)
        out.append(buf[j])
        buf[j] = p
    rng.shuffle(buf)
    return out + buf


class ShardPlan:
    """The fixed reader groups of a run and each reader's epoch order; ``batches_per_epoch`` per process.

    Every reader yields ``batches_per_reader`` full batches an epoch (the smallest group's share), so every
    process yields the same number; a reader's leftover samples (fewer than a batch plus what its group holds
    beyond the smallest) wait for a later epoch, where the order differs.
    """

    def __init__(self, counts: list[int], world_size: int, workers: int, batch_size: int, shuffle_buffer: int,
                 seed: int, key: str = "data.shards", more_parts: str = "write more, smaller shards (python -m "
                 "jepa.shards --shard-size)"):
        self.counts, self.workers, self.batch_size = list(counts), max(1, workers), batch_size
        self.world_size, self.shuffle_buffer, self.seed = world_size, shuffle_buffer, seed
        readers = world_size * self.workers
        if len(counts) < readers:
            raise ConfigError(f"{key} names {len(counts)} shards but {world_size} process(es) x "
                             f"{self.workers} loader worker(s) = {readers} readers each need their own; {more_parts} "
                             "or lower data.num_workers")
        self.groups = assign_shards(self.counts, readers)
        smallest = min(sum(self.counts[k] for k in g) for g in self.groups)
        self.batches_per_reader = smallest // batch_size
        if self.batches_per_reader < 1:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the {smallest} samples of the smallest "
                             f"reader's shards ({readers} readers); lower data.batch_size or data.num_workers")
        self.batches_per_epoch = self.batches_per_reader * self.workers

    def group(self, rank: int, worker: int) -> list[int]:
        return self.groups[rank * self.workers + worker]

    def epoch_order(self, rank: int, worker: int, epoch: int) -> tuple[list[int], list[int]]:
        """The reader's shards in this epoch's order, and the stream positions (indices into those shards'
        concatenated samples) of the ``batches_per_reader`` batches it yields, in order."""
        shards = list(self.group(rank, worker))
        random.Random(mix_seed(self.seed, "shards", rank, worker, epoch)).shuffle(shards)
        n = sum(self.counts[k] for k in shards)
        rng = random.Random(mix_seed(self.seed, "buffer", rank, worker, epoch))
        order = buffer_order(n, self.shuffle_buffer, rng)
        return shards, order[:self.batches_per_reader * self.batch_size]

    def reader_batches(self, rank: int, worker: int, epoch: int, start: int) -> range:
        """The process-level batch indices ``i >= start`` this reader yields: batch ``i`` comes from reader
        ``i % workers`` as its batch ``i // workers``."""
        first = start + (worker - start) % self.workers
        return range(first, self.batches_per_epoch, self.workers)


def read_in_order(shardset: SampleStream, shards: list[int], positions: list[int]) -> Iterator[Sample]:
    """The samples at ``positions`` of the concatenation of ``shards``, in that order. Shards holding none of
    them are not opened; samples read ahead of their turn are held (at most a shuffle buffer's worth)."""
    starts = [0]
    for k in shards:
        starts.append(starts[-1] + shardset.counts[k])
    wanted: list[set[int]] = [set() for _ in shards]
    cursor = 0
    for p in sorted(positions):
        while p >= starts[cursor + 1]:
            cursor += 1
        wanted[cursor].add(p - starts[cursor])

    def stream():
        for k, shard in enumerate(shards):
            if wanted[k]:
                for sample in shardset.samples(shard, wanted[k]):
                    yield starts[k] + sample.member, sample

    source = stream()
    pending: dict[int, Sample] = {}
    for p in positions:
        while p not in pending:
            q, sample = next(source)
            pending[q] = sample
        yield pending.pop(p)
