#!/usr/bin/env python3
"""Serves agentscale's small test models on a real Triton Inference Server (pytriton).

Usage: serve.py --grpc-port P --http-port P --metrics-port P

Models (all on CPU, batching disabled so shapes are exactly what clients send):
  identity_<dtype>   INPUT0 -> OUTPUT0, shape [-1], one per Triton datatype numpy
                     can hold (BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)
  identity_fp32_2d   INPUT0 -> OUTPUT0, FP32, shape [-1, -1]
  echo               BYTES INPUT0 [-1] -> OUTPUT0 (same strings) and LENGTHS INT64 (byte lengths)
  llm_stream         decoupled; TensorRT-LLM ensemble names: text_input BYTES [-1,-1],
                     max_tokens INT32 [-1,-1], stream BOOL [-1,-1] (optional) -> text_output
                     BYTES [-1,-1]. Token i is word (i mod n) of the input followed by a
                     space; stream=false sends the whole text as one response.
                     Raises if text_input contains "FAIL" (stream error test).
  always_error       raises ValueError("agentscale test model always fails: ...")
  slow               INPUT0 FP32 [-1] -> OUTPUT0 after sleeping DELAY_MS (INT32 [1]) ms
  minilm             sentence embeddings (all-MiniLM-L6-v2, minilm.py): TEXT BYTES [1]
                     -> EMBEDDING FP32 [384] (mean-pooled, L2-normalised), batching
                     on (max batch 64, dynamic batcher), so clients send [n, 1] and
                     get [n, 384]. Needs the weights package (scripts/services/triton.sh).
"""
import argparse
import os
import pathlib
import logging
import sys
import time

# Before numpy loads: see minilm.py (one BLAS thread).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig  # noqa: E402

DTYPES = {
    "bool": np.bool_,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "bytes": bytes,
}

NOBATCH = ModelConfig(batching=False)


def identity(requests):
    return [{"OUTPUT0": r["INPUT0"]} for r in requests]


def echo(requests):
    out = []
    for r in requests:
        strings = r["INPUT0"]
        lengths = np.array([len(s) for s in strings.reshape(-1)], dtype=np.int64)
        out.append({"OUTPUT0": strings, "LENGTHS": lengths})
    return out


def _scalar(r, name, default):
    if name not in r.data:
        return default
    return r[name].reshape(-1)[0]


def llm_stream(requests):
    plans = []
    for r in requests:
        text = r["text_input"].reshape(-1)[0]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        if "FAIL" in text:
            raise ValueError("llm_stream was asked to fail: " + text)
        words = text.split() or ["<empty>"]
        n = int(_scalar(r, "max_tokens", 8))
        tokens = [words[i % len(words)] + " " for i in range(n)]
        stream = bool(_scalar(r, "stream", True))
        plans.append(tokens if stream else ["".join(tokens)])
    steps = max(len(p) for p in plans)
    for i in range(steps):
        yield [
            {"text_output": np.array([[(p[i] if i < len(p) else "").encode("utf-8")]], dtype=object)}
            for p in plans
        ]


def always_error(requests):
    raise ValueError("agentscale test model always fails: this is the expected message")


def slow(requests):
    delay = max(int(_scalar(r, "DELAY_MS", 0)) for r in requests)
    time.sleep(delay / 1000.0)
    return [{"OUTPUT0": r["INPUT0"]} for r in requests]


MINILM_MAX_BATCH = 64


def minilm_infer(model):
    def infer(requests):
        # Each request is [b, 1] texts; run them all as one forward pass.
        texts, sizes = [], []
        for r in requests:
            rows = r["TEXT"].reshape(-1)
            sizes.append(len(rows))
            texts.extend(t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in rows)
        out = model.embed(texts)
        result, at = [], 0
        for n in sizes:
            result.append({"EMBEDDING": out[at : at + n]})
            at += n
        return result

    return infer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    # pytriton restricts the statistics / model-repository protocols to callers
    # sending header `triton-grpc-protocol-triton-access-token: <token>`; the
    # tests use this fixed token (the server listens on loopback only).
    p.add_argument("--access-token", default="agentscale-test-token")
    p.add_argument("--models", default="", help="comma-separated subset to serve (default: all)")
    # gRPC over TLS (server certificate and key, PEM files): for the client's
    # TLS test against a real Triton.
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    args = p.parse_args()
    only = set(filter(None, args.models.split(",")))
    logging.basicConfig(level=logging.WARNING)
    cfg = TritonConfig(
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )
    if args.tls_cert:
        cfg.grpc_use_ssl = True
        cfg.grpc_server_cert = pathlib.Path(args.tls_cert)
        cfg.grpc_server_key = pathlib.Path(args.tls_key)
    with Triton(config=cfg, security_config=TritonSecurityConfig(access_token=args.access_token)) as triton:

        class Subset:
            def bind(self, model_name, **kw):
                if not only or model_name in only:
                    triton.bind(model_name=model_name, **kw)

        t = Subset()
        for name, dt in DTYPES.items():
            t.bind(
                model_name=f"identity_{name}",
                infer_func=identity,
                inputs=[Tensor(name="INPUT0", dtype=dt, shape=(-1,))],
                outputs=[Tensor(name="OUTPUT0", dtype=dt, shape=(-1,))],
                config=NOBATCH,
            )
        t.bind(
            model_name="identity_fp32_2d",
            infer_func=identity,
            inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=(-1, -1))],
            outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(-1, -1))],
            config=NOBATCH,
        )
        t.bind(
            model_name="echo",
            infer_func=echo,
            inputs=[Tensor(name="INPUT0", dtype=bytes, shape=(-1,))],
            outputs=[
                Tensor(name="OUTPUT0", dtype=bytes, shape=(-1,)),
                Tensor(name="LENGTHS", dtype=np.int64, shape=(-1,)),
            ],
            config=NOBATCH,
        )
        t.bind(
            model_name="llm_stream",
            infer_func=[llm_stream] * 4,
            inputs=[
                Tensor(name="text_input", dtype=bytes, shape=(-1, -1)),
                Tensor(name="max_tokens", dtype=np.int32, shape=(-1, -1)),
                Tensor(name="stream", dtype=np.bool_, shape=(-1, -1), optional=True),
            ],
            outputs=[Tensor(name="text_output", dtype=bytes, shape=(-1, -1))],
            config=ModelConfig(batching=False, decoupled=True),
        )
        t.bind(
            model_name="always_error",
            infer_func=always_error,
            inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=(-1,))],
            outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(-1,))],
            config=NOBATCH,
        )
        t.bind(
            model_name="slow",
            infer_func=[slow] * 4,
            inputs=[
                Tensor(name="INPUT0", dtype=np.float32, shape=(-1,)),
                Tensor(name="DELAY_MS", dtype=np.int32, shape=(1,)),
            ],
            outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(-1,))],
            config=NOBATCH,
        )
        if not only or "minilm" in only:
            sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
            import minilm

            t.bind(
                model_name="minilm",
                infer_func=minilm_infer(minilm.MiniLM()),
                inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="EMBEDDING", dtype=np.float32, shape=(minilm.DIM,))],
                config=ModelConfig(
                    batching=True,
                    max_batch_size=MINILM_MAX_BATCH,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=2000),
                ),
            )
        triton.serve()


if __name__ == "__main__":
    main()
