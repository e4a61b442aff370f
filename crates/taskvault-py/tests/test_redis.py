"""cashet's shared Redis store, on TaskVault: ``Client(store="redis://...")`` keeps results and
their bytes in the real Redis server on loopback (TASKVAULT_TEST_REDIS, default
redis://127.0.0.1:6379/0), each test under a key prefix of its own; the eviction test runs a
redis-server of its own with a small ``maxmemory``. Skipped, with a line saying so, when the
server does not answer (.ci/run starts it; TASKVAULT_REQUIRE_TOOLS makes it a failure)."""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from taskvault import Client, PickleSerializer, SafePickleSerializer

from shared_store import check_readme_store_example

SERVER = os.environ.get("TASKVAULT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def unavailable(msg):
    if os.environ.get("TASKVAULT_REQUIRE_TOOLS"):
        pytest.fail(msg)
    pytest.skip(msg + "; .ci/run starts it")


def answers(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def drop_prefix(url, prefix):
    subprocess.run(["redis-cli", "-u", url, "--no-auth-warning", "EVAL",
                    "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('UNLINK', k) end",
                    "0", f"{prefix}:*"], check=False, capture_output=True)


@pytest.fixture
def store():
    if not answers(6379):
        unavailable("Redis does not answer on 127.0.0.1:6379")
    prefix = f"tvpy_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield f"{SERVER}?prefix={prefix}"
    drop_prefix(SERVER, prefix)


CHILD = textwrap.dedent("""
    import sys
    from taskvault import Client

    def square(n, marker):
        with open(marker, "a") as f:
            f.write("x")
        return {"n": n, "square": n * n, "payload": bytes(range(256)) * 1000}

    with Client(sys.argv[1], store=sys.argv[2]) as c:
        got = c.submit(square, 12, sys.argv[3]).load()
        assert got["square"] == 144 and len(got["payload"]) == 256000, got.keys()
""")


def test_two_processes_on_different_vault_directories_share_results(store, tmp_path):
    marker = tmp_path / "computed"
    for name in ("machine-a", "machine-b"):
        subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / name), store, str(marker)], check=True)
    assert marker.read_text() == "x", "computed more than once"
    with Client(tmp_path / "machine-c", store=store) as c:
        s = c.stats()
        assert s["entries"] == 1 and s["hits"] >= 1, s
        assert len(c.log()) == 1
    # Nothing of it in the vault directories: the bytes are in Redis.
    for name in ("machine-a", "machine-b"):
        blobs = tmp_path / name / "blobs"
        assert not blobs.exists() or not any(blobs.rglob("*")), f"{name} wrote blob files"


def test_a_redis_store_defaults_to_the_safe_unpickler(store, tmp_path):
    with Client(tmp_path / "v", store=store) as c:
        assert isinstance(c._serializer, SafePickleSerializer)
        assert c._vault.store_url.startswith("redis://127.0.0.1:6379")
    with Client(tmp_path / "w", store=store, serializer=PickleSerializer()) as c:
        assert isinstance(c._serializer, PickleSerializer)


def blob(i):
    # 64 KiB that differ per i and do not compress.
    import random

    return random.Random(i).randbytes(65536)


CALLS = []


def make(i, tag):
    CALLS.append(i)
    data = blob(i)
    return {"i": i, "data": data}


def test_eviction_under_maxmemory_never_serves_a_partial_value(tmp_path):
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path), "--maxmemory", "3mb",
                               "--maxmemory-policy", "allkeys-lru"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while not answers(port):
            assert time.time() < deadline, "redis-server did not start"
            time.sleep(0.02)
        url = f"redis://127.0.0.1:{port}/0"
        n = 150  # about 10 MB of results: three times what the server may hold
        with Client(tmp_path / "v", store=url, serializer=PickleSerializer()) as c:
            for i in range(n):
                assert c.submit(make, i, "first").load()["i"] == i
            info = subprocess.run(["redis-cli", "-p", str(port), "INFO", "stats"], capture_output=True,
                                  text=True).stdout
            evicted = int(next(l for l in info.splitlines() if l.startswith("evicted_keys:")).split(":")[1])
            assert evicted > 0, "the server evicted nothing: the test is too small"
            CALLS.clear()
            hits = 0
            for i in reversed(range(n)):
                got = c.submit(make, i, "first").load()
                # Whole or recomputed: the right result, never part of one.
                assert got["i"] == i and len(got["data"]) == 65536, i
                assert got["data"] == blob(i), i
                if i not in CALLS:
                    hits += 1
        # Redis's LRU clock ticks in seconds, so keys written within one are evicted at random:
        # most results lose a piece (their run, blob row or bytes) and must read as misses.
        assert CALLS, "every result survived the evictions: nothing was tested"
        print(f"maxmemory: {evicted} keys evicted, {hits} of {n} results served, {len(CALLS)} computed again")
    finally:
        server.kill()
        server.wait()


def test_the_readme_redis_example_opens_a_shared_vault(store, tmp_path, monkeypatch):
    check_readme_store_example("redis", store, tmp_path, monkeypatch)
