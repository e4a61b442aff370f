"""Benchmark (not a test): TaskVault's Python SDK on Redis against cashet's RedisStore, on the
same Redis (REDIS_URL). Run it through benches/redis_vs_cashet.sh.

Scenarios, each on a fresh key prefix / database state:
- warm hit: the same call again and again in one process (median of 5 batches, µs per call);
- first hit: a call another process stored, asked once by a new client (median of 20, µs);
- cold save: a new call stored (median of 5 batches of 200, µs per call).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

URL = os.environ["REDIS_URL"]
ROOT = tempfile.mkdtemp(prefix="tvredis-bench-")


def small(x):
    return {"x": x, "sq": x * x}


def client(name: str, tag: str):
    if name == "taskvault":
        from taskvault import Client, PickleSerializer

        # The same serializer as cashet's default: the comparison is of the stores.
        return Client(os.path.join(ROOT, f"{tag}-{os.getpid()}"), store=f"{URL}?prefix=tv{tag}",
                      serializer=PickleSerializer())
    from cashet import Client
    from cashet.redis_store import RedisStore

    db = {"warm": 1, "first": 2, "cold": 3}[tag]
    return Client(store=RedisStore(URL.rsplit("/", 1)[0] + f"/{db}"))


def per_call(fn, n: int) -> float:
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def warm_hit(name: str) -> float:
    c = client(name, "warm")
    c.submit(small, 7).load()
    return per_call(lambda: c.submit(small, 7).load(), 2000)


def first_hit(name: str) -> float:
    # Stored by another process; each sample is a new client's first ask of a stored call.
    code = ("import sys; sys.path.insert(0, %r); import redis_vs_cashet as b; c = b.client(%r, 'first');"
            "[c.submit(b.small, i).load() for i in range(20)]") % (os.path.dirname(__file__), name)
    subprocess.run([sys.executable, "-c", code], check=True)
    times = []
    for i in range(20):
        c = client(name, "first")
        t = time.perf_counter()
        assert c.submit(small, i).load() == {"x": i, "sq": i * i}
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def cold_save(name: str) -> float:
    c = client(name, "cold")
    counter = iter(range(10**9))
    return per_call(lambda: c.submit(small, next(counter)).load(), 200)


def main() -> None:
    rows = {}
    for name in ("taskvault", "cashet"):
        rows[name] = {
            "warm hit (µs/call)": warm_hit(name),
            "first hit of another process's result (µs)": first_hit(name),
            "cold save (µs/call)": cold_save(name),
        }
    print(f"# TaskVault on Redis vs cashet's RedisStore, same redis-server ({time.strftime('%Y-%m-%d')})")
    print()
    print("| scenario | taskvault | cashet | ratio |")
    print("|---|---|---|---|")
    for scenario in rows["taskvault"]:
        a, b = rows["taskvault"][scenario], rows["cashet"][scenario]
        print(f"| {scenario} | {a:.1f} | {b:.1f} | {a / b:.3f}x |")


if __name__ == "__main__":
    main()
