"""cashet's public API on TaskVault: code written for cashet runs with only its import changed.

Each test states, in our own words, what a cashet user relies on. Where TaskVault differs on
purpose (closure values are part of the key; see the README's "Moving from cashet"), the tests
pass what the function depends on as arguments.
"""

import asyncio
import datetime as dt
import json
import pathlib
import subprocess
import time

import pytest

from taskvault import (
    AsyncClient,
    Client,
    Commit,
    ImportResult,
    ObjectRef,
    ResultRef,
    TaskDef,
    TaskError,
    TaskRef,
    TaskStatus,
)
from conftest import bump


def double(x):
    return x * 2


def add(a, b):
    return a + b


def explode(message):
    raise ValueError(message)


def big(x):
    return b"x" * 100


def counted(file, x):
    bump(file)
    return x + 1


class Holder:
    def __init__(self, ref):
        self.ref = ref
        self.again = ref


def total(values):
    return sum(v.load() if isinstance(v, ResultRef) else v for v in values)


def held(h):
    return h.ref.load() + h.again.load()


def test_runs_are_commits_with_cashet_fields(client):
    ref = client.submit(double, 21, _tags={"exp": "a"}, _retries=2, _ttl=3600)
    c = client.show(ref.commit_hash)
    assert isinstance(c, Commit) and isinstance(c.task_def, TaskDef)
    assert c.hash == ref.commit_hash and c.short_hash() == ref.commit_hash[:12]
    assert c.status is TaskStatus.COMPLETED and c.status.value == "completed"
    assert c.task_def.func_name == "double"
    assert "return x * 2" in c.task_def.func_source
    assert json.loads(c.task_def.args_snapshot) == {"x": "21"}
    assert c.task_def.retries == 2 and c.task_def.ttl == dt.timedelta(hours=1)
    assert c.task_def.tags == c.tags == {"exp": "a"}
    assert c.output_ref == ObjectRef(ref.hash, ref.size) and c.output_ref.hash == ref.hash
    assert c.parent_hash is None and c.input_refs == [] and c.error is None
    assert isinstance(c.created_at, dt.datetime) and c.created_at.tzinfo is not None
    assert c.expires_at - c.created_at == dt.timedelta(hours=1)
    assert repr(c) == f"Commit({ref.commit_hash[:12]}, double, status=completed)"
    # The entry document stays reachable from the same object.
    assert c.entry["key"] == c["key"] and c["details"]["module"] == __name__
    # An attribute that does not exist is an error, not None.
    with pytest.raises(AttributeError):
        c.no_such_field
    assert [x.hash for x in client.log()] == [c.hash]
    assert [x.hash for x in client.history(c.hash)] == [c.hash]


def test_parents_are_recorded_once_including_refs_inside_objects(client):
    a = client.submit(double, 1)
    b = client.submit(total, [a, a, 5])
    assert b.load() == 9
    run = client.show(b.commit_hash)
    assert [r.hash for r in run.input_refs] == [a.hash]
    assert run["details"]["parents"] == [a.commit_hash]
    c = client.submit(held, Holder(a))
    assert c.load() == 4
    assert [r.hash for r in client.show(c.commit_hash).input_refs] == [a.hash]


def test_not_found_semantics(client):
    r = client.submit(double, 1)
    for missing in ("", "f" * 64, "0123abcd", "not-hex"):
        assert client.show(missing) is None
        assert client.rm(missing) is False
        assert client.history(missing) == []
    with pytest.raises(KeyError, match="not found"):
        client.diff(r.commit_hash, "f" * 64)
    with pytest.raises(KeyError):
        client.get("f" * 64)
    assert client.rm(r.commit_hash) is True
    assert client.show(r.commit_hash) is None  # removed
    assert client.rm(r.commit_hash) is False


def test_an_ambiguous_prefix_is_a_value_error(client):
    hashes = [client.submit(double, i).commit_hash for i in range(40)]
    first = next(h[0] for h in hashes if sum(x[0] == h[0] for x in hashes) > 1)
    with pytest.raises(ValueError, match="Ambiguous prefix"):
        client.show(first)
    with pytest.raises(ValueError):
        client.rm(first)


