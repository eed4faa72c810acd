"""Real servers on loopback for the tests: llama-cpp-python's OpenAI-compatible server on the embedded GGUF,
and a tiny misbehaving HTTP server (prose instead of JSON, HTTP 500s, slowness) for the bad-input tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(n_ctx: int = 4096, timeout_s: float = 120):
    from mtr.embedded import gguf_path

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2", "--model_alias", "smollm2"]
    # A file, not a pipe: llama.cpp logs a lot, and an unread pipe would block the server when full.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama.cpp server exited: {log.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("llama.cpp server did not come up") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class FakeServer:
    """An OpenAI-shaped HTTP server whose behaviour the test sets: `mode` in prose | error500 | slow."""

    def __init__(self, mode: str):
        self.mode = mode
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                if outer.mode == "error500":
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "boom"}}')
                    return
                if outer.mode == "slow":
                    time.sleep(3)
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "Sure! Here is the data: Paris."}}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeRetrievalServer:
    """The Search-R1 retrieval server's protocol (`POST /retrieve`) over a few passages, by simple word
    overlap; `mode` ok | down-once (HTTP 503 on the first request) | garbage | slow | error400."""

    def __init__(self, passages: list[dict], mode: str = "ok"):
        self.passages, self.mode, self.requests = passages, mode, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code: int, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                if outer.mode == "down-once" and len(outer.requests) == 1 or outer.mode == "down":
                    return self.reply(503, b'{"error": "warming up"}')
                if outer.mode == "garbage":
                    return self.reply(200, b"<html>not json</html>")
                if outer.mode == "error400":
                    return self.reply(400, b'{"error": "bad request"}')
                if outer.mode == "slow":
                    time.sleep(2)
                result = []
                for q in body["queries"]:
                    words = set(q.lower().split())
                    ranked = sorted(outer.passages, key=lambda p: -len(words & set(p["text"].lower().split())))
                    result.append([{"document": {"id": p["id"], "contents": f'"{p["title"]}"\n{p["text"]}'},
                                    "score": float(len(words & set(p["text"].lower().split())))}
                                   for p in ranked[: body["topk"]]])
                self.reply(200, json.dumps({"result": result}).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/retrieve"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
