"""Bounded load on a live ``reasonrec serve`` (loopback only): requests/s and p50 / p99 latency of
``POST /v1/score`` at 1, 8 and 32 concurrent httpx async clients.

    python benchmarks/serve.py RUN_DIR [--seconds 5] [--items 20]

RUN_DIR is a finished run with CTR checkpoints (``*/ctr/``); without one, ``--build DIR`` first builds the small
test run of ``tests/test_serve.py`` (ML-100K collm, 80 users, DIN + DeepFM; needs REASONREC_TEST_DATA or
``--data``). Each request scores ``--items`` random known items for a random user of the run. The server runs in
a child process; the machine's load average is printed because the figures depend on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


async def _load(url: str, clients: int, seconds: float, bodies: list[dict]) -> tuple[int, list[float], int]:
    import httpx

    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def worker(k: int) -> None:
            nonlocal errors
            n = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post("/v1/score", json=bodies[n % len(bodies)])
                lat.append(time.perf_counter() - t0)
                errors += r.status_code != 200
                n += clients
        await asyncio.gather(*(worker(k) for k in range(clients)))
    return len(lat), lat, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--build", type=Path, help="build the small test run here first")
    ap.add_argument("--data", type=Path, help="ML-100K folder for --build")
    ap.add_argument("--seconds", type=float, default=5.0, help="load duration per concurrency level")
    ap.add_argument("--items", type=int, default=20, help="items per /v1/score request")
    args = ap.parse_args()
    import test_serve as T

    run = args.run
    if args.build is not None:
        data = args.data or Path(os.environ.get("REASONREC_TEST_DATA", "data")) / "ml-100k"
        run = T.build_run(args.build, data, epochs=1)
    if run is None:
        ap.error("give RUN_DIR or --build DIR")
    from reasonrec.rec.checkpoint import load_histories

    folder = sorted(run.glob("*/ctr/histories.pt"))[0].parent
    users = sorted(load_histories(folder / "histories.pt"))
    import torch

    items = torch.load(sorted(folder.glob("*/features.pt"))[0], weights_only=True)["item_ids"].numpy()
    rng = np.random.default_rng(0)
    bodies = [{"user_id": int(rng.choice(users)), "item_ids": rng.choice(items, args.items).tolist()}
              for _ in range(512)]
    port = T._free_port()
    proc = T.serve_in_background(run, port)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(_load(url, 1, 1.0, bodies))  # warm-up
        print(f"load average before: {tuple(round(x, 2) for x in os.getloadavg())}; {os.cpu_count()} CPUs; "
              f"{args.items} items / request, {args.seconds:g} s per level")
        print("clients  requests  req/s   p50 ms  p99 ms  errors")
        for clients in (1, 8, 32):
            n, lat, errors = asyncio.run(_load(url, clients, args.seconds, bodies))
            ms = np.asarray(lat) * 1000
            print(f"{clients:7d}  {n:8d}  {n / args.seconds:6.1f}  {np.percentile(ms, 50):6.1f}  "
                  f"{np.percentile(ms, 99):6.1f}  {errors:6d}")
        print(f"load average after: {tuple(round(x, 2) for x in os.getloadavg())}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
