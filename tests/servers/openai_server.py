#!/usr/bin/env python3
"""A small OpenAI-compatible server owned by the tests (stdlib http.server).

    openai_server.py [--api-key KEY]     # prints "LISTENING <port>" when ready

Endpoints (under /v1):
  POST /v1/embeddings        model "minilm": all-MiniLM-L6-v2 (scripts/triton/minilm.py,
                             the same weights and code as Triton's `minilm`); usage
                             counts tokenizer tokens. Other models: 404.
  POST /v1/chat/completions  model "scripted": answers "you said: <last user message>",
                             one word per streamed chunk (SSE, `data: [DONE]` at the
                             end, a usage block when stream_options.include_usage).
                             The last user message selects test behaviour:
                               "flaky-429:<key>:<n>"  429 (Retry-After: 0) for the first n
                                                      requests with this message
                               "flaky-500:<key>:<n>"  500 likewise
                               "bad-request:<key>"    400 with an OpenAI error body
                               "slow:<ms>"            waits before answering
                               "stall"                (stream) one chunk, then silence
                               "error-midstream"      (stream) one chunk, then an error event
                               "cut"                  (stream) one chunk, then the
                                                      connection closes without [DONE]
  GET  /stats                {message: requests seen} for the flaky/bad keys
Every request needs "Authorization: Bearer KEY" when --api-key is given (else 401).
"""
import argparse
import json
import os
import pathlib
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts" / "triton"))
import minilm  # noqa: E402

MODEL = None
LOCK = threading.Lock()
SEEN = {}
API_KEY = ""


def error_body(message, kind, code):
    return {"error": {"message": message, "type": kind, "code": code}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                self.send_json(200, dict(SEEN))
        else:
            self.send_json(404, error_body("no such path", "not_found", 404))

    def do_POST(self):
        if API_KEY and self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self.send_json(401, error_body("invalid api key", "authentication_error", 401))
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        except ValueError:
            return self.send_json(400, error_body("body is not JSON", "invalid_request_error", 400))
        if self.path == "/v1/embeddings":
            return self.embeddings(body)
        if self.path == "/v1/chat/completions":
            return self.chat(body)
        return self.send_json(404, error_body("no such path", "not_found", 404))

    def embeddings(self, body):
        if body.get("model") != "minilm":
            return self.send_json(404, error_body(f"model {body.get('model')!r} not found", "not_found", 404))
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        vectors = MODEL.embed(texts)
        tokens = sum(len(e.ids) for e in MODEL.tok.encode_batch(texts))
        data = [{"object": "embedding", "index": i, "embedding": [float(x) for x in v]} for i, v in enumerate(vectors)]
        self.send_json(200, {
            "object": "list",
            "model": "minilm",
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    def chat(self, body):
        if body.get("model") != "scripted":
            return self.send_json(404, error_body(f"model {body.get('model')!r} not found", "not_found", 404))
        messages = body.get("messages") or []
        last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        if last.startswith(("flaky-", "bad-request")):
            with LOCK:
                SEEN[last] = SEEN.get(last, 0) + 1
                seen = SEEN[last]
            if last.startswith("bad-request"):
                return self.send_json(400, error_body("scripted model refuses: " + last, "invalid_request_error", 400))
            kind, _, n = last.split(":")
            if seen <= int(n):
                status = 429 if kind == "flaky-429" else 500
                return self.send_json(status, error_body(f"{kind} attempt {seen}", "server_error", status),
                                      headers=[("Retry-After", "0")] if status == 429 else [])
        if last.startswith("slow:"):
            time.sleep(int(last.split(":")[1]) / 1000.0)
        words = ("you said: " + last).split()
        max_tokens = body.get("max_tokens")
        finish = "stop"
        if max_tokens is not None and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        if not body.get("stream"):
            return self.send_json(200, {
                "id": "chatcmpl-test", "object": "chat.completion", "model": "scripted",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": finish}],
                "usage": usage,
            })
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

        def event(obj):
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        def chunk(delta, finish_reason=None):
            event({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": "scripted",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

        chunk({"role": "assistant"})
        for i, w in enumerate(words):
            chunk({"content": w if i == 0 else " " + w})
            if i == 0 and last == "stall":
                time.sleep(3600)
            if i == 0 and last == "error-midstream":
                event(error_body("scripted model crashed mid-stream", "server_error", 500))
                return
            if i == 0 and last == "cut":
                return
        chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            event({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": "scripted",
                   "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main():
    global MODEL, API_KEY
    p = argparse.ArgumentParser()
    p.add_argument("--api-key", default="")
    args = p.parse_args()
    API_KEY = args.api_key
    MODEL = minilm.MiniLM()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
