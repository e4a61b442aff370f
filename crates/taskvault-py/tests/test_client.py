"""The client's behaviour: results, failures, options, pipelines, maintenance, and the CLI's view."""

import asyncio
import concurrent.futures as cf
import datetime as dt
import gc
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import taskvault
from taskvault import AsyncClient, Client, JsonSerializer, KeyWarning, SafePickleSerializer, TaskError, TaskRef
from conftest import bump


def add(file, a, b):
    bump(file)
    return a + b


def fail(file, message):
    bump(file)
    raise ValueError(message)


def test_task_errors_carry_the_original_traceback(client, counter):
    with pytest.raises(TaskError) as e:
        client.submit(fail, counter.file, "boom")
    assert "ValueError: boom" in str(e.value)
    assert "in fail" in e.value.traceback and "raise ValueError(message)" in e.value.traceback
    # Failures are not cached: the next call runs again.
    with pytest.raises(TaskError):
        client.submit(fail, counter.file, "boom")
    assert counter.n == 2


def flaky(file, until):
    bump(file)
    if len(pathlib.Path(file).read_text()) < until:
        raise RuntimeError("not yet")
    return "ok"


def test_retries(client, counter):
    assert client.submit(flaky, counter.file, 3, _retries=2).load() == "ok"
    assert counter.n == 3
    with pytest.raises(TaskError, match="after 2 attempts"):
        client.submit(flaky, counter.file + "2", 5, _retries=1)


def sleepy(seconds):
    time.sleep(seconds)
    return seconds


def test_timeout_stops_waiting_and_fails(client):
    started = time.monotonic()
    with pytest.raises(TaskError, match="did not finish within 0.2"):
        client.submit(sleepy, 3, _timeout=0.2)
    assert time.monotonic() - started < 2.5
    assert client.stats()["entries"] == 0


def test_cache_false_always_runs_and_force_overwrites(client, counter):
    # Both run whatever is stored and record the run as the key's newest, linked to the one
    # before it; a later cached call gets the newest.
    a = client.submit(add, counter.file, 1, 2, _cache=False)
    b = client.submit(add, counter.file, 1, 2, _cache=False)
    assert counter.n == 2 and a.commit_hash != b.commit_hash
    assert client.show(b.commit_hash).parent_hash == a.commit_hash
    c = client.submit(add, counter.file, 1, 2)
    assert counter.n == 2 and c.commit_hash == b.commit_hash
    d = client.submit(add, counter.file, 1, 2, _force=True)
    assert counter.n == 3 and c.commit_hash != d.commit_hash
    assert client.submit(add, counter.file, 1, 2).commit_hash == d.commit_hash
    assert [e.hash for e in client.history(d.commit_hash)] == [a.commit_hash, b.commit_hash, d.commit_hash]


def test_task_decorator_with_options(client, counter):
    @client.task(name="adder", tags={"team": "ml"}, retries=1)
    def adder(file, a):
        bump(file)
        return a + 1

    r = adder(counter.file, 1)
    assert r.load() == 2 and r.task == "adder"
    assert client.submit(adder, counter.file, 1).commit_hash == r.commit_hash
    assert counter.n == 1
    e = client.show(r.commit_hash)
    assert e["tags"] == {"team": "ml"} and e["task"] == "adder"
    assert client.invalidate(tags={"team": "ml"}) == 1
    adder(counter.file, 1)
    assert counter.n == 2


def test_ttl(client, counter):
    client.submit(add, counter.file, 1, 1, _ttl=1)
    client.submit(add, counter.file, 1, 1)
    assert counter.n == 1
    time.sleep(1.2)
    client.submit(add, counter.file, 1, 1)
    assert counter.n == 2


def test_result_refs_chain_and_nest(client, counter):
    a = client.submit(add, counter.file, 1, 2)
    b = client.submit(add, counter.file, a, 10)
    assert b.load() == 13
    nested = client.submit(add, counter.file, [a], [{"k": a}])
    assert nested.load() == [3, {"k": 3}]
    assert client.show(b.commit_hash)["details"]["parents"] == [a.commit_hash]
    # The key follows the upstream result's content, not its run: equal content, same key.
    a2 = client.submit(add, counter.file, 2, 1)
    assert a2.hash == a.hash
    assert client.submit(add, counter.file, a2, 10).commit_hash == b.commit_hash


