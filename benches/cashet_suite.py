"""Classifies cashet's own tests and reports how they fare against TaskVault (run by
benches/cashet_suite.sh, inside its virtual environment).

    python cashet_suite.py classify TESTS_DIR           # the classification, as JSON lines
    python cashet_suite.py report TESTS_DIR JUNIT_XML   # pass counts and every failure

A test is *excluded* when it inspects what TaskVault does not reproduce on purpose: cashet's
private modules and objects (its store object, executors, ``cashet.dag`` / ``cashet.hashing``
helpers), its SQLite schema, its Redis store and key layout, its HTTP server or its click CLI.
Every other test is *public behaviour*, and counts. A failing public test whose function keeps a
counter in a closure (``nonlocal``) and expects a cached call not to run again is marked as the
documented difference: TaskVault keys closure values, so the changed counter is a new key.
"""

from __future__ import annotations

import ast
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

EXCLUDED_FILES = {
    "test_server.py": "cashet's HTTP server",
    "test_cli.py": "cashet's click CLI",
    "test_redis_store.py": "cashet's Redis store and key layout",
    "test_async_redis_store.py": "cashet's Redis store and key layout",
    "test_async_sqlite_store.py": "cashet's SQLite store",
}
#: Strings that only cashet's own on-disk and archive layouts have: the directory its blobs
#: live in, and the prefix of its archive members.
LAYOUT_DIR = "str:objects"
LAYOUT_ARCHIVE = "cashet-export/"
SQLITE_NAMES = {"SQLiteStore", "AsyncSQLiteStore", "sqlite3", "_sqlite_core", "_connect", "_build_base_db"}
REDIS_NAMES = {"RedisStore", "AsyncRedisStore", "redis_test_url", "access_key", "commit_key", "fp_key"}
PRIVATE_NAMES = {
    "build_commit", "resolve_input_refs", "_ast_canonical", "hash_args", "hash_function", "build_task_def",
    "LocalExecutor", "dag", "store", "_store", "_inner", "_ref", "_client_base", "_locks", "_batch",
    "_serializer", "_pickle_warning_issued", "make_commit", "make_task_def", "StorageTier",
}


#: Failing public tests that are differences on purpose (the README's "Moving from cashet").
KNOWN = {
    "test_hashing.py::TestHashingEdgeCases::test_closure_values_not_in_cache_key":
        "asserts that closure values are left out of the key; TaskVault keys them, because they change results",
    "test_serializer.py::TestSafePickleSerializer::test_rejects_unknown_class":
        "TaskVault's SafePickleSerializer allows pathlib paths (plain values whose unpickling runs no other code)",
    "test_store.py::TestGarbageCollection::test_gc_removes_ttl_expired_commits":
        "freezegun moves Python's clock; expiry is decided by the engine, on the system clock",
}


