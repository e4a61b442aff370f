"""Benchmark (not a test): the Python SDK side by side with cashet, joblib.Memory and diskcache's
memoize, in one run. Run it through benches/python_vs_peers.sh, which builds the wheel and
installs the peers from PyPI into the benchmark's own virtual environment.

Every library gets a fresh directory per scenario. Times are medians (per call) or totals.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = tempfile.mkdtemp(prefix="tvpy-bench-")
LIBS = ["taskvault", "cashet", "joblib", "diskcache"]


def small(x):
    return {"x": x, "sq": x * x}


def trivial(x):
    return x + 1


def blob(n, tag):
    return b"\x01" * n


def slow(x):
    with open(os.environ["BENCH_COUNT"], "a") as f:
        f.write("x")
    time.sleep(1)
    return x * 2


class Lib:
    """One library behind a common face: call(fn, *args) returns the result value."""

    def __init__(self, name: str, path: str):
        self.name = name
        if name == "taskvault":
            from taskvault import Client

            c = Client(store_dir=path)
            self.call = lambda fn, *a: c.submit(fn, *a).load()
            self.map = lambda fn, items: [r.load() for r in c.map(fn, items)]
        elif name == "cashet":
            from cashet import Client

            c = Client(store_dir=path)
            self.call = lambda fn, *a: c.submit(fn, *a).load()
            self.map = lambda fn, items: [r.load() for r in c.map(fn, items)]
        elif name == "joblib":
            from joblib import Memory

            m = Memory(path, verbose=0)
            cache: dict = {}
            self.call = lambda fn, *a: cache.setdefault(fn, m.cache(fn))(*a)
            self.map = lambda fn, items: [self.call(fn, i) for i in items]
        else:
            from diskcache import Cache

            dc = Cache(path)
            cache = {}
            self.call = lambda fn, *a: cache.setdefault(fn, dc.memoize()(fn))(*a)
            self.map = lambda fn, items: [self.call(fn, i) for i in items]


def fresh(name: str, scenario: str) -> Lib:
    path = os.path.join(ROOT, f"{scenario}-{name}")
    shutil.rmtree(path, ignore_errors=True)
    return Lib(name, path)


def per_call(fn, n: int) -> float:
    """Median of 5 batches of n calls, in microseconds per call."""
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def scenario_warm_hit(name: str) -> float:
    lib = fresh(name, "warm")
    lib.call(small, 7)
    return per_call(lambda: lib.call(small, 7), 2000)


def scenario_cold_miss(name: str) -> float:
    lib = fresh(name, "cold")
    counter = iter(range(10**9))
    lib.call(trivial, -1)  # first-use setup is not a miss's cost
    return per_call(lambda: lib.call(trivial, next(counter)), 300)


def scenario_map(name: str) -> tuple[float, float]:
    lib = fresh(name, "map")
    items = list(range(10_000))
    t = time.perf_counter()
    out = lib.map(trivial, items)
    cold = time.perf_counter() - t
    assert out[-1] == 10_000
    t = time.perf_counter()
    lib.map(trivial, items)
    warm = time.perf_counter() - t
    return cold * 1000, warm * 1000


def scenario_blob(name: str, size: int) -> float:
    lib = fresh(name, f"blob{size}")
    assert len(lib.call(blob, size, "t")) == size
    runs = []
    for _ in range(5 if size > 10**7 else 50):
        t = time.perf_counter()
        lib.call(blob, size, "t")
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs)


def scenario_processes(name: str) -> tuple[float, int]:
    path = os.path.join(ROOT, f"procs-{name}")
    shutil.rmtree(path, ignore_errors=True)
    count = path + ".count"
    env = {**os.environ, "BENCH_COUNT": count}
    start = time.time() + 1.0
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "worker", name, path, str(start)], env=env) for _ in range(8)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    # Wall time from the common start instant (the workers wait for it), not from spawning.
    wall = time.perf_counter() - t - 1.0
    with open(count) as f:
        return wall, len(f.read())


def worker(name: str, path: str, start: float) -> None:
    lib = Lib(name, path)
    while time.time() < start:
        time.sleep(0.002)
    assert lib.call(slow, 21) == 42


def main() -> None:
    rows: dict[str, dict[str, object]] = {name: {} for name in LIBS}
    # Scenario by scenario, every library back to back: a shared machine's speed drifts over
    # minutes, and a ratio should compare runs made under the same conditions.
    for name in LIBS:
        rows[name]["warm hit, small result (µs/call)"] = scenario_warm_hit(name)
    for name in LIBS:
        rows[name]["cold miss, trivial function (µs/call)"] = scenario_cold_miss(name)
    for name in LIBS:
        cold, warm = scenario_map(name)
        rows[name]["map 10,000 cold (ms)"] = cold
        rows[name]["map 10,000 warm (ms)"] = warm
    for name in LIBS:
        rows[name]["1 MiB result hit (ms)"] = scenario_blob(name, 1 << 20)
    for name in LIBS:
        rows[name]["100 MiB result hit (ms)"] = scenario_blob(name, 100 << 20)
    for name in LIBS:
        wall, runs = scenario_processes(name)
        rows[name]["8 processes, one 1 s call (s wall, executions)"] = f"{wall:.2f} s, {runs}"
    for name in LIBS:
        print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    metrics = list(rows["taskvault"])
    print("| scenario | " + " | ".join(LIBS) + " | taskvault / diskcache |")
    print("|---|" + "---:|" * (len(LIBS) + 1))
    for m in metrics:
        cells = []
        for name in LIBS:
            v = rows[name][m]
            cells.append(f"{v:.1f}" if isinstance(v, float) else str(v))
        tv, dc = rows["taskvault"][m], rows["diskcache"][m]
        ratio = f"{tv / dc:.2f}" if isinstance(tv, float) and isinstance(dc, float) and dc else ""
        print(f"| {m} | " + " | ".join(cells) + f" | {ratio} |")
    shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        main()