def test_submit_many_orders_parallelizes_and_validates(client, counter):
    active, peak = [0], [0]
    lock = threading.Lock()

    def step(x):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return x + 1

    refs = client.submit_many(
        [(step, (TaskRef(1),)), (step, (1,)), (step, (2,)), (step, (3,)), (step, (TaskRef(0),))],
        max_workers=4,
    )
    assert [r.load() for r in refs] == [3, 2, 3, 4, 4]
    assert peak[0] >= 2
    with pytest.raises(ValueError, match="Circular dependency"):
        client.submit_many([(step, (TaskRef(1),)), (step, (TaskRef(0),))])
    with pytest.raises(ValueError, match="TaskRef\\(5\\)"):
        client.submit_many([(step, (TaskRef(5),))])


def square(x, offset=0):
    return x * x + offset


def test_map_caches_per_item(client):
    refs = client.map(square, range(20), offset=1)
    assert [r.load() for r in refs] == [x * x + 1 for x in range(20)]
    before = client.stats()["saves"]
    refs2 = client.map(square, range(21), offset=1, max_workers=3)
    assert [r.commit_hash for r in refs2[:20]] == [r.commit_hash for r in refs]
    assert client.stats()["saves"] == before + 1


def test_map_looks_stored_results_up_first_counting_each_hit_and_miss_once(client, counter):
    client.map(plus_counted, [0, 2, 4], counter.file)
    assert counter.n == 3
    before = client.stats()
    refs = client.map(plus_counted, range(6), counter.file, max_workers=2)
    assert [r.load() for r in refs] == [1, 2, 3, 4, 5, 6]
    assert counter.n == 6, "only the three new items ran"
    after = client.stats()
    assert after["hits"] - before["hits"] == 3
    assert after["misses"] - before["misses"] == 3
    # An item that cannot be keyed is left to submit, which warns and runs it uncached.
    with pytest.warns(KeyWarning):
        mixed = client.map(plus_counted, [0, (i for i in ())], counter.file, _on_unencodable="skip")
    assert mixed[0].load() == 1 and mixed[0].commit_hash == refs[0].commit_hash
    # _force skips the lookup: every item runs again.
    client.map(plus_counted, [0, 2], counter.file, _force=True)
    assert counter.n == 9


def plus_counted(x, file):
    bump(file)
    return x + 1 if isinstance(x, int) else "gen"


def test_submit_many_schedules_a_long_chain_and_a_wide_batch(client):
    chain = [(square, (1,))] + [(square, (TaskRef(i),)) for i in range(200)]
    refs = client.submit_many(chain, max_workers=4)
    assert refs[-1].load() == 1
    wide = client.submit_many([(square, (i,)) for i in range(2000)], max_workers=4)
    assert [r.load() for r in wide] == [i * i for i in range(2000)]


def test_map_on_a_process_pool(client):
    with cf.ProcessPoolExecutor(max_workers=2) as ex:
        refs = client.map(square, range(6), executor=ex)
    assert [r.load() for r in refs] == [x * x for x in range(6)]
    assert client.stats()["entries"] == 6


def plus_where(x, file):
    bump(file)
    return x + 1, os.getpid()


def test_map_on_a_dask_cluster_lands_results_in_the_vault(client, counter, monkeypatch):
    from dask.distributed import Client as DaskClient, LocalCluster

    # The workers import this module by name, as they would a user's package.
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.abspath(__file__)))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            DaskClient(cluster) as dask:
        refs = client.map(plus_where, range(4), counter.file, executor=dask.get_executor())
        got = [r.load() for r in refs]
    assert [v for v, _ in got] == [1, 2, 3, 4] and counter.n == 4
    assert os.getpid() not in {pid for _, pid in got}, "the calls ran on the cluster's workers"
    # Here, the same calls are hits on what the workers saved.
    again = client.map(plus_where, range(4), counter.file)
    assert [r.commit_hash for r in again] == [r.commit_hash for r in refs] and counter.n == 4


def _stacks(pid):
    """The native stacks of process `pid`'s threads, if gdb is here (for a hang's report)."""
    try:
        out = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(no stacks: {e})"
    return out.stdout[-20000:]


