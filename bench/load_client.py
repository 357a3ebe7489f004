"""Open-loop HTTP load generator for the scorer's ``POST /predict``, run as its own process.

Sends requests at a fixed rate whatever the server does (request ``i`` is due at ``t0 + i/rate``),
so a slow answer cannot slow the offered load down and hide its own latency (coordinated
omission). Each request is timed twice: from the moment it was actually sent (service latency)
and from the moment it was due (what a caller with a fixed arrival rate would see). Bodies are
pre-encoded before the clock starts; connections are kept alive and reused.

    python bench/load_client.py --url http://127.0.0.1:8000/predict --bodies bodies.json \
        --rate 500 --duration 20 --out result.json

``bodies.json`` is a JSON list of request bodies, used round-robin. Prints and writes a JSON
summary (quantiles in milliseconds, error counts by status, how late the client itself sent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np

TIMEOUT_S = 5.0


async def run(url: str, bodies: list[bytes], rate: float, duration: float, warmup: int,
              connections: int) -> dict:
    n = int(rate * duration)
    service = np.full(n, np.nan)
    intended = np.full(n, np.nan)
    send_lag = np.zeros(n)
    server_ms = np.full(n, np.nan)
    statuses: Counter[str] = Counter()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for i in range(warmup):  # opens connections and warms both sides; not recorded
            async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                await r.read()

        async def one(i: int, due: float) -> None:
            sent = time.perf_counter()
            send_lag[i] = sent - due
            try:
                async with session.post(url, data=bodies[i % len(bodies)],
                                        headers=headers) as resp:
                    payload = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                statuses[type(exc).__name__] += 1
                return
            done = time.perf_counter()
            statuses[str(status)] += 1
            if status == 200:
                service[i] = done - sent
                intended[i] = done - due
                server_ms[i] = json.loads(payload).get("latency_ms", np.nan)

        tasks = []
        t0 = time.perf_counter() + 0.05
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0

    def quantiles(values: np.ndarray, scale: float = 1000.0) -> dict[str, float]:
        ok = values[~np.isnan(values)] * scale
        if not len(ok):
            return {}
        return {"p50": float(np.percentile(ok, 50)), "p90": float(np.percentile(ok, 90)),
                "p99": float(np.percentile(ok, 99)), "max": float(ok.max())}

    ok = int(statuses.get("200", 0))
    return {
        "url": url, "rate": rate, "duration_s": duration, "sent": n, "ok": ok,
        "errors": n - ok, "statuses": dict(statuses), "achieved_rps": n / wall,
        "service_ms": quantiles(service), "intended_ms": quantiles(intended),
        "server_ms": quantiles(server_ms, 1.0), "send_lag_ms": quantiles(send_lag),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--bodies", type=Path, required=True, help="JSON list of request bodies")
    p.add_argument("--rate", type=float, default=500.0, help="requests per second (open loop)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--warmup", type=int, default=200, help="unrecorded requests first")
    p.add_argument("--connections", type=int, default=64, help="most open connections")
    p.add_argument("--out", type=Path, help="write the JSON summary here too")
    args = p.parse_args()
    bodies = [json.dumps(b).encode() for b in json.loads(args.bodies.read_text())]
    result = asyncio.run(run(args.url, bodies, args.rate, args.duration, args.warmup,
                             args.connections))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
