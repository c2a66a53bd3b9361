"""A loopback OpenAI-compatible server with scripted behaviour, in a thread or in its own process.

Standard library only, and runnable as a file, so that a test can start it as a process in a
fraction of a second and kill it for real (sockets reset, the port refuses):

- :class:`ScriptedServer` answers ``POST .../chat/completions`` (any path) on 127.0.0.1 in a
  thread, as a behaviour hook ``behave(body, arrival)`` says (see its docstring for the actions);
  ``GET .../count`` answers how many chat completions it has answered.
- :class:`ServerProcess` runs it as a child process with a named behaviour of
  :data:`BEHAVIOURS` (or ``module:function``); ``kill()`` is a SIGKILL and returns the seeds of
  the requests that reached it.
- ``python -m e5mistral.testing serve [--behave NAME] [--delay S] [--port P]`` (or this file
  run as a script) prints the URL on its first line and answers until killed.

Example:

```python
>>> with ScriptedServer(always_valid, delay=0.05) as server:
...     run = subprocess.run(["python", "scripts/generate_data.py", "--base-url", server.url, ...])
>>> with ServerProcess("unavailable") as server:  # every request answered 503
...     ...
```
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["BEHAVIOURS", "ScriptedServer", "ServerProcess", "always_valid", "valid_answer"]


# ------------------------------------------------------------------------------------------
# Behaviours: (body, arrival) -> an action
# ------------------------------------------------------------------------------------------
def valid_answer(seed: int, accent: str = "") -> dict:
    """A JSON answer valid for every task kind (extra keys are ignored), unique to the request's seed.

    ``accent`` is appended to every text (say non-ASCII letters, to exercise UTF-8 end to end).

    Example:
        >>> valid_answer(7)["S1"], valid_answer(7, " 中文")["label"]
        ('first 7', 'label-a 7 中文')
    """
    answer = {
        "tasks": [f"Retrieve notes about topic {seed} number {j}." for j in range(3)],
        "user_query": f"query {seed}",
        "positive_document": f"positive {seed}",
        "hard_negative_document": f"negative {seed}",
        "input_text": f"text {seed}",
        "label": f"label-a {seed}",
        "misleading_label": f"label-b {seed}",
        "input": f"input {seed}",
        "S1": f"first {seed}",
        "S2": f"second {seed}",
        "S3": f"third {seed}",
    }
    if accent:
        answer = {k: [t + accent for t in v] if k == "tasks" else v + accent for k, v in answer.items()}
    return answer


def always_valid(body: dict, arrival: int) -> tuple:
    """The default behaviour: a valid answer for the request's seed."""
    return ("content", json.dumps(valid_answer(body.get("seed") or 0)))


def _is_brainstorm(body: dict) -> bool:
    return '"tasks"' in body["messages"][0]["content"]


def reasked(body: dict, arrival: int) -> tuple:
    """Valid answers with non-ASCII text, decided by the request alone (never by timing); an
    example whose seed is a multiple of 4 is answered with prose on its first turn, so it is
    asked again (then valid)."""
    seed = body.get("seed") or 0
    if not _is_brainstorm(body) and seed % 4 == 0 and len(body["messages"]) == 1:
        return ("content", "Sorry, no JSON today.")
    return ("content", json.dumps(valid_answer(seed, " ünïcode 中文"), ensure_ascii=False))


def unavailable(body: dict, arrival: int) -> tuple:
    """Every request answered 503, as a proxy whose upstream is gone answers."""
    return ("status", 503, {})


def leaky_401(body: dict, arrival: int) -> tuple:
    """Every request refused with 401, the error text repeating the request's Authorization header."""
    return ("echo_auth", 401)


def leaky_500(body: dict, arrival: int) -> tuple:
    """:func:`reasked`, but examples whose seed is a multiple of 3 fail with HTTP 500, the error
    text repeating the request's Authorization header (as some servers do)."""
    if not _is_brainstorm(body) and (body.get("seed") or 0) % 3 == 0:
        return ("echo_auth", 500)
    return reasked(body, arrival)


BEHAVIOURS = {
    "valid": always_valid,
    "reasked": reasked,
    "unavailable": unavailable,
    "leaky_401": leaky_401,
    "leaky_500": leaky_500,
}


def behaviour(name: str):
    """A behaviour by name: one of :data:`BEHAVIOURS`, or ``module:function``."""
    if name in BEHAVIOURS:
        return BEHAVIOURS[name]
    module, _, function = name.partition(":")
    if not function:
        raise ValueError(f"unknown behaviour {name!r}; use one of {', '.join(BEHAVIOURS)} or module:function")
    return getattr(importlib.import_module(module), function)


# ------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the default backlog of 5 would refuse a burst of 64 connections


