"""The README's Python examples, run as written: the names they leave to the reader
(`expensive_transform`, `data`, `train`, `process_chunk`) are supplied, and counted, so the
second run of each example must be served from the vault."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


def python_blocks():
    """The README's whole examples on the embedded vault: the blocks that import taskvault. A
    one-line fragment such as `Client(store="postgres://...")` needs a server; test_postgres.py
    runs that one against the real PostgreSQL."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    return [b for b in blocks if "from taskvault import" in b]


def test_the_readme_has_python_examples():
    assert python_blocks(), "no ```python block in README.md"


@pytest.mark.parametrize("source", python_blocks())
def test_python_example_runs_and_its_second_run_is_served_from_the_vault(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("TASKVAULT_DIR", "TASKVAULT_CONFIG", "CASHET_DIR"):
        monkeypatch.delenv(var, raising=False)
    calls = tmp_path / "calls"

    # Module-level helpers, as a user's own would be; each call leaves a mark in `calls`.
    helpers = tmp_path / "readme_helpers.py"
    helpers.write_text(
        f"CALLS = {str(calls)!r}\n"
        "def mark(what):\n"
        "    with open(CALLS, 'a') as f:\n"
        "        f.write(what + '\\n')\n"
        "def expensive_transform(data, scale=1.0):\n"
        "    mark('transform')\n"
        "    return [x * scale for x in data]\n"
        "def train(features, lr):\n"
        "    mark('train')\n"
        "    return {'features': features, 'lr': lr}\n"
        "def process_chunk(i, source):\n"
        "    mark('chunk')\n"
        "    return (source, i * i)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("readme_helpers", None)  # another example's helpers mark another directory
    h = importlib.import_module("readme_helpers")

    def run():
        ns = {"expensive_transform": h.expensive_transform, "data": [1.0, 2.0, 3.0], "train": h.train,
              "process_chunk": h.process_chunk, "__name__": "readme_example"}
        exec(compile(source, "README.md", "exec"), ns)
        return ns

    first = run()
    ran = calls.read_text().splitlines()
    assert ran.count("transform") == 1 and ran.count("train") == 1 and ran.count("chunk") == 100
    assert first["ref"].load() == [2.0, 4.0, 6.0]
    assert first["refs"][1].load() == {"features": None, "lr": 0.01}
    assert [c.load() for c in first["chunks"]][:3] == [("data.parquet", 0), ("data.parquet", 1), ("data.parquet", 4)]
    second = run()
    assert calls.read_text().splitlines() == ran, "the second run computes nothing"
    assert second["ref"].commit_hash == first["ref"].commit_hash
    assert [r.commit_hash for r in second["refs"]] == [r.commit_hash for r in first["refs"]]
    # The vault is the one `taskvault` uses here.
    assert (tmp_path / ".taskvault" / "cache" / "cache.db").exists()
