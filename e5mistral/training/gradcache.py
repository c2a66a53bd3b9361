"""GradCache: a contrastive loss over a big batch at the memory cost of a small one.

Gradient accumulation does not add negatives: each micro-batch only sees its own documents.
GradCache (Gao et al., 2021, https://arxiv.org/abs/2101.06983) keeps the whole batch in one
softmax and bounds memory by the mini-batch size, in three steps:

    (1) embed every mini-batch without a graph, saving the RNG state before each forward (the
        batch is sorted by length first, so each mini-batch pads only to its own longest text);
    (2) compute the loss on all the (detached) embeddings and back-propagate it to them only:
        their gradients are the cache (a few KB per text, not the activations);
    (3) when the Trainer calls ``loss.backward()``, a hook re-embeds each mini-batch with a graph,
        replaying its saved RNG state so dropout (LoRA's included) draws the same masks, and
        back-propagates ``<embedding, cached gradient>`` into the weights.

The last forward of step (1) keeps its graph, and step (3) back-propagates through it first,
before any replay: one forward fewer per step (of ``k`` mini-batches, ``k - 1`` are re-embedded),
and memory still holds one mini-batch's activations at a time (the kept graph is freed before
the first replay builds its own).

The result is the gradient of the full-batch loss (tested against it to 1e-5). Step (2) runs
inside the forward, so a cross-device gather in the loss (collective in both directions) happens
on every rank at the same time. The temperature lives in ``loss_fn`` and is therefore respected.
The cache reaches the backward hook through ``functools.partial``, never through ``self``.

Under several processes two more rules hold, for every engine:

- Every process runs the same number of forwards per side, in the same order
  (:func:`same_count_on_every_process`): under FSDP and ZeRO-3 each forward and backward gathers
  weights with collectives, and ranks cut different numbers of chunks (rows have 0..k hard
  negatives, texts differ in length). A process with fewer chunks pads with filler chunks: one
  real row of its own, embedded and discarded (a zero cached gradient), so nothing changes but the
  count. (A model cannot run a chunk of zero rows.)
- The weights' gradients are reduced once per step, after the last replayed mini-batch
  (:func:`_reduce_after_last`): DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync`` and
  DeepSpeed ZeRO's ``coalesce_grad_reduction`` (ZeRO-3 reduces each parameter's gradient as it is
  produced and has no ``no_sync``; without this each mini-batch's reduction overwrites the last).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import get_device_states, set_device_states

from ..batching import plan_chunks

__all__ = [
    "RandContext",
    "embed_length_sorted",
    "grad_cache",
    "join_sides",
    "plan_mini_batches",
    "same_count_on_every_process",
    "sort_by_length",
    "split_features",
]

Features = dict[str, Tensor]  # e.g. {"input_ids": (B, T), "attention_mask": (B, T)}
EmbedFn = Callable[[nn.Module, Features], Tensor]  # (model, features) -> (B, H)


class RandContext:
    """Snapshot the CPU and accelerator RNG now; restore it inside ``with`` (outer RNG untouched).

    Example:
        >>> state = RandContext()
        >>> a = torch.rand(2)
        >>> with state:
        ...     b = torch.rand(2)
        >>> bool(torch.equal(a, b))
        True
    """

    def __init__(self, *tensors: Tensor) -> None:
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.devices, self.device_states)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)
        self._fork = None


def split_features(features: Features, mini_batch_size: int) -> list[Features]:
    """Slice a padded batch into mini-batches along dim 0, dropping trailing all-padding columns.

    Only trailing columns are dropped (right padding): leading pads would change positions.

    Example:
        >>> f = {"input_ids": torch.tensor([[5, 6, 0], [7, 0, 0], [8, 9, 4]]),
        ...      "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])}
        >>> [tuple(c["input_ids"].shape) for c in split_features(f, 2)]
        [(2, 2), (1, 3)]
    """
    return cut_rows(features, plan_mini_batches(features, mini_batch_size))


def cut_rows(features: Features, ranges: Sequence[range]) -> list[Features]:
    """One chunk per row range, each trimmed of the trailing columns none of its rows attends to."""
    return [_trim_trailing_padding({key: value[rows.start : rows.stop] for key, value in features.items()}) for rows in ranges]


def plan_mini_batches(
    sorted_features: Features, mini_batch_size: int | None = None, max_positions: int | None = None,
    packed: bool = False,
) -> list[range]:
    """Row ranges of a length-sorted batch, one per GradCache mini-batch.

    With ``max_positions`` (a token budget), :func:`~e5mistral.batching.plan_chunks` cuts chunks of at most
    that many padded positions (rows x longest text, so the budget bounds activation memory) and at most
    ``mini_batch_size`` rows when that is set too: short texts share big forwards, long ones get small
    ones. With ``mini_batch_size`` alone, every range holds that many rows. ``packed`` (forwards
    without padding, ``padding_free``): the budget counts the texts' own tokens instead, which is
    what a packed forward computes and holds, so the fewest chunks that fit are cut in order.

    Example:
        >>> f = {"input_ids": torch.ones(4, 8, dtype=torch.long),
        ...      "attention_mask": torch.tensor([[1] * 8, [1] * 6 + [0] * 2, [1] * 2 + [0] * 6, [1] * 2 + [0] * 6])}
        >>> plan_mini_batches(f, mini_batch_size=2), plan_mini_batches(f, max_positions=12)
        ([range(0, 2), range(2, 4)], [range(0, 1), range(1, 2), range(2, 4)])
    """
    batch_size = sorted_features["input_ids"].shape[0]
    mask = sorted_features.get("attention_mask")
    if max_positions is None or mask is None:
        if mini_batch_size is None:
            raise ValueError("GradCache needs mini_batch_size or max_positions (a token budget per mini-batch).")
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}.")
        return [range(begin, min(begin + mini_batch_size, batch_size)) for begin in range(0, batch_size, mini_batch_size)]
    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions}.")
    lengths = mask.sum(dim=1).tolist()
    if packed:
        return _plan_packed(lengths, max_positions, mini_batch_size)
    # A forward costs something on its own (at least one position): ties go to fewer forwards.
    return plan_chunks(lengths, max_positions, max(1, max_positions // 32), mini_batch_size)


def _plan_packed(lengths: Sequence[int], max_tokens: int, max_rows: int | None) -> list[range]:
    """Contiguous chunks of at most ``max_tokens`` tokens in all and ``max_rows`` rows (a longer text
    alone): each chunk takes rows until the next would not fit, which gives the fewest chunks."""
    chunks, start, tokens = [], 0, 0
    for row, length in enumerate(lengths):
        full = tokens + length > max_tokens or (max_rows is not None and row - start >= max_rows)
        if row > start and full:
            chunks.append(range(start, row))
            start, tokens = row, 0
        tokens += length
    return chunks + [range(start, len(lengths))] if lengths else chunks


def _trim_trailing_padding(chunk: Features) -> Features:
    """Drop the trailing columns no row attends to (right padding); leading pads stay (positions)."""
    mask = chunk.get("attention_mask")
    if mask is None:
        return chunk
    used = mask.any(dim=0).nonzero()
    width = int(used.max()) + 1 if used.numel() else mask.shape[1]
    return {key: value[:, :width] if value.dim() >= 2 else value for key, value in chunk.items()}  # (b, w)


def sort_by_length(features: Features) -> tuple[Features, Tensor]:
    """Reorder a padded batch longest first; return it with the permutation that undoes it.

    Mini-batches cut from a length-sorted batch hold texts of similar length, so
    :func:`split_features` trims most of their padding: compute goes to real tokens.

    Returns:
        ``(sorted_features, inverse)`` with ``embeddings_sorted[inverse]`` in the original order.

    Example:
        >>> f = {"input_ids": torch.tensor([[5, 0], [7, 8]]), "attention_mask": torch.tensor([[1, 0], [1, 1]])}
        >>> sorted_f, inverse = sort_by_length(f)
        >>> sorted_f["input_ids"].tolist(), inverse.tolist()
        ([[7, 8], [5, 0]], [1, 0])
    """
    mask = features.get("attention_mask")
    if mask is None:
        identity = torch.arange(features["input_ids"].shape[0], device=features["input_ids"].device)
        return features, identity
    order = torch.sort(mask.sum(dim=1), descending=True, stable=True).indices  # (B,)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)  # (B,)
    return {key: value[order] for key, value in features.items()}, inverse


def join_sides(sides: Sequence[Features], pad_id: int = 0) -> tuple[Features, list[int]] | None:
    """All sides' rows as one right-padded batch, and each side's row count; None if they cannot share forwards.

    Queries and documents run through the same model, so one plan of length-sorted chunks (or
    GradCache mini-batches, or one packed row) over all their rows needs fewer forwards than one
    per side: each forward also costs a fixed share (every weight's gradient accumulated once
    more, the embedding's dense gradient, per-layer work), and a side's last, part-filled, chunk
    no longer runs alone. Sides join only when they hold the same keys, ``input_ids`` and a
    right-padded ``attention_mask`` (what :class:`~e5mistral.training.collator.E5Collator` makes);
    the narrower ones are padded on the right with ``pad_id`` (masked, never attended to).

    Example:
        >>> q = {"input_ids": torch.tensor([[5, 2]]), "attention_mask": torch.tensor([[1, 1]])}
        >>> d = {"input_ids": torch.tensor([[6, 7, 2], [8, 2, 0]]),
        ...      "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
        >>> joined, sizes = join_sides([q, d])
        >>> joined["input_ids"].tolist(), sizes
        ([[5, 2, 0], [6, 7, 2], [8, 2, 0]], [1, 2])
    """
    keys = set(sides[0])
    if keys != {"input_ids", "attention_mask"} or any(set(side) != keys for side in sides):
        return None
    for side in sides:
        mask = side["attention_mask"]
        if mask.dim() != 2 or side["input_ids"].shape != mask.shape or bool((mask.long().diff(dim=1) > 0).any()):
            return None  # not right-padded (a row whose mask rises again)
    width = max(side["input_ids"].shape[1] for side in sides)
    joined = {  # each side right-padded to the widest: (sum b_i, width)
        key: torch.cat([F.pad(side[key], (0, width - side[key].shape[1]), value=value) for side in sides])
        for key, value in (("input_ids", pad_id), ("attention_mask", 0))
    }
    return joined, [side["input_ids"].shape[0] for side in sides]


def embed_length_sorted(model: nn.Module, embed: EmbedFn, features: Features, max_positions: int = 8192) -> Tensor:
    """Embed a batch with a graph, a few length-sorted chunks at a time; rows in the original order.

    The same embeddings and gradients as one ``embed(model, features)``, with less padding: rows
    are sorted by length and cut by :func:`plan_chunks` into chunks of at most ``max_positions``
    padded positions (at least one row), each padded only to its own longest text. Activation
    memory is that of the whole batch, as in one forward; chunking only removes work. With
    several processes, each runs as many chunks as the one that cut the most (filler chunks, see
    the module docstring), since under FSDP and ZeRO-3 every forward is a collective.

    Returns:
        ``(B, H)`` embeddings, row ``i`` for text ``i``.
    """
    sorted_features, inverse = sort_by_length(features)
    if "attention_mask" not in sorted_features:
        return embed(model, features)
    lengths = sorted_features["attention_mask"].sum(dim=1).tolist()
    chunks = cut_rows(sorted_features, plan_chunks(lengths, max_positions))
    # Every process runs as many forwards as the one with the most chunks (collectives under FSDP / ZeRO-3).
    (count,) = same_count_on_every_process([len(chunks)], sorted_features["input_ids"].device)
    reps = [embed(model, chunk) for chunk in chunks]  # (b, H) each
    for _ in range(count - len(chunks)):
        # A filler's embedding joins the graph with no rows ([:0]), so its backward runs too, adding zero.
        reps.append(embed(model, _filler_chunk(sorted_features))[:0])  # (0, H)
    return torch.cat(reps)[inverse]  # (B, H)


def same_count_on_every_process(counts: Sequence[int], device: torch.device | str = "cpu") -> list[int]:
    """The largest of each count over all processes (``counts`` unchanged without a process group).

    Each process passes how many chunks it cut per side; each then pads its plan to the result
    with filler chunks, so every process runs the same forwards and backwards in the same order.
    One ``all_reduce`` of a few integers per call.

    Example:
        >>> same_count_on_every_process([3, 5])  # one process: as given
        [3, 5]
    """
    counts = [int(c) for c in counts]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return counts
    agreed = torch.tensor(counts, dtype=torch.long, device=device)  # (sides,)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return agreed.tolist()


def _filler_chunk(sorted_features: Features) -> Features:
    """A one-row chunk that pads a process's plan to the agreed count: its shortest real text, trimmed.

    Its embedding is discarded (and its cached gradient is zero), so it adds a forward and a
    backward, nothing else. A real row keeps the model's input checks (EOS last) satisfied.
    """
    return _trim_trailing_padding({key: value[-1:] for key, value in sorted_features.items()})


def grad_cache(
    model: nn.Module,
    embed: EmbedFn,
    inputs: Sequence[Features],
    loss_fn: Callable[..., tuple[Tensor, Tensor]],
    mini_batch_size: int | None = None,
    max_positions: int | None = None,
    packed: bool = False,
) -> tuple[Tensor, Tensor]:
    """The loss of ``loss_fn(*embeddings)`` over whole batches, embedded a mini-batch at a time.

    Args:
        model: the (possibly DDP-wrapped) model ``embed`` runs.
        embed: ``embed(model, features) -> (b, H)`` embeddings of a mini-batch.
        inputs: one padded batch per side, e.g. ``[queries, documents]``.
        loss_fn: ``loss_fn(*embeddings) -> (loss, metric)`` on the full ``(B_i, H)`` embeddings.
        mini_batch_size: texts per forward pass; bounds activation memory.
        max_positions: a token budget instead (or as well): at most this many padded positions
            (rows x longest text) per forward pass, so short texts share big forwards
            (:func:`plan_mini_batches`).
        packed: ``embed`` packs each mini-batch without padding, so ``max_positions`` counts the
            texts' own tokens.

    Returns:
        ``(loss, metric)``: ``loss`` is a detached scalar leaf that requires grad; calling
        ``loss.backward()`` (as the Trainer does) runs step (3) and fills the weights' gradients,
        scaled by the incoming gradient (gradient accumulation, loss scaling). Under ``no_grad``
        (evaluation) this is just the loss, with no hook.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> embed = lambda m, f: m(f["input_ids"].float())
        >>> q, d = {"input_ids": torch.randn(6, 4)}, {"input_ids": torch.randn(6, 4)}
        >>> from e5mistral.training.loss import info_nce
        >>> loss, acc = grad_cache(model, embed, [q, d], info_nce, mini_batch_size=2)
        >>> loss.backward()   # model.weight.grad now equals the full-batch gradient
    """
    # Length-sorted mini-batches pad little; `inverses` restore the original row order for the loss.
    sorted_inputs, inverses = zip(*(sort_by_length(features) for features in inputs))
    chunked = [cut_rows(features, plan_mini_batches(features, mini_batch_size, max_positions, packed)) for features in sorted_inputs]
    real_counts = [len(chunks) for chunks in chunked]  # per side, this process's own mini-batches
    # Pad every side to the count of the process with the most mini-batches (see the module docstring).
    agreed = same_count_on_every_process(real_counts, sorted_inputs[0]["input_ids"].device)
    for chunks, features, count in zip(chunked, sorted_inputs, agreed):
        chunks.extend(_filler_chunk(features) for _ in range(count - len(chunks)))
    grad_enabled = torch.is_grad_enabled()

    # Step (1): embed every mini-batch without a graph, saving the RNG state before each forward;
    # the last one (real or filler, so every process does the same) keeps its graph instead.
    reps, random_states, kept = [], [], None
    for side, (chunks, real) in enumerate(zip(chunked, real_counts)):
        side_reps, side_states = [], []
        for index, chunk in enumerate(chunks):
            if grad_enabled and side == len(chunked) - 1 and index == len(chunks) - 1:
                alone = sum(len(c) for c in chunked) == 1  # then its backward is the last one, and reduces
                with nullcontext() if alone else _forward_without_reduction(model):
                    kept = embed(model, chunk)  # (b, H), with a graph
                side_states.append(None)
                side_reps.append(kept.detach())
                continue
            side_states.append(RandContext(*chunk.values()) if grad_enabled else None)
            with torch.no_grad():
                side_reps.append(embed(model, chunk))  # (b, H)
        reps.append(torch.cat(side_reps[:real]).detach().requires_grad_(grad_enabled))  # (B_i, H), fillers dropped
        random_states.append(side_states)

    if not grad_enabled:
        return loss_fn(*(rep[inverse] for rep, inverse in zip(reps, inverses)))

    # Step (2): the loss on all embeddings, back-propagated to the embeddings only: the cache.
    # (`rep` stays in sorted order, so its gradient splits along the mini-batches.)
    with torch.enable_grad():
        loss, metric = loss_fn(*(rep[inverse] for rep, inverse in zip(reps, inverses)))
        loss.backward()
    cache = []
    for rep, chunks, real in zip(reps, chunked, real_counts):
        side = list(rep.grad.split([chunk["input_ids"].shape[0] for chunk in chunks[:real]]))  # (b, H) each
        side += [rep.grad.new_zeros(1, rep.shape[1]) for _ in chunks[real:]]  # fillers: (1, H) zeros
        cache.append(side)

    # Step (3): hand the cache to a hook that re-embeds with a graph when the Trainer back-propagates.
    loss = loss.detach().requires_grad_()
    loss.register_hook(
        partial(
            _replay_with_cached_gradients,
            model=model,
            embed=embed,
            chunked=chunked,
            cache=cache,
            random_states=random_states,
            kept=kept,
        )
    )
    return loss, metric


def _forward_without_reduction(model: nn.Module):
    """The context for a forward whose backward is not the step's last: DDP decides at forward time.

    FSDP2 and DeepSpeed decide at backward time (see :func:`_reduce_after_last`).
    """
    return model.no_sync() if isinstance(model, DistributedDataParallel) else nullcontext()


def _replay_with_cached_gradients(
    grad_output: Tensor,
    *,
    model: nn.Module,
    embed: EmbedFn,
    chunked: list[list[Features]],
    cache: list[list[Tensor]],
    random_states: list[list[RandContext | None]],
    kept: Tensor | None,
) -> None:
    """Step (3): re-embed each mini-batch under its saved RNG state; back-propagate its cached gradient.

    The mini-batch whose graph step (1) kept (``kept``, the last job) goes first, with no replay.
    ``grad_output`` is what the outer backward hands the loss (1 / accumulation steps, the loss
    scale), so every mini-batch is scaled like a plain loss would be. The gradients are reduced
    once, after the last mini-batch (under DDP an outer ``no_sync`` from gradient accumulation
    still holds).
    """
    jobs = [job for side in zip(chunked, cache, random_states) for job in zip(*side)]
    if kept is not None:
        jobs = jobs[-1:] + jobs[:-1]
    with torch.enable_grad(), _reduce_after_last(model) as sync:
        for index, (chunk, cached_grad, random_state) in enumerate(jobs):
            with sync(index == len(jobs) - 1), random_state or nullcontext():
                reps = kept if index == 0 and kept is not None else embed(model, chunk)  # (b, H)
                dtype = torch.promote_types(torch.promote_types(reps.dtype, cached_grad.dtype), torch.float32)
                surrogate = (reps.to(dtype) * cached_grad.to(dtype)).sum() * grad_output.to(dtype)
                surrogate.backward()


@contextmanager
def _reduce_after_last(model: nn.Module) -> Iterator[Callable[[bool], object]]:
    """Yield ``sync(is_last)``: the context for one mini-batch's backward, reducing gradients only after the last.

    - DDP: ``no_sync`` for all but the last mini-batch.
    - FSDP2: ``set_requires_gradient_sync(False)`` until the last mini-batch; the unsharded
      gradients accumulate locally, and the last backward reduce-scatters them once.
    - DeepSpeed ZeRO: ``coalesce_grad_reduction`` around all of them: ZeRO keeps every gradient
      local and runs one reduction pass when the block ends (``no_sync`` is refused under ZeRO-2/3,
      and without it each mini-batch's reduction would overwrite the previous one's).
    - anything else (one process): nothing to defer.
    """
    deepspeed = sys.modules.get("deepspeed")
    if deepspeed is not None and isinstance(model, deepspeed.DeepSpeedEngine):
        with model.coalesce_grad_reduction():
            yield lambda is_last: nullcontext()
    elif isinstance(model, FSDPModule):
        try:
            yield lambda is_last: _fsdp_gradient_sync(model, is_last)
        finally:
            model.set_requires_gradient_sync(True)
    elif isinstance(model, DistributedDataParallel):
        yield lambda is_last: nullcontext() if is_last else model.no_sync()
    else:
        yield lambda is_last: nullcontext()


@contextmanager
def _fsdp_gradient_sync(model: FSDPModule, enabled: bool) -> Iterator[None]:
    model.set_requires_gradient_sync(enabled)
    yield
