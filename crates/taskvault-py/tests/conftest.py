import os
import sys
import textwrap

import pytest

from taskvault import Client


@pytest.fixture
def vault_dir(tmp_path):
    return str(tmp_path / "vault")


@pytest.fixture
def client(vault_dir):
    with Client(store_dir=vault_dir) as c:
        yield c


@pytest.fixture
def counter(tmp_path):
    """A call counter kept in a file (a global counter would itself be part of the key)."""
    path = tmp_path / "calls"

    class Counter:
        file = str(path)

        @property
        def n(self):
            return len(path.read_text()) if path.exists() else 0

    return Counter()


def bump(file):
    with open(file, "a") as f:
        f.write("x")


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """Writes a module into a fresh directory on sys.path and imports it."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name, source):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield make


@pytest.fixture(scope="session")
def cli():
    """The taskvault binary built from this repository (scripts/test.sh builds it)."""
    path = os.environ.get("TASKVAULT_BIN") or os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "target", "debug", "taskvault"
    )
    if not os.path.exists(path):
        pytest.fail(f"taskvault binary not found at {path}; build it with `cargo build -p taskvault-cli`")
    return os.path.abspath(path)
