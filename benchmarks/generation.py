"""Section 5, data generation: ``run_generation`` over ``EndpointPool`` against a loopback
OpenAI-compatible server with a fixed latency, as requests/s against concurrency / latency
(goal >= 0.9) and against a sequential client.

The server runs in its own process (``python -m benchmarks --loopback-server LATENCY``), so its
threads do not compete with the client under test for this process's GIL.

Example: ``print(section_generation(bench).text())``; ``with LoopbackServerProcess(0.5) as server: ...``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .harness import Section, child_process, fmt
from .workload import Bench


class LoopbackServer:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 that answers after ``latency`` seconds.

    Every answer is a valid JSON example for any task kind, unique to the request's seed.
    """

    def __init__(self, latency: float):
        self.latency = latency
        self.count = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real server
            disable_nagle_algorithm = True  # TCP_NODELAY, as real servers set: no 40 ms delayed-ACK stalls
            wbufsize = -1  # headers and body leave in one write (flushed after each request)

            def log_message(self, *args):
                pass

            def do_GET(self):  # /count: chat completions answered so far
                payload = str(server.count).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(server.latency)
                seed = body.get("seed", 0)
                answer = {"S1": f"first {seed}", "S2": f"second {seed}", "S3": f"third {seed}",
                          "user_query": f"query {seed}", "positive_document": f"positive {seed}",
                          "hard_negative_document": f"negative {seed}"}
                payload = json.dumps({
                    "id": f"bench-{seed}", "object": "chat.completion", "created": 0, "model": body.get("model", ""),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": json.dumps(answer)}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
                }).encode()
                with server.lock:
                    server.count += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512  # the default backlog of 5 would refuse a burst of 64 connections

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()


class LoopbackServerProcess:
    """:class:`LoopbackServer` in a child process, so that its threads do not compete with the
    client under test for this process's GIL (a real LLM server is another process too).

    ``count()`` asks the server how many chat completions it has answered.
    """

    def __init__(self, latency: float):
        self.latency = latency

    def __enter__(self):
        command, env = child_process("--loopback-server", str(self.latency))
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"the loopback server did not start (it printed {self.url!r}).")
        return self

    def count(self) -> int:
        import urllib.request

        with urllib.request.urlopen(self.url + "/count") as response:
            return int(response.read())

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def sequential_client(url: str, n: int) -> float:
    """Requests/s of a plain blocking loop: one request, wait for the answer, parse it, next."""
    import urllib.request

    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}], "seed": 0}).encode()
    start = time.perf_counter()
    for _ in range(n):
        request = urllib.request.Request(url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            json.loads(response.read())
    return n / (time.perf_counter() - start)


def section_generation(bench: Bench) -> Section:
    from e5mistral.synthetic.generate import GenerationConfig, run_generation
    from e5mistral.synthetic.llm import EndpointPool

    s = bench.settings
    sec = Section(5, "Data generation against a loopback server with fixed latency")
    with LoopbackServerProcess(s.latency) as server:
        n_seq = max(4, s.rounds * 2)
        sequential = sequential_client(server.url, n_seq)
        cpu_ms = []
        for c in s.concurrencies:
            n = s.rounds * c
            config = GenerationConfig(kinds=("sts",), examples_per_kind=n, seed=c, languages={"en": 1.0})
            pool = EndpointPool([server.url], model="bench", token="EMPTY", json_mode="off", max_retries=0, timeout=60)
            before = server.count()
            with tempfile.TemporaryDirectory() as work:
                start, cpu_start = time.perf_counter(), time.process_time()
                summary = asyncio.run(run_generation(config, pool, Path(work) / "generations.jsonl",
                                                     concurrency=c, progress=False))
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            requests = server.count() - before
            failed = sum(summary["failures_by_reason"].values())
            if requests != n or failed:
                sec.notes.append(f"concurrency {c}: {requests} requests for {n} planned, {failed} failed "
                                 f"({summary['failures_by_reason']}).")
            rate, ideal = requests / seconds, c / s.latency
            sec.add(f"concurrency {c}: requests/s ({n} requests) vs concurrency / latency", fmt(rate, "req/s"),
                    fmt(ideal, "req/s"), rate / ideal, ">= 0.9x", rate / ideal >= 0.9)
            sec.add(f"concurrency {c}: requests/s vs a sequential client", fmt(rate, "req/s"),
                    fmt(sequential, "req/s"), rate / sequential)
            cpu_ms.append(1000 * cpu / max(1, requests))
    sec.notes.append(
        f"Server: http.server on 127.0.0.1 in its own process (a thread per connection, keep-alive), answering every chat completion "
        f"after a fixed {s.latency:g} s with a valid `sts` example. Ours: `run_generation` (plan, parse, validate, "
        "append to the JSONL log) over `EndpointPool` (one pooled aiohttp session). Sequential client: "
        f"urllib, one request at a time ({n_seq} requests), parsing each answer. Times include the run's start-up."
    )
    sec.notes.append(
        "Client CPU per request (this process, all threads): "
        + ", ".join(f"{ms:.1f} ms at concurrency {c}" for ms, c in zip(cpu_ms, s.concurrencies))
        + f" (the first includes the client's start-up). At the highest concurrency one event-loop thread tops out "
        f"near {1000 / cpu_ms[-1]:.0f} req/s on an idle core; the loopback server (another process) needs CPU too, so "
        f"on a busy or small machine concurrency {s.concurrencies[-1]} at {s.latency:g} s latency "
        f"({s.concurrencies[-1] / s.latency:g} req/s ideal) becomes CPU-bound."
    )
    return sec
