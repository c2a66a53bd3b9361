"""Section 8, how cost grows: tables to extrapolate from.

(a) Exact search (:func:`e5mistral.evaluation.retrieval.search`, which runs ``exact_search`` over
``_document_blocks``) against corpus size: random unit vectors (``search_dim`` wide, fp32) for each
of ``search_sizes`` documents and ``search_queries`` queries, top ``search_top_k``; the embedder is
a stand-in that hands back the precomputed rows, so only the search is timed. Reference: the naive
full ``queries @ corpus.T`` + ``topk`` on the same vectors, with the same result dictionary built.
Each run of a (size, side) is a fresh process (``python -m benchmarks --search-probe SPEC``), the two
sides alternating for ``search_repeats`` rounds per size: seconds (the best round counts; each
round's ratio is printed as the spread) and the peak RSS increase (Linux VmHWM, reset once the
corpus is in memory, so the corpus embeddings themselves are not counted; the highest round counts).

(b) One ``E5Trainer`` GradCache step (chunk ``memory_mini_batch``) against batch size, on section 3's
memory-probe model: :func:`benchmarks.gradcache.run_memory_probe`, each batch in a fresh process;
step seconds, seconds per row and peak RSS increase, against linear growth from the smallest batch.

Example: ``print(section_scaling(bench).text())``; ``run_search_probe("blocked", 10_000, QUICK, 1)``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from .gradcache import read_status_kb, run_memory_probe
from .harness import Section, Settings, fmt, run_probe
from .workload import Bench


class Precomputed:
    """An embedder that returns rows of given tensors: documents are named by their row number."""

    def __init__(self, queries: torch.Tensor, corpus: torch.Tensor):
        self.queries, self.corpus = queries, corpus

    def encode_queries(self, queries, instruction=None, **kwargs) -> torch.Tensor:
        return self.queries

    def encode_documents(self, documents, **kwargs) -> torch.Tensor:
        start = int(documents[0])
        return self.corpus[start : start + len(documents)]  # a view, as an embedder's fresh block would be


def unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    vectors = torch.empty(n, dim).normal_(generator=torch.Generator().manual_seed(seed))
    return vectors.div_(vectors.norm(dim=1, keepdim=True))


def search_probe(spec: dict) -> dict:
    """Run in a fresh process: ``spec["side"]`` ("blocked": ``search``; "naive": ``q @ c.T`` + topk) over
    ``spec["size"]`` documents once; seconds and peak RSS increase over the RSS with the vectors loaded."""
    from e5mistral.evaluation.retrieval import SearchSettings, search

    torch.set_num_threads(spec["threads"])
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["settings"].items()})
    queries, corpus = unit_vectors(s.search_queries, s.search_dim, 1), unit_vectors(spec["size"], s.search_dim, 2)
    query_texts = {f"q{i}": "" for i in range(s.search_queries)}
    documents = {str(i): str(i) for i in range(spec["size"])}
    settings = SearchSettings(block_size=s.search_block, show_progress_bar=False)
    doc_ids = list(documents)

    def blocked(embedder):
        return search(embedder, query_texts, documents, None, s.search_top_k, settings=settings)

    def naive(embedder):
        scores, idx = (embedder.queries @ embedder.corpus.T).topk(s.search_top_k, dim=1)  # (Q, N) scores at once
        return {qid: {doc_ids[i]: x for x, i in zip(row_scores, row_idx)}
                for qid, row_scores, row_idx in zip(query_texts, scores.tolist(), idx.tolist())}

    run = blocked if spec["side"] == "blocked" else naive
    run(Precomputed(queries[:4], corpus[:64]))  # warm-up: first-call costs (kernels, thread pool), not the sizes
    before = read_status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    result = run(Precomputed(queries, corpus))
    seconds = time.perf_counter() - start
    top = [next(iter(result[f"q{i}"])) for i in range(min(20, s.search_queries))]
    return {"seconds": seconds, "peak_increase_mb": (read_status_kb("VmHWM") - before) / 1024,
            "corpus_mb": corpus.numel() * 4 / 2**20, "top": top}


def run_search_probe(side: str, size: int, settings: Settings, threads: int) -> dict:
    spec = {"side": side, "size": size, "threads": threads, "settings": asdict(settings)}
    return run_probe("--search-probe", spec, f"search probe {side} size={size}")


def search_rows(sec: Section, s: Settings, threads: int) -> None:
    runs: dict[tuple[int, str], list[dict]] = {}
    for size in s.search_sizes:
        for round_ in range(s.search_repeats):  # alternate, so a slow spell on a shared machine hits both sides
            for side in ("blocked", "naive"):
                print(f"    search probe: {side}, {size} documents, round {round_ + 1} of {s.search_repeats}",
                      flush=True)
                runs.setdefault((size, side), []).append(run_search_probe(side, size, s, threads))
    probes = {}
    for key, probe_runs in runs.items():
        probes[key] = dict(min(probe_runs, key=lambda p: p["seconds"]),
                           peak_increase_mb=max(p["peak_increase_mb"] for p in probe_runs))

    def rounds(n):
        return ", ".join(f"{a['seconds'] / b['seconds']:.2f}x" for a, b in zip(runs[n, "blocked"], runs[n, "naive"]))

    spread = "; ".join(f"{n:,}: {rounds(n)}" for n in s.search_sizes)
    mismatched = [n for n in s.search_sizes if probes[n, "blocked"]["top"] != probes[n, "naive"]["top"]]
    shape = f"{s.search_queries} queries x dim {s.search_dim}, top {s.search_top_k}"
    for size in s.search_sizes:
        ours, ref = probes[size, "blocked"], probes[size, "naive"]
        ratio = ours["seconds"] / ref["seconds"]
        sec.add(f"search seconds, {size:,} docs, {shape} (vs q @ corpus.T + topk)", fmt(ours["seconds"], "s"),
                fmt(ref["seconds"], "s"), ratio, "<= 1.2x", ratio <= 1.2)
    for size in s.search_sizes:
        ours, ref = probes[size, "blocked"], probes[size, "naive"]
        sec.add(f"search peak RSS increase, {size:,} docs (vs q @ corpus.T + topk)", fmt(ours["peak_increase_mb"], "MB"),
                fmt(ref["peak_increase_mb"], "MB"), ours["peak_increase_mb"] / ref["peak_increase_mb"])
    small, large = s.search_sizes[0], s.search_sizes[-1]
    grow = large / small

    def growth(side, key):
        return probes[large, side][key] / probes[small, side][key]

    t_ours, t_ref = growth("blocked", "seconds"), growth("naive", "seconds")
    sec.add(f"search time growth, {small:,} -> {large:,} docs (corpus x{grow:g}; vs naive's)", f"{t_ours:.2f}x",
            f"{t_ref:.2f}x", t_ours / t_ref, f"linear: <= {1.25 * grow:g}x", t_ours <= 1.25 * grow)
    m_ours, m_ref = growth("blocked", "peak_increase_mb"), growth("naive", "peak_increase_mb")
    sec.add(f"search peak growth, {small:,} -> {large:,} docs (vs naive's)", f"{m_ours:.2f}x", f"{m_ref:.2f}x",
            m_ours / m_ref, "bounded by the block: <= 2x", m_ours <= 2)
    per_doc = ", ".join(f"{fmt(1e6 * probes[n, 'blocked']['seconds'] / n, 's')} at {n:,} (naive "
                        f"{fmt(1e6 * probes[n, 'naive']['seconds'] / n, 's')})" for n in s.search_sizes)
    block_mb = s.search_queries * s.search_block * 4 / 2**20  # one block's fp32 scores
    sec.notes.append(
        f"(a) Search: random unit vectors, fp32, {shape}, on {threads} thread(s); ours is `search` (its blocks of "
        f"{s.search_block:,} documents, a running top k), the reference the plain full `queries @ corpus.T` then "
        f"`topk`; the same top-1 document for the first queries on both sides: "
        f"{'yes' if not mismatched else f'no at {mismatched}'}. Corpus embeddings (not counted in the peaks): "
        + ", ".join(f"{fmt(probes[n, 'blocked']['corpus_mb'], 'MB')} at {n:,}" for n in s.search_sizes) + ". "
        f"Seconds per million documents ({s.search_queries} queries): {per_doc}: the time is the matrix product, "
        f"so it grows with documents x queries x dim. Peak: the naive side holds all Q x N scores "
        f"({fmt(s.search_queries * large * 4 / 2**20, 'MB')} at {large:,}); ours one block's scores "
        f"({fmt(block_mb, 'MB')}, freed before the next block is scored) and its top k, the same at every size "
        "past one block; "
        f"each run in its own process, the peak RSS (VmHWM) reset once the vectors are in memory. Time, ours / naive "
        f"per alternating round (run-to-run spread; the table takes each side's best round): {spread}."
    )


def gradcache_rows(sec: Section, s: Settings, threads: int) -> None:
    mini = s.memory_mini_batch
    probes = {}
    for batch in s.growth_batches:
        print(f"    memory probe: batch {batch}, GradCache chunk {mini}", flush=True)
        probes[batch] = run_memory_probe(batch, mini, s, threads)
    base = s.growth_batches[0]
    t0, m0 = probes[base]["step_seconds"], probes[base]["peak_increase_mb"]
    for batch in s.growth_batches:
        p = probes[batch]
        linear = t0 * batch / base
        sec.add(f"GradCache step seconds, batch {batch}, chunk {mini} (vs linear from batch {base})",
                fmt(p["step_seconds"], "s"), fmt(linear, "s"), p["step_seconds"] / linear)
    for batch in s.growth_batches[1:]:
        p = probes[batch]
        ratio = p["peak_increase_mb"] / m0
        sec.add(f"GradCache peak RSS increase, batch {batch} (vs batch {base}; batch x{batch / base:g})",
                fmt(p["peak_increase_mb"], "MB"), fmt(m0, "MB"), ratio, "nearly flat: <= 1.5x", ratio <= 1.5)
    table = ", ".join(f"batch {b}: {probes[b]['step_seconds']:.2f} s ({1000 * probes[b]['step_seconds'] / b:.1f} ms "
                      f"per row), {probes[b]['peak_increase_mb']:.0f} MB" for b in s.growth_batches)
    sec.notes.append(
        f"(b) GradCache: one E5Trainer step (chunk {mini}, one hard negative, texts <= {s.memory_max_length} tokens) "
        f"on section 3's memory-probe model ({s.memory_layers} layers x {s.memory_hidden} hidden), each batch in its "
        f"own process (benchmarks.gradcache.run_memory_probe); step seconds from training's start to the step's end "
        f"(collation, both passes, optimizer), one step each, so noisy: {table}. Section 3 compares plain and "
        "GradCache at two of these sizes; this is the growth over more of them."
    )


def section_scaling(bench: Bench) -> Section:
    s = bench.settings
    sec = Section(8, "How cost grows: search against corpus size, GradCache against batch size")
    search_rows(sec, s, bench.threads)
    gradcache_rows(sec, s, bench.threads)
    sec.notes.append(
        "(c) Generation against concurrency: section 5 (a loopback server at concurrency "
        + ", ".join(map(str, s.concurrencies)) + "), and section 7 for a local model against its batch size."
    )
    return sec
