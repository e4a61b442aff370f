"""What the shared-store tests (test_postgres.py, test_redis.py) check alike."""

import pathlib
import re

from taskvault import Client


def cube(n):
    return n ** 3


def check_readme_store_example(scheme, store, tmp_path, monkeypatch):
    """The README's one ``client = Client(store="<scheme>://...")`` line, run as written but on
    the test server (``store``), opens a vault that another vault directory on the same store
    shares: the example's result is the other's hit."""
    readme = (pathlib.Path(__file__).resolve().parents[3] / "README.md").read_text()
    lines = re.findall(rf'^client = Client\(store="{scheme}://[^"]*"\).*$', readme, flags=re.M)
    assert len(lines) == 1, f"the README's Client(store=\"{scheme}://...\") example is gone or doubled"
    source = re.sub(rf'"{scheme}://[^"]*"', repr(store), lines[0])
    monkeypatch.chdir(tmp_path)
    ns = {"Client": Client}
    exec(compile(source, "README.md", "exec"), ns)
    with ns["client"] as c:
        assert c.submit(cube, 3).load() == 27
    with Client(tmp_path / "elsewhere", store=store) as other:
        assert other.submit(cube, 3).load() == 27
        s = other.stats()
        assert s["entries"] == 1 and s["hits"] >= 1, s
