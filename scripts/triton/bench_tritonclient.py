#!/usr/bin/env python3
"""Python baseline for benches/bench_triton.rs: NVIDIA tritonclient (gRPC sync
at concurrency 1, grpc.aio above) running identity_fp32 with a 16-float input
for a fixed time. Prints one JSON line: infer_per_s, p50_us, p99_us,
cpu_us_per_infer (this process's user+sys time / inferences),
user_us_per_infer (its user part), count.
Usage: bench_tritonclient.py <url> <concurrency> <seconds> [model]"""
import asyncio
import json
import os
import resource
import sys
import time

import numpy as np

url = sys.argv[1].split("://", 1)[-1]
conc = int(sys.argv[2])
secs = float(sys.argv[3])
model = sys.argv[4] if len(sys.argv) > 4 else "identity_fp32"
data = np.arange(16, dtype=np.float32)


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def user():
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def report(lat, elapsed, cpu_s, user_s):
    lat.sort()
    n = len(lat)
    print(json.dumps({
        "count": n,
        "infer_per_s": n / elapsed,
        "p50_us": lat[n // 2] * 1e6 if n else 0,
        "p99_us": lat[min(n - 1, int(n * 0.99))] * 1e6 if n else 0,
        "cpu_us_per_infer": cpu_s * 1e6 / n if n else 0,
        "user_us_per_infer": user_s * 1e6 / n if n else 0,
    }))


def sync_run():
    import tritonclient.grpc as g
    c = g.InferenceServerClient(url)
    inp = g.InferInput("INPUT0", [16], "FP32")
    inp.set_data_from_numpy(data)
    for _ in range(20):
        c.infer(model, [inp])
    lat = []
    c0, u0, t0 = cpu(), user(), time.perf_counter()
    end = t0 + secs
    while True:
        s = time.perf_counter()
        if s >= end:
            break
        inp = g.InferInput("INPUT0", [16], "FP32")
        inp.set_data_from_numpy(data)
        r = c.infer(model, [inp])
        r.as_numpy("OUTPUT0")
        lat.append(time.perf_counter() - s)
    report(lat, time.perf_counter() - t0, cpu() - c0, user() - u0)


async def aio_run():
    import tritonclient.grpc.aio as ga
    c = ga.InferenceServerClient(url)
    lat = []

    async def one():
        inp = ga.InferInput("INPUT0", [16], "FP32")
        inp.set_data_from_numpy(data)
        r = await c.infer(model, [inp])
        r.as_numpy("OUTPUT0")

    for _ in range(20):
        await one()
    c0, u0, t0 = cpu(), user(), time.perf_counter()
    end = t0 + secs

    async def worker():
        while True:
            s = time.perf_counter()
            if s >= end:
                return
            await one()
            lat.append(time.perf_counter() - s)

    await asyncio.gather(*[worker() for _ in range(conc)])
    report(lat, time.perf_counter() - t0, cpu() - c0, user() - u0)
    await c.close()


if conc == 1:
    sync_run()
else:
    asyncio.run(aio_run())
# Exit without interpreter finalization, where grpc's channel close from
# InferenceServerClient.__del__ can deadlock (see crosscheck.py).
sys.stdout.flush()
os._exit(0)
