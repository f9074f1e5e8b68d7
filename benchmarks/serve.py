"""Bounded load on a live ``reasonrec serve`` (loopback only): requests/s and p50 / p99 latency of
``POST /v1/score`` at 1, 8 and 32 concurrent httpx async clients, with cross-request batching (the default,
``--max-batch 32``) and without it (``--max-batch 1``), and their ratio.

    python benchmarks/serve.py RUN_DIR [--seconds 3] [--repeats 3] [--items 20]

RUN_DIR is a finished run with CTR checkpoints (``*/ctr/``); without one, ``--build DIR`` first builds the small
test run of ``tests/test_serve.py`` (ML-100K collm, 80 users, DIN + DeepFM; needs REASONREC_TEST_DATA or
``--data``). Each request scores ``--items`` random known items for a random user of the run. The two servers
run in child processes, up together, each level measured on one then the other; the clients share the machine with it, and the machine's load average
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


def _measure(run: Path, modes: dict[str, list[str]], bodies: list[dict], seconds: float,
             repeats: int) -> dict[str, dict]:
    """Both servers up at once, each level measured ``repeats`` times on one then the other, alternating, so
    that a change of the machine's load (other processes) weighs on both modes alike; req/s is the median of
    the repeats, the latency percentiles are of every request of the level."""
    import test_serve as T

    procs, urls = [], {}
    try:
        for mode, options in modes.items():
            port = T._free_port()
            procs.append(T.serve_in_background(run, port, *options))
            urls[mode] = f"http://127.0.0.1:{port}"
            asyncio.run(_load(urls[mode], 1, 1.0, bodies))  # warm-up
        out: dict[str, dict] = {mode: {} for mode in modes}
        for clients in LEVELS:
            got: dict[str, list] = {mode: [] for mode in modes}
            for _ in range(repeats):
                for mode, url in urls.items():
                    got[mode].append(asyncio.run(_load(url, clients, seconds, bodies)))
            import httpx

            info = httpx.get(urls["batched"] + "/v1/model").json()["batching"]  # cumulative counts
            seen = out.setdefault("_counts", [{"batches": 0, "requests": 0}])
            mean_batch = (info["requests"] - seen[-1]["requests"]) / max(1, info["batches"] - seen[-1]["batches"])
            seen.append(info)
            for mode, reps in got.items():
                ms = np.concatenate([np.asarray(lat) for lat, _ in reps]) * 1000
                out[mode][clients] = {"requests": len(ms), "repeats": repeats,
                                      "rps": float(np.median([len(lat) / seconds for lat, _ in reps])),
                                      "rps_each": [round(len(lat) / seconds, 1) for lat, _ in reps],
                                      "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                                      "errors": sum(e for _, e in reps)}
            out["batched"][clients]["mean_batch"] = mean_batch
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
    out.pop("_counts")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--build", type=Path, help="build the small test run here first")
    ap.add_argument("--data", type=Path, help="ML-100K folder for --build")
    ap.add_argument("--seconds", type=float, default=5.0, help="load duration per concurrency level")
    ap.add_argument("--items", type=int, default=20, help="items per /v1/score request")
    ap.add_argument("--repeats", type=int, default=3, help="alternating measurements per mode and level")
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
          f"{args.repeats} × {args.seconds:g} s per mode and level, alternating")
    modes = {"batched": ["--max-batch", "32", "--max-wait-ms", "2"], "unbatched": ["--max-batch", "1"]}
    figures = _measure(run, modes, bodies, args.seconds, args.repeats)
    print("clients  mode        requests   req/s (median; each)      p50 ms   p99 ms  errors")
    for clients in LEVELS:
        for mode in modes:
            f = figures[mode][clients]
            each = "; ".join(f"{x:g}" for x in f["rps_each"])
            print(f"{clients:7d}  {mode:10s}  {f['requests']:8d}  {f['rps']:6.1f} ({each:16s})  {f['p50_ms']:7.1f}  "
                  f"{f['p99_ms']:7.1f}  {f['errors']:6d}")
        b, u = figures["batched"][clients], figures["unbatched"][clients]
        print(f"{clients:7d}  ratio       batched / unbatched (mean batch {b['mean_batch']:.1f} requests): "
              f"req/s × {b['rps'] / u['rps']:.2f}, "
              f"p50 × {b['p50_ms'] / u['p50_ms']:.2f}, p99 × {b['p99_ms'] / u['p99_ms']:.2f}")
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    print(f"load average after: {load_after}")
    if args.json:
        args.json.write_text(json.dumps({"items": args.items, "seconds": args.seconds, "repeats": args.repeats, "load_before": load_before,
                                         "load_after": load_after, "cpus": os.cpu_count(), "figures": figures},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