def test_task_error_is_a_runtime_error_and_failed_runs_are_recorded(client, counter, cli, vault_dir):
    with pytest.raises(RuntimeError, match="boom") as caught:
        client.submit(explode, "boom")
    assert isinstance(caught.value, TaskError)
    failed = client.show(caught.value.commit_hash)
    assert failed.status is TaskStatus.FAILED and failed.output_ref is None
    assert "ValueError: boom" in failed.error and "Traceback" in failed.error
    assert [c.hash for c in client.log(status=TaskStatus.FAILED)] == [failed.hash]
    assert [c.hash for c in client.log(status="failed")] == [failed.hash]
    assert client.log(status="completed") == []
    assert failed.hash in [c.hash for c in client.log()]
    with pytest.raises(ValueError, match="has no result"):
        client.get(failed.hash)
    # Never served: the next call runs again (and fails again).
    with pytest.raises(TaskError):
        client.submit(explode, "boom")
    assert len(client.log(status="failed")) == 2
    with pytest.raises(ValueError, match="Invalid status"):
        client.log(status="nope")
    # The CLI shows it too.
    out = subprocess.run([cli, "--dir", vault_dir, "log", "--status", "failed"], capture_output=True, text=True)
    assert out.returncode == 0 and failed.hash[:12] in out.stdout and "failed" in out.stdout
    shown = subprocess.run([cli, "--dir", vault_dir, "--json", "show", failed.hash], capture_output=True, text=True)
    assert json.loads(shown.stdout)["details"]["error"].startswith("explode failed: ValueError: boom")
    human = subprocess.run([cli, "--dir", vault_dir, "show", failed.hash], capture_output=True, text=True).stdout
    assert "status:     failed" in human and "error:\n  explode failed: ValueError: boom" in human


def test_cache_false_runs_are_linked_as_history(client, counter):
    a = client.submit(counted, counter.file, 1, _cache=False)
    b = client.submit(counted, counter.file, 1, _cache=False)
    c = client.submit(counted, counter.file, 1, _cache=False)
    assert counter.n == 3
    runs = client.history(c.commit_hash)
    assert [r.hash for r in runs] == [a.commit_hash, b.commit_hash, c.commit_hash]
    assert [r.parent_hash for r in runs] == [None, a.commit_hash, b.commit_hash]
    assert [r.task_def.cache for r in runs] == [False, False, False]


def test_fractional_ttls_expire(client, counter):
    client.submit(counted, counter.file, 5, _ttl=0.05)
    client.submit(counted, counter.file, 5, _ttl=0.05)
    assert counter.n == 1
    time.sleep(0.1)
    client.submit(counted, counter.file, 5, _ttl=0.05)
    assert counter.n == 2


def test_submit_many_dict_form_and_batch_options(client, counter):
    refs = client.submit_many(
        {"base": (double, (5,)), "sum": (add, (TaskRef("base"), 1)), "alone": (counted, (counter.file, 0))},
        _tags={"batch": "1"},
    )
    assert set(refs) == {"base", "sum", "alone"}
    assert refs["sum"].load() == 11
    assert all(client.show(r.commit_hash).tags == {"batch": "1"} for r in refs.values())
    again = client.submit_many({"alone": (counted, (counter.file, 0))}, _force=True)
    assert counter.n == 2 and again["alone"].commit_hash != refs["alone"].commit_hash
    assert client.submit_many([(double, (1,)), (add, (TaskRef(0), 2))])[1].load() == 4
    with pytest.raises(TypeError, match="args as tuple"):
        client.submit_many([(double, [1])])
    with pytest.raises(TypeError, match="expected callable"):
        client.submit_many(["double"])
    with pytest.raises(ValueError, match="not found"):
        client.submit_many({"a": (double, (TaskRef("b"),))})
    with pytest.raises(ValueError, match="max_workers"):
        client.submit_many([(double, (1,))], max_workers=0)
    with pytest.raises(ValueError, match="max_workers"):
        Client(max_workers=0)