class ScriptedServer:
    """``/v1/chat/completions`` on 127.0.0.1, answering as ``behave(body, arrival)`` says.

    ``behave`` returns one of ``("content", text)``, ``("status", code, headers)``, ``("echo_auth",
    code)`` (an error whose text repeats the request's Authorization header), ``("html",)`` (a 200
    that is not JSON) or ``("hang",)``. ``arrival`` counts the earlier requests that carried the
    same ``seed`` (one seed per request id, the same on every try). ``delay`` seconds are slept
    before each answer. ``on_request(seed, authorization)``, if given, is called as each request
    arrives. Recorded: ``arrivals`` (seed -> [(time, action)]), ``authorizations`` (the
    Authorization header of each request), ``usage`` (tokens answered) and ``count``.

    Example:

    ```python
    >>> with ScriptedServer(always_valid) as server:
    ...     run = subprocess.run(["python", "scripts/generate_data.py", "--base-url", server.url, ...])
    ```
    """

    def __init__(self, behave=always_valid, delay: float = 0.0, port: int = 0, *, on_request=None):
        self.behave = behave
        self.delay = delay
        self.on_request = on_request
        self.lock = threading.Lock()
        self.arrivals: dict[int, list[tuple[float, str]]] = defaultdict(list)  # seed -> (time, action)
        self.authorizations: list[str] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.count = 0
        self.stop = threading.Event()
        self.httpd = _HTTPServer(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _answer(self, body: dict, authorization: str) -> tuple[int, bytes, str, dict]:
        """What to send: (status, payload, content type, headers); None for a hang."""
        seed = body.get("seed")
        with self.lock:
            arrival = len(self.arrivals[seed])
            action = self.behave(body, arrival)
            self.arrivals[seed].append((time.monotonic(), action[0] if action[0] != "content" else "ok"))
            self.authorizations.append(authorization)
            if self.on_request is not None:
                self.on_request(seed, authorization)
        if self.delay:
            time.sleep(self.delay)
        if action[0] == "hang":
            self.stop.wait(10)
            return None
        if action[0] == "html":  # as from a misconfigured proxy
            return 200, b"<html><body>upstream unavailable</body></html>", "text/html", {}
        if action[0] in ("status", "echo_auth"):
            code, headers = action[1], action[2] if len(action) > 2 else {}
            message = f"scripted {code}"
            if action[0] == "echo_auth":
                message = f"internal trouble; request had Authorization: {authorization}"
            return code, json.dumps({"error": {"message": message}}).encode(), "application/json", headers
        text = action[1]
        usage = {"prompt_tokens": len(json.dumps(body["messages"])) // 4, "completion_tokens": len(text) // 4}
        with self.lock:
            for key, value in usage.items():
                self.usage[key] += value
            self.count += 1
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        payload = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body.get("model", "")}
        payload.update(choices=[choice], usage=usage)
        return 200, json.dumps(payload).encode(), "application/json", {}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # TCP_NODELAY, as real servers set: no 40 ms delayed-ACK stalls

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, code: int, payload: bytes, content_type: str, headers=None) -> None:
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client was interrupted: nothing to answer
                    pass

            def do_GET(self):  # .../count: chat completions answered so far; nothing else is served
                if self.path.rstrip("/").endswith("/count"):
                    self._send(200, str(server.count).encode(), "text/plain")
                else:
                    self._send(404, b'{"error": {"message": "not found"}}', "application/json")

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:  # not a chat request (a fake Hub's upload, say)
                    body = {}
                answer = server._answer(body if isinstance(body, dict) else {}, self.headers.get("Authorization", ""))
                if answer is not None:
                    self._send(*answer)

        return Handler

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class ServerProcess:
    """A :class:`ScriptedServer` in a child process (this file run with the standard library
    only), so that ``kill()`` is a real process death and its threads do not compete with the
    client under test for this process's GIL.

    ``behaviour`` names one of :data:`BEHAVIOURS` or a ``module:function`` the child can import.
    ``kill()`` (also on leaving the ``with`` block) returns the seeds of every request that
    reached the server; ``authorizations`` then holds their Authorization headers.

    Example:

    ```python
    >>> with ServerProcess("reasked", delay=0.1) as server:
    ...     ...  # generate against server.url, then
    ...     arrived = server.kill()
    ```
    """

    def __init__(self, behaviour: str = "valid", delay: float = 0.0):
        command = [sys.executable, __file__, "serve", "--behave", behaviour, "--delay", str(delay), "--report"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, encoding="utf-8")
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.process.kill()
            raise RuntimeError(f"the loopback server did not start (it printed {self.url!r}).")
        self.authorizations: list[str] = []
        self.seeds: list[int] | None = None

    def count(self) -> int:
        """How many chat completions the server has answered."""
        import urllib.request

        with urllib.request.urlopen(self.url + "/count") as response:
            return int(response.read())

    def kill(self) -> list[int]:
        """SIGKILL the process (once); returns the seeds of every request that reached it."""
        if self.seeds is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            report = self.process.stdout.read()
            self.process.stdout.close()
            self.seeds = [int(seed) for seed in re.findall(r"^REQ (\d+)$", report, re.MULTILINE)]
            self.authorizations = re.findall(r"^AUTH (.*)$", report, re.MULTILINE)
        return self.seeds

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def _report(seed, authorization: str) -> None:
    sys.stdout.write(f"REQ {seed}\nAUTH {authorization}\n")  # one write under the server's lock
    sys.stdout.flush()


def main(argv=None) -> None:
    """``serve [--behave NAME] [--port P] [--delay S] [--report]``: print the URL, answer until killed."""
    parser = argparse.ArgumentParser(prog="python -m e5mistral.testing", description=main.__doc__)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--behave", default="valid", help=f"{', '.join(BEHAVIOURS)}, or module:function")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds slept before each answer")
    parser.add_argument("--report", action="store_true", help="print 'REQ seed' and 'AUTH header' per request")
    args = parser.parse_args(argv)
    on_request = _report if args.report else None
    server = ScriptedServer(behaviour(args.behave), delay=args.delay, port=args.port, on_request=on_request)
    print(server.url, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