def _fork_children_while(client, counter, children, churn):
    """Forks `children` children, each computing `add(n, 1000)` with the parent's client, while
    `churn(stop)` keeps another thread of the parent busy; fails (with the hung child's native
    stacks) if a child hangs."""
    stop = threading.Event()
    t = threading.Thread(target=churn, args=(stop,))
    t.start()
    try:
        for n in range(children):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = 0 if client.submit(add, counter.file, n, 1000).load() == n + 1000 else 2
                    client.close()
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 20
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    stacks = _stacks(pid)
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    pytest.fail(f"child {n} hung; its threads:\n{stacks}")
                time.sleep(0.002)
            assert os.waitstatus_to_exitcode(status) == 0, f"child {n} failed"
    finally:
        stop.set()
        t.join()
    assert counter.n == children
    # What the children saved is in the vault: the parent hits it.
    assert [client.submit(add, counter.file, n, 1000).load() for n in range(children)] == [n + 1000 for n in range(children)]
    assert counter.n == children


def test_a_forked_child_uses_its_parents_client_while_the_parent_commits(client, counter):
    # The parent's commit thread is busy when the child is forked; the child must neither hang on
    # what that thread held nor lose its own results.
    def churn(stop):
        i = 0
        while not stop.is_set():
            client.submit(square, i)
            i += 1

    _fork_children_while(client, counter, 20, churn)


def test_a_forked_child_does_not_hang_while_the_parent_closes_vaults(client, counter, tmp_path):
    # Closing a vault closes its SQLite connections, often on a background thread (its checkpoint
    # thread ending): a child forked meanwhile must not inherit SQLite's locks held.
    def churn(stop):
        i = 0
        while not stop.is_set():
            with Client(store_dir=tmp_path / f"other-{i % 4}") as other:
                other.submit(square, i)
            gc.collect()
            i += 1

    _fork_children_while(client, counter, 150, churn)


def test_concurrent_threads_run_once(client, counter):
    def slow(file):
        bump(file)
        time.sleep(0.5)
        return "done"

    with cf.ThreadPoolExecutor(8) as ex:
        out = list(ex.map(lambda _: Client(store_dir=client.store_dir).submit(slow, counter.file).load(), range(8)))
    assert out == ["done"] * 8 and counter.n == 1


WORKER = """
import sys, time
sys.path.insert(0, {dir!r})
from taskvault import Client, TaskError
import tv_slow
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.005)
try:
    print(Client(store_dir={vault!r}).submit(getattr(tv_slow, sys.argv[2]), {count!r}).load())
except TaskError as e:
    print("TaskError:", str(e).splitlines()[0])
"""


@pytest.mark.parametrize("fn,expected", [("slow", "42"), ("slow_fail", "TaskError: slow_fail failed: RuntimeError: nope")])
def test_eight_processes_execute_once(tmp_path, vault_dir, counter, fn, expected):
    (tmp_path / "tv_slow.py").write_text(textwrap.dedent("""
        import time

        def slow(file):
            with open(file, "a") as f:
                f.write("x")
            time.sleep(1)
            return 42

        def slow_fail(file):
            with open(file, "a") as f:
                f.write("x")
            time.sleep(1)
            raise RuntimeError("nope")
    """))
    script = WORKER.format(dir=str(tmp_path), vault=vault_dir, count=counter.file)
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", script, start, fn], stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outs == [expected] * 8
    assert counter.n == 1


def big(n):
    return b"x" * n + os.urandom(16)


