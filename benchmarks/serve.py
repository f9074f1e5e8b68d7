"""Bounded load on a live ``reasonrec serve`` (loopback only): requests/s and p50 / p99 latency of
``POST /v1/score`` at 1, 8 and 32 concurrent httpx async clients, with cross-request batching (the default,
``--max-batch 32``) and without it (``--max-batch 1``), and their ratio.

    python benchmarks/serve.py RUN_DIR [--seconds 5] [--items 20]

RUN_DIR is a finished run with CTR checkpoints (``*/ctr/``); without one, ``--build DIR`` first builds the small
test run of ``tests/test_serve.py`` (ML-100K collm, 80 users, DIN + DeepFM; needs REASONREC_TEST_DATA or
``--data``). Each request scores ``--items`` random known items for a random user of the run. Each server runs
in a child process, one after the other; the clients share the machine with it, and the machine's load average
is printed because the figures depend on it. ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

LEVELS = (1, 8, 32)


async def _load(url: str, clients: int, seconds: float, bodies: list[dict]) -> tuple[list[float], int]:
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
    return lat, errors


def _measure(run: Path, options: list[str], bodies: list[dict], seconds: float) -> dict[int, dict]:
    import test_serve as T

    port = T._free_port()
    proc = T.serve_in_background(run, port, *options)
    out = {}
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(_load(url, 1, 1.0, bodies))  # warm-up
        for clients in LEVELS:
            lat, errors = asyncio.run(_load(url, clients, seconds, bodies))
            ms = np.asarray(lat) * 1000
            out[clients] = {"requests": len(lat), "rps": len(lat) / seconds, "p50_ms": float(np.percentile(ms, 50)),
                            "p99_ms": float(np.percentile(ms, 99)), "errors": errors}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--build", type=Path, help="build the small test run here first")
    ap.add_argument("--data", type=Path, help="ML-100K folder for --build")
    ap.add_argument("--seconds", type=float, default=5.0, help="load duration per concurrency level")
    ap.add_argument("--items", type=int, default=20, help="items per /v1/score request")
    ap.add_argument("--json", type=Path, help="write the figures here")
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
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    print(f"load average before: {load_before}; {os.cpu_count()} CPUs; {args.items} items / request, "
          f"{args.seconds:g} s per level")
    modes = {"batched": ["--max-batch", "32", "--max-wait-ms", "2"], "unbatched": ["--max-batch", "1"]}
    figures = {mode: _measure(run, opts, bodies, args.seconds) for mode, opts in modes.items()}
    print("clients  mode        requests   req/s   p50 ms   p99 ms  errors")
    for clients in LEVELS:
        for mode in modes:
            f = figures[mode][clients]
            print(f"{clients:7d}  {mode:10s}  {f['requests']:8d}  {f['rps']:6.1f}  {f['p50_ms']:7.1f}  "
                  f"{f['p99_ms']:7.1f}  {f['errors']:6d}")
        b, u = figures["batched"][clients], figures["unbatched"][clients]
        print(f"{clients:7d}  ratio       batched / unbatched: req/s × {b['rps'] / u['rps']:.2f}, "
              f"p50 × {b['p50_ms'] / u['p50_ms']:.2f}, p99 × {b['p99_ms'] / u['p99_ms']:.2f}")
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    print(f"load average after: {load_after}")
    if args.json:
        args.json.write_text(json.dumps({"items": args.items, "seconds": args.seconds, "load_before": load_before,
                                         "load_after": load_after, "cpus": os.cpu_count(), "figures": figures},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
