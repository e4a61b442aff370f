"""A Python vault whose metadata lives in the real PostgreSQL server on loopback
(TASKVAULT_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/test), each test in a schema
of its own: clients on different vault directories, in different processes, share results.
Skipped, with a line saying so, when the server does not answer (.ci/run starts it;
TASKVAULT_REQUIRE_TOOLS makes it a failure)."""

import os
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest

from taskvault import Client, PickleSerializer, SafePickleSerializer

from shared_store import check_readme_store_example

SERVER = os.environ.get("TASKVAULT_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")


@pytest.fixture
def store():
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        msg = "PostgreSQL does not answer on 127.0.0.1:5432"
        if os.environ.get("TASKVAULT_REQUIRE_TOOLS"):
            pytest.fail(msg)
        pytest.skip(msg + "; .ci/run starts it")
    schema = f"tvpy_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield f"{SERVER}?schema={schema}"
    subprocess.run(["psql", SERVER, "-q", "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                   env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning"}, check=False,
                   capture_output=True)


CHILD = textwrap.dedent("""
    import sys
    from taskvault import Client

    def square(n, marker):
        with open(marker, "a") as f:
            f.write("x")
        return n * n

    with Client(sys.argv[1], store=sys.argv[2]) as c:
        assert c.submit(square, 12, sys.argv[3]).load() == 144
""")


def test_processes_on_different_vault_directories_share_results(store, tmp_path):
    marker = tmp_path / "computed"
    for name in ("machine-a", "machine-b", "machine-c"):
        subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / name), store, str(marker)], check=True)
    assert marker.read_text() == "x", "computed more than once"
    # This process, on yet another directory, sees the one entry and the others' hits.
    with Client(tmp_path / "machine-d", store=store) as c:
        s = c.stats()
        assert s["entries"] == 1 and s["hits"] >= 2, s
        assert len(c.log()) == 1


def test_a_shared_store_defaults_to_the_safe_unpickler(store, tmp_path):
    with Client(tmp_path / "v", store=store) as c:
        assert isinstance(c._serializer, SafePickleSerializer)
        assert c._vault.store_url.startswith("postgres://postgres@127.0.0.1:5432/test")
    with Client(tmp_path / "w", store=store, serializer=PickleSerializer()) as c:
        assert isinstance(c._serializer, PickleSerializer)
    with Client(tmp_path / "local") as c:
        assert isinstance(c._serializer, PickleSerializer)


def test_a_store_that_is_not_postgres_is_refused(tmp_path):
    with pytest.raises(ValueError, match="PostgreSQL URL"):
        Client(tmp_path / "v", store="mysql://u:secret@db/x")
    with pytest.raises(TypeError):
        Client(tmp_path / "v", store=42)


def test_the_readme_store_example_opens_a_shared_vault(store, tmp_path, monkeypatch):
    check_readme_store_example("postgres", store, tmp_path, monkeypatch)