def flip_a_byte_of_the_only_blob(vault_dir):
    blobs = [p for p in pathlib.Path(vault_dir, "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1
    data = bytearray(blobs[0].read_bytes())
    data[len(data) // 2] ^= 1
    blobs[0].chmod(0o644)
    blobs[0].write_bytes(bytes(data))


def test_a_corrupt_blob_is_recomputed(client, vault_dir):
    r = client.submit(big, 200_000)
    flip_a_byte_of_the_only_blob(vault_dir)
    # This client keeps the result it saved, verified, in memory: it is never worse than the
    # blob, so it goes on serving it. Any other client (another process, say) reads the blob.
    assert client.submit(big, 200_000).commit_hash == r.commit_hash
    other = Client(store_dir=vault_dir)
    r2 = other.submit(big, 200_000)
    assert r2.commit_hash != r.commit_hash and len(r2.load()) == 200_016
    assert other.stats()["corrupt"] == 1


def noise(n, file):
    bump(file)
    return os.urandom(n)


class Tagged(bytes):
    pass


def shaped(kind):
    return {"bytearray": bytearray(b"ab"), "subclass": Tagged(b"ab"), "bytes": b"ab"}[kind]


@pytest.mark.parametrize("maker", [big, noise], ids=["compressible", "incompressible"])
def test_bytes_results_are_stored_as_they_are_and_large_ones_verified(client, vault_dir, counter, maker):
    args = (6_000_000,) if maker is big else (6_000_000, counter.file)
    r = client.submit(maker, *args)
    value = r.load()
    assert type(value) is bytes and len(value) == 6_000_016 - 16 * (maker is noise)
    assert client.show(r.commit_hash)["details"]["result"] == "bytes"
    # Another client reads it from the vault (too large to keep in memory) into the bytes it returns.
    other = Client(store_dir=vault_dir)
    again = other.submit(maker, *args)
    assert again.commit_hash == r.commit_hash and again.load() == value
    assert other.get(r.commit_hash) == value
    # A damaged blob is never served: a third client computes the result again.
    flip_a_byte_of_the_only_blob(vault_dir)
    third = Client(store_dir=vault_dir)
    fresh = third.submit(maker, *args)
    assert fresh.commit_hash != r.commit_hash and len(fresh.load()) == len(value)
    assert third.stats()["corrupt"] == 1


@pytest.mark.parametrize("kind", ["bytearray", "subclass", "bytes"])
def test_only_plain_bytes_skip_the_serializer(client, vault_dir, kind):
    r = client.submit(shaped, kind)
    got = Client(store_dir=vault_dir).submit(shaped, kind).load()
    assert type(got) is type(r.load()) and got == b"ab"
    assert (client.show(r.commit_hash)["details"].get("result") == "bytes") == (kind == "bytes")


def test_inspection_and_maintenance(client, counter, tmp_path):
    a = client.submit(add, counter.file, 1, 2, _tags={"exp": "v1"})
    b = client.submit(add, counter.file, 2, 2)
    assert [e["id"] for e in client.log()] == [b.commit_hash, a.commit_hash]
    assert [e["id"] for e in client.log(func_name="add", tags={"exp": "v1"})] == [a.commit_hash]
    assert client.get(a.commit_hash[:10]) == 3
    e = client.show(a.commit_hash)
    assert "def add(file, a, b)" in e["details"]["source"] and e["details"]["args"]["a"] == "1"
    d = client.diff(a.commit_hash, b.commit_hash)
    assert d["args_changed"] and not d["func_changed"] and d["output_changed"]
    s = client.stats()
    assert s["entries"] == 2 and s["hits"] == 0
    archive = tmp_path / "x.tar.zst"
    assert client.export(archive)["entries"] == 2
    other = Client(store_dir=str(tmp_path / "other"))
    assert other.import_archive(archive) == 2
    assert other.get(a.commit_hash) == 3
    assert client.rm(a.commit_hash)
    assert client.show(a.commit_hash) is None
    assert not client.rm(a.commit_hash)
    assert client.gc(older_than=dt.timedelta(0)) >= 0
    assert client.clear() >= 0
    assert client.stats()["entries"] == 0


def test_serializers(tmp_path):
    j = Client(store_dir=str(tmp_path / "j"), serializer=JsonSerializer())
    assert j.submit(square, 3).load() == 9
    safe = Client(store_dir=str(tmp_path / "s"), serializer=SafePickleSerializer())
    assert safe.submit(square, 4).load() == 16
    np = pytest.importorskip("numpy")
    arr = safe.submit(np.arange, 5).load()
    np.testing.assert_array_equal(arr, np.arange(5))
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="allowlist"):
        SafePickleSerializer().loads(pickle.dumps(Evil()))

    class Custom:
        name = "upper"

        def dumps(self, o):
            return o.upper().encode()

        def loads(self, b):
            return b.decode()

    c = Client(store_dir=str(tmp_path / "c"), serializer=Custom())
    assert c.submit(str, "abc").load() == "ABC"


def test_async_client(vault_dir, counter):
    async def main():
        async with AsyncClient(store_dir=vault_dir) as c:
            r = await c.submit(add, counter.file, 1, 2)
            assert await r.load() == 3
            r2 = await c.submit(add, counter.file, r, 1)
            assert await r2.load() == 4
            refs = await c.map(square, range(3))
            assert [await x.load() for x in refs] == [0, 1, 4]
            assert len(await c.log()) == 5
            assert (await c.stats())["entries"] == 5

    asyncio.run(main())
    assert counter.n == 2


def test_seed_sdk_functions(vault_dir):
    assert taskvault.get_cached_result("t", b"in", store_dir=vault_dir) == (None, False)
    taskvault.cache_result("t", b"in", b"out", store_dir=vault_dir)
    assert taskvault.get_cached_result("t", b"in", store_dir=vault_dir) == (b"out", True)


def test_the_cli_sees_python_runs(client, counter, cli, vault_dir):
    a = client.submit(add, counter.file, 1, 2)
    b = client.submit(add, counter.file, 1, 2, _force=True)
    env = {**os.environ, "TASKVAULT_DIR": vault_dir, "NO_COLOR": "1"}

    def tv(*args):
        return subprocess.run([cli, *args], env=env, capture_output=True, text=True, check=True).stdout

    log = json.loads(tv("log", "--json", "--all"))
    assert {e["id"] for e in log} == {a.commit_hash, b.commit_hash}
    show = tv("show", b.commit_hash[:12])
    assert "def add(file, a, b):" in show and "a = 1" in show and "b = 2" in show
    assert a.commit_hash[:12] in tv("history", b.commit_hash[:12])
    assert tv("diff", a.commit_hash[:12], b.commit_hash[:12])
    assert tv("get", b.commit_hash[:12], "-o", os.path.join(vault_dir, "..", "out.pickle")) == ""


def test_the_cli_diffs_python_runs_by_argument_and_source(client, cli, vault_dir, make_module):
    m1 = make_module("tv_diffed", "def scale(x, k=2):\n    y = x * k\n    return y\n")
    a = client.submit(m1.scale, 5)
    m2 = make_module("tv_diffed", "def scale(x, k=2):\n    y = x * k\n    return y + 1\n")
    b = client.submit(m2.scale, 5, k=3)
    client.close()  # commits the saves waiting for their batch
    env = {**os.environ, "TASKVAULT_DIR": vault_dir, "NO_COLOR": "1"}
    out = subprocess.run([cli, "diff", a.commit_hash[:12], b.commit_hash[:12]], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "argument k:\n  - 2\n  + 3" in out
    assert "argument x" not in out, "equal arguments are not listed"
    assert "-    return y\n" in out and "+    return y + 1\n" in out and "     y = x * k" in out
    js = json.loads(subprocess.run([cli, "diff", "--json", a.commit_hash, b.commit_hash], env=env,
                                   capture_output=True, text=True, check=True).stdout)
    fields = {x["field"] for x in js["differences"]}
    assert {"argument k", "source", "key"} <= fields and "function" not in fields


def test_store_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKVAULT_DIR", str(tmp_path / "env-vault"))
    assert Client().store_dir == tmp_path / "env-vault"


def test_a_result_reaches_other_processes_at_once_and_removals_reach_this_one(tmp_path, vault_dir, counter, cli):
    # Small results are committed in batches shortly after submit returns; another process
    # asking right away must still find the result (waiting for the commit), not run it again.
    (tmp_path / "tv_quick.py").write_text(textwrap.dedent("""
        def quick(file, x):
            with open(file, "a") as f:
                f.write("x")
            return x * 2
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        import tv_quick
        client = Client(store_dir=vault_dir)
        script = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import tv_quick; from taskvault import Client;"
                  f"print(Client(store_dir={vault_dir!r}).submit(tv_quick.quick, {counter.file!r}, 21).load())")
        for _ in range(3):
            client.submit(tv_quick.quick, counter.file, 21, _force=True)
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            assert out.stdout.strip() == "42"
        assert counter.n == 3, "the other process never ran it"
        # This client serves the result from memory; a removal by the CLI reaches it at once.
        assert client.submit(tv_quick.quick, counter.file, 21).load() == 42 and counter.n == 3
        env = {**os.environ, "TASKVAULT_DIR": vault_dir}
        subprocess.run([cli, "clear", "--yes"], env=env, check=True, capture_output=True)
        assert client.submit(tv_quick.quick, counter.file, 21).load() == 42 and counter.n == 4
        # Hits counted in the other process reached the vault when it exited.
        assert client.stats()["hits"] >= 3
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tv_quick", None)
