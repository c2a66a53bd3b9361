"""Batch samplers against false negatives: no duplicate texts in a batch, one task per batch.

In-batch negatives are only negatives if they differ from the positive. Two rows sharing a text
(the same positive, a query equal to another row's document) turn a right answer into a
"negative"; batches mixing tasks make the negatives easy. :class:`E5BatchSampler` builds *global*
batches (``per_device_batch_size x num_processes`` rows) that are duplicate-free and/or drawn from
a single ``task``, and yields each as ``num_processes`` consecutive per-device slices: the
accelerate data-loader shard hands batch ``k * num_processes + p`` to process ``p``, so at every
step all processes hold slices of the same global batch, which is what cross-device negatives see.

Batches that cannot be filled (a task's tail, rows left over by the duplicate check) are dropped
for this epoch; every epoch reshuffles (``set_epoch``), so other rows are left out next time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["E5BatchSampler"]

logger = logging.getLogger(__name__)


class E5BatchSampler(Sampler[list[int]]):
    """Yield per-device batches of row indices, duplicate-free and/or one task per global batch.

    Args:
        texts: per row, the texts that must not repeat inside a batch (query, positive,
            negatives); ignored unless ``no_duplicates``.
        tasks: per row, the task name; ignored unless ``same_task``.
        batch_size: rows per device.
        num_processes: processes sharing a global batch.
        no_duplicates: keep every text unique within a global batch.
        same_task: draw every global batch from a single task.
        seed: shuffling seed (combined with the epoch).

    Example:
        >>> s = E5BatchSampler(texts=[["a", "x"], ["b", "x"], ["c", "y"], ["d", "z"]],
        ...                    tasks=["t1", "t1", "t2", "t2"], batch_size=2, no_duplicates=True)
        >>> batches = list(s)
        >>> any({0, 1} <= set(b) for b in batches), sorted(i for b in batches for i in b)  # 0, 1 share "x"
        (False, [0, 1, 2, 3])
    """

    def __init__(
        self,
        texts: Sequence[Sequence[str]] | None,
        tasks: Sequence[str] | None,
        batch_size: int,
        num_processes: int = 1,
        no_duplicates: bool = False,
        same_task: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1 or num_processes < 1:
            raise ValueError(f"batch_size ({batch_size}) and num_processes ({num_processes}) must be >= 1.")
        if no_duplicates and texts is None:
            raise ValueError(
                "no_duplicates=True needs the rows' texts; pass texts=[[query, positive, *negatives], ...]."
            )
        if same_task and tasks is None:
            raise ValueError("same_task=True needs a task per row; the dataset has no `task` column.")
        self.num_rows = len(texts) if texts is not None else len(tasks)
        self.texts = texts
        self.tasks = tasks
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.global_batch_size = batch_size * num_processes
        self.no_duplicates = no_duplicates
        self.same_task = same_task
        self.seed = seed
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None
        # With several processes accelerate wraps this in a BatchSamplerShard and forwards
        # `set_epoch` only to `<wrapped batch sampler>.sampler`: point that at ourselves.
        self.sampler = self
        if same_task:
            sizes: dict[str, int] = {}
            for task in tasks:
                sizes[task] = sizes.get(task, 0) + 1
            small = sorted(t for t, n in sizes.items() if n < self.global_batch_size)
            if small:
                logger.warning(
                    f"same_task batches: tasks {small} have fewer rows than one global batch "
                    f"({self.global_batch_size}) and are never used; lower the batch size or merge them."
                )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._build_global_batches())
        return self._cache[1]

    def _build_global_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_rows, generator=generator).tolist()
        if self.same_task:
            groups: dict[str, list[int]] = {}
            for index in order:
                groups.setdefault(self.tasks[index], []).append(index)
            pools = [groups[task] for task in sorted(groups)]
        else:
            pools = [order]
        batches = [batch for pool in pools for batch in self._fill(pool)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def _fill(self, pool: list[int]) -> list[list[int]]:
        """Cut ``pool`` (already shuffled) into full global batches, deferring rows that would duplicate."""
        if not self.no_duplicates:
            full = len(pool) // self.global_batch_size * self.global_batch_size
            return [pool[i : i + self.global_batch_size] for i in range(0, full, self.global_batch_size)]
        batches, remaining = [], list(pool)
        while len(remaining) >= self.global_batch_size:
            batch, seen, deferred = [], set(), []
            for position, index in enumerate(remaining):
                row_texts = set(self.texts[index])
                if seen.isdisjoint(row_texts):
                    batch.append(index)
                    seen |= row_texts
                    if len(batch) == self.global_batch_size:
                        deferred.extend(remaining[position + 1 :])
                        break
                else:
                    deferred.append(index)
            if len(batch) < self.global_batch_size:
                break  # what is left cannot fill a duplicate-free batch
            batches.append(batch)
            remaining = deferred
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            for p in range(self.num_processes):
                yield batch[p * self.batch_size : (p + 1) * self.batch_size]

    def __len__(self) -> int:
        """Per-device batches this epoch (exact: the epoch's batches are built once and cached)."""
        return len(self._global_batches()) * self.num_processes
