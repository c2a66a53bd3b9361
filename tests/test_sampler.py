"""The batch sampler: duplicate-free and same-task global batches, sliced across processes."""

from __future__ import annotations

import random

from e5mistral.training.sampler import E5BatchSampler


def rows(n: int, seed: int = 0):
    rng = random.Random(seed)
    texts = [[f"q{i}", f"doc{rng.randrange(n // 2)}", f"neg{rng.randrange(n)}"] for i in range(n)]  # many repeats
    tasks = [rng.choice(["sts", "retrieval", "bitext"]) for _ in range(n)]
    return texts, tasks


def global_batches(sampler: E5BatchSampler):
    batches = list(sampler)
    assert len(batches) == len(sampler) and len(batches) % sampler.num_processes == 0
    assert all(len(b) == sampler.batch_size for b in batches)
    step = sampler.num_processes
    return [[index for batch in batches[i : i + step] for index in batch] for i in range(0, len(batches), step)]


def test_no_duplicate_texts_within_a_global_batch():
    texts, tasks = rows(200)
    sampler = E5BatchSampler(texts, tasks, batch_size=4, num_processes=2, no_duplicates=True)
    batches = global_batches(sampler)
    assert len(batches) >= 5
    for batch in batches:
        all_texts = [t for i in batch for t in set(texts[i])]
        assert len(all_texts) == len(set(all_texts))
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))  # each row at most once per epoch
    # the data does repeat, so a plain shuffle would have put duplicates together
    plain = global_batches(E5BatchSampler(texts, tasks, batch_size=4, num_processes=2))
    assert any(len({t for i in b for t in texts[i]}) < sum(len(set(texts[i])) for i in b) for b in plain)


def test_same_task_global_batches_and_every_process_slices_the_same_batch():
    texts, tasks = rows(120, seed=1)
    sampler = E5BatchSampler(texts, tasks, batch_size=3, num_processes=2, same_task=True, no_duplicates=True)
    batches = global_batches(sampler)
    assert len({tasks[b[0]] for b in batches}) == 3  # every task shows up
    for batch in batches:
        assert len({tasks[i] for i in batch}) == 1


def test_epochs_reshuffle_and_are_reproducible():
    texts, tasks = rows(60)
    a = E5BatchSampler(texts, tasks, batch_size=4, same_task=True, seed=3)
    b = E5BatchSampler(texts, tasks, batch_size=4, same_task=True, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_accelerate_forwards_the_epoch_when_it_shards_the_sampler():
    from accelerate.data_loader import BatchSamplerShard, DataLoaderShard

    texts, tasks = rows(64)
    sampler = E5BatchSampler(texts, tasks, batch_size=4, num_processes=2, same_task=True, seed=7)
    shard = BatchSamplerShard(sampler, num_processes=2, process_index=1)
    loader = DataLoaderShard(list(range(64)), batch_sampler=shard)
    first = list(shard)
    loader.set_epoch(3)  # what the Trainer calls at each epoch
    assert sampler.epoch == 3 and list(shard) != first
    assert list(shard) == list(sampler)[1::2]  # process 1 gets every second per-device slice
