#!/usr/bin/env python3
"""Cross-check: runs fixed inferences with NVIDIA's tritonclient (gRPC) and
prints the outputs as JSON, for tests/tests/triton.rs to compare with ours.
Usage: crosscheck.py <url>"""
import json
import os
import queue
import sys

import numpy as np
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException

url = sys.argv[1].split("://", 1)[-1]
c = g.InferenceServerClient(url)
out = {}

x = g.InferInput("INPUT0", [3], "FP32")
x.set_data_from_numpy(np.array([1.25, -3.5, 1e-7], dtype=np.float32))
r = c.infer("identity_fp32", [x])
out["identity_fp32"] = [float(v) for v in r.as_numpy("OUTPUT0")]

s = g.InferInput("INPUT0", [3], "BYTES")
s.set_data_from_numpy(np.array(["héllo".encode(), b"", b"world"], dtype=object))
r = c.infer("echo", [s])
out["echo"] = [v.decode() for v in r.as_numpy("OUTPUT0")]
out["echo_lengths"] = [int(v) for v in r.as_numpy("LENGTHS")]

try:
    c.infer("always_error", [x])
    out["always_error"] = None
except InferenceServerException as e:
    out["always_error"] = e.message()

results = queue.Queue()
c.start_stream(callback=lambda result, error: results.put((result, error)))
t = g.InferInput("text_input", [1, 1], "BYTES")
t.set_data_from_numpy(np.array([[b"cross check words"]], dtype=object))
m = g.InferInput("max_tokens", [1, 1], "INT32")
m.set_data_from_numpy(np.array([[4]], dtype=np.int32))
st = g.InferInput("stream", [1, 1], "BOOL")
st.set_data_from_numpy(np.array([[True]], dtype=bool))
c.async_stream_infer("llm_stream", [t, m, st], request_id="x", enable_empty_final_response=True)
tokens = []
while True:
    result, error = results.get(timeout=60)
    if error is not None:
        raise error
    resp = result.get_response()
    if result.as_numpy("text_output") is not None:
        tokens.append(b"".join(result.as_numpy("text_output").reshape(-1)).decode())
    if resp.parameters["triton_final_response"].bool_param:
        break
c.stop_stream()
out["llm_stream"] = tokens
print(json.dumps(out), flush=True)
# Exit without interpreter finalization: grpc's channel close from
# InferenceServerClient.__del__ at shutdown can deadlock (seen once in CI:
# the JSON was printed, the process never exited).
os._exit(0)