def test_stats_carry_cashet_keys(client):
    client.submit(double, 1)
    client.submit(add, 1, 1)  # the same output bytes, but small: each run keeps its own
    client.submit(big, 1)
    client.submit(big, 1.0)  # the same 100 output bytes: one object
    with pytest.raises(TaskError):
        client.submit(explode, "x")
    s = client.stats()
    assert s["total_commits"] == 5 and s["completed_commits"] == 4
    assert s["stored_objects"] == 3 and s["inline_objects"] + s["blob_objects"] == 3
    assert s["disk_bytes"] == s["inline_bytes"] + s["blob_bytes"] > 0
    assert s["entries"] == 4  # TaskVault's own keys stay


def test_gc_counts_what_it_removed_and_import_returns_an_import_result(client, tmp_path):
    client.submit(double, 1)
    client.submit(double, 2)
    archive = tmp_path / "a.tar.zst"
    client.export(archive)
    other = Client(tmp_path / "other")
    got = other.import_archive(archive)
    assert isinstance(got, ImportResult) and got == 2 and (got.imported, got.skipped) == (2, 0)
    again = other.import_archive(archive)
    assert again == 0 and again.skipped == 2
    assert client.gc(older_than=dt.timedelta(days=1)) == 0
    assert client.gc(older_than=dt.timedelta(0)) == 2
    assert client.stats()["total_commits"] == 0


def test_diff_reports_both_runs_and_small_outputs(client):
    a, b = client.submit(double, 1), client.submit(double, 2)
    d = client.diff(a.commit_hash, b.commit_hash)
    assert d["a"]["hash"] == a.commit_hash[:12] and d["b"]["func"] == "double"
    assert d["args_changed"] and not d["func_changed"]
    assert d["output_changed"] is True and (d["a_output_repr"], d["b_output_repr"]) == ("2", "4")
    assert json.loads(d["args_diff"]["a_args"]) == {"x": "1"}
    assert client.diff(a.commit_hash, a.commit_hash)["output_changed"] is False


def test_store_dir_is_a_path_and_cashet_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("TASKVAULT_DIR", raising=False)
    monkeypatch.setenv("CASHET_DIR", str(tmp_path / "from-cashet"))
    c = Client()
    assert isinstance(c.store_dir, pathlib.Path) and c.store_dir == tmp_path / "from-cashet"
    monkeypatch.setenv("TASKVAULT_DIR", str(tmp_path / "ours"))
    assert Client().store_dir == tmp_path / "ours"


def test_task_decorator_registers_and_keeps_the_functions_identity(client):
    @client.task(name="renamed")
    def documented(x):
        """Doubles."""
        return x * 2

    assert documented.__name__ == "documented" and documented.__doc__ == "Doubles."
    assert client._registered_tasks["renamed"] is documented._cashet_wrapped_func
    assert documented(4).load() == 8
    assert client.log(func_name="renamed")[0].task_def.func_name == "renamed"


async def fetch(x):
    await asyncio.sleep(0)
    return {"x": x, "loop": id(asyncio.get_running_loop())}


def test_async_functions_run_on_the_callers_loop(vault_dir):
    async def main():
        ac = AsyncClient(vault_dir)
        loop = id(asyncio.get_running_loop())
        r = await ac.submit(fetch, 3)
        assert await r.load() == {"x": 3, "loop": loop}
        again = await ac.submit(fetch, 3)
        assert again.commit_hash == r.commit_hash  # cached

        @ac.task
        async def shout(word):
            """Louder."""
            return word.upper()

        assert shout.__name__ == "shout" and shout.__doc__ == "Louder."
        ref = await shout("hi")
        assert await ref.load() == "HI"
        assert await (await ac.submit(shout, "hi")).load() == "HI"
        assert (await ac.show(ref.commit_hash)).task_def.func_name.endswith("<locals>.shout")

        async def fails():
            raise KeyError("gone")

        with pytest.raises(TaskError, match="gone"):
            await ac.submit(fails)
        assert len(await ac.log(status="failed")) == 1
        refs = await ac.map(fetch, [1, 2, 1])
        assert [(await x.load())["x"] for x in refs] == [1, 2, 1]

    asyncio.run(main())


def test_a_sync_client_runs_async_functions_too(client):
    assert client.submit(fetch, 5).load()["x"] == 5