def _names(node: ast.AST) -> set[str]:
    """Names, attributes, imported modules (each dotted part) and string constants used."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.alias):
            out.add(n.name.split(".")[-1])
        elif isinstance(n, ast.ImportFrom) and n.module:
            out.update(n.module.split("."))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.add("str:" + n.value)
    return out


def _fixtures(tree: ast.Module) -> dict[str, ast.AST]:
    out = {}
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in n.decorator_list:
                if "fixture" in ast.unparse(d):
                    out[n.name] = n
    return out


def classify(tests: Path) -> dict[str, dict]:
    """{"file::Class::test": {"excluded": reason or None, "closure_counter": bool}}"""
    out: dict[str, dict] = {}
    for f in sorted(tests.glob("test_*.py")):
        tree = ast.parse(f.read_text())
        fixtures = _fixtures(tree)
        helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("test")}
        for owner in [tree, *[n for n in tree.body if isinstance(n, ast.ClassDef)]]:
            prefix = f.name if owner is tree else f"{f.name}::{owner.name}"
            for fn in owner.body:
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not fn.name.startswith("test"):
                    continue
                names = _names(fn)
                for arg in fn.args.args:
                    if arg.arg in fixtures:
                        names |= _names(fixtures[arg.arg])
                for name in list(names):
                    if name in helpers:  # module-level helpers the test calls
                        names |= _names(helpers[name])
                marks = {ast.unparse(d) for d in fn.decorator_list}
                reason = EXCLUDED_FILES.get(f.name)
                if reason is None and names & SQLITE_NAMES:
                    reason = "cashet's SQLite store and schema"
                if reason is None and (names & REDIS_NAMES or any("redis" in m for m in marks)):
                    reason = "cashet's Redis store and key layout"
                if reason is None and (LAYOUT_DIR in names or any(LAYOUT_ARCHIVE in s for s in names if s.startswith("str:"))):
                    reason = "cashet's on-disk and archive layouts (the test reads or rewrites cashet's files)"
                if reason is None and names & PRIVATE_NAMES:
                    reason = "cashet's private modules and objects (" + ", ".join(sorted(names & PRIVATE_NAMES)) + ")"
                counter = any(isinstance(n, ast.Nonlocal) for n in ast.walk(fn))
                out[f"{prefix}::{fn.name}"] = {"excluded": reason, "closure_counter": counter}
    return out


def _base(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


def report(tests: Path, junit: Path) -> int:
    kinds = classify(tests)
    results: list[tuple[str, str, str]] = []  # (nodeid, outcome, message)
    for case in ET.parse(junit).getroot().iter("testcase"):
        cls = case.get("classname", "")
        parts = cls.split(".")
        # classname is "tests.test_core.TestX" or "tests.test_core"
        mod = next((p for p in parts if p.startswith("test_")), "")
        rest = parts[parts.index(mod) + 1:] if mod else []
        nodeid = "::".join([f"{mod}.py", *rest, case.get("name", "")])
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "").splitlines()[0][:160] if child.get("message") else ""
            elif child.tag == "skipped":
                outcome, message = "skipped", child.get("message") or ""
        results.append((nodeid, outcome, message))
    total = len(results)
    by_reason: dict[str, int] = {}
    public = []
    for nodeid, outcome, message in results:
        kind = kinds.get(_base(nodeid), {"excluded": None, "closure_counter": False})
        if kind["excluded"]:
            key = kind["excluded"].split(" (")[0]
            by_reason[key] = by_reason.get(key, 0) + 1
        else:
            public.append((nodeid, outcome, message, kind["closure_counter"]))
    passed = [p for p in public if p[1] == "passed"]
    skipped = [p for p in public if p[1] == "skipped"]
    failed = [p for p in public if p[1] == "failed"]
    print(f"cashet 0.5.0's suite against TaskVault: {total} tests")
    for reason, n in sorted(by_reason.items()):
        print(f"  excluded, {reason}: {n}")
    counted = len(public) - len(skipped)
    print(f"  public behaviour: {len(public)} ({len(skipped)} skipped by cashet's own conditions)")
    pct = 100.0 * len(passed) / counted if counted else 0.0
    print(f"PASSED {len(passed)} of {counted} public-behaviour tests ({pct:.1f}%)")
    if failed:
        print("failures:")
        for nodeid, _, message, counter in failed:
            if _base(nodeid) in KNOWN:
                why = f" [{KNOWN[_base(nodeid)]}]"
            elif counter:
                why = " [closure counter: the test counts calls in a `nonlocal` cell; TaskVault keys closure values, so each changed count is a new key]"
            else:
                why = " [not explained yet]"
            print(f"  {nodeid}{why}: {message}")
    return 0


def main() -> int:
    if sys.argv[1] == "classify":
        for k, v in classify(Path(sys.argv[2])).items():
            print(json.dumps({"test": k, **v}))
        return 0
    return report(Path(sys.argv[2]), Path(sys.argv[3]))


if __name__ == "__main__":
    sys.exit(main())
