"""Code and argument identity: what makes two calls share an entry, and what does not."""

import datetime
import decimal
import enum
import fractions
import functools
import pathlib
import re
import subprocess
import uuid
import sys
import warnings

import pytest

from taskvault import Client, KeyWarning, Unencodable
from conftest import bump


def twice(file, x):
    bump(file)
    return x * 2


def test_equal_calls_share_an_entry(client, counter):
    assert client.submit(twice, counter.file, 21).load() == 42
    assert client.submit(twice, counter.file, 21).load() == 42
    assert counter.n == 1
    assert client.submit(twice, counter.file, 22).load() == 44
    assert counter.n == 2


def defaults(file, a, b=2):
    bump(file)
    return a + b


def test_calls_are_bound_to_the_signature_with_defaults(client, counter):
    r1 = client.submit(defaults, counter.file, 1)
    r2 = client.submit(defaults, counter.file, 1, 2)
    r3 = client.submit(defaults, counter.file, b=2, a=1)
    assert r1.commit_hash == r2.commit_hash == r3.commit_hash
    assert counter.n == 1
    client.submit(defaults, counter.file, 1, b=3)
    assert counter.n == 2


def ident(x):
    return x


def ignore(x):
    return None


class Color(enum.Enum):
    RED = 1
    GREEN = 2


@pytest.mark.parametrize(
    "a,b",
    [
        (1, 1.0),
        (1, True),
        (0, False),
        ("1", 1),
        ([1, 2], (1, 2)),
        (b"x", "x"),
        (b"x", bytearray(b"x")),
        ({1: 2}, {1: 3}),
        ({1, 2}, frozenset({1, 2})),
        (None, 0),
        (0.0, -0.0),
        ([[1], 2], [1, [2]]),
        (range(2), range(3)),
        (range(0, 4, 2), range(0, 4, 1)),
        (range(2), [0, 1]),
        (slice(1, 2), slice(1, 3)),
        (slice(None, 2), slice(0, 2)),
        (Ellipsis, None),
        (NotImplemented, None),
        (Ellipsis, NotImplemented),
        (1j, 2j),
        (complex(1, 0), 1.0),
        (memoryview(b"ab"), memoryview(b"ac")),
        (memoryview(b"abcd"), memoryview(b"abcd").cast("H")),
        (re.compile("a+"), re.compile("a*")),
        (re.compile("a"), re.compile("a", re.I)),
        (re.compile("a"), re.compile(b"a")),
        (int, float),
        (Color.RED, Color.GREEN),
        (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
        (fractions.Fraction(1, 2), fractions.Fraction(1, 3)),
        (uuid.UUID(int=1), uuid.UUID(int=2)),
        (pathlib.PurePosixPath("a"), pathlib.PurePosixPath("b")),
        (pathlib.PurePosixPath("a"), "a"),
        (datetime.date(2020, 1, 1), datetime.date(2020, 1, 2)),
        (datetime.timedelta(seconds=1), datetime.timedelta(seconds=2)),
        ("ab", ["a", "b"]),
    ],
)
def test_unequal_values_never_collide(client, a, b):
    assert client.submit(ignore, a).commit_hash != client.submit(ignore, b).commit_hash


def test_sets_and_dicts_are_order_independent(client):
    assert client.submit(ident, {3, 1, 2}).commit_hash == client.submit(ident, {1, 2, 3}).commit_hash
    d1 = {"a": 1, "b": 2}
    d2 = {"b": 2, "a": 1}
    assert client.submit(ident, d1).commit_hash == client.submit(ident, d2).commit_hash


def test_numpy_arrays_differing_in_one_middle_element_miss(client):
    np = pytest.importorskip("numpy")
    a = np.arange(1_000_000, dtype=np.float64)
    b = a.copy()
    b[500_000] += 1
    ra, rb = client.submit(ident, a), client.submit(ident, b)
    assert ra.commit_hash != rb.commit_hash
    assert client.submit(ident, a.copy()).commit_hash == ra.commit_hash
    # Same bytes, other dtype or shape: other arrays.
    assert client.submit(ident, a.view(np.int64)).commit_hash != ra.commit_hash
    assert client.submit(ident, a.reshape(1000, 1000)).commit_hash != ra.commit_hash
    np.testing.assert_array_equal(rb.load(), b)


def test_dataframes_by_content_and_in_place_edits_miss(client):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    r1 = client.submit(ident, df)
    assert client.submit(ident, df.copy()).commit_hash == r1.commit_hash
    df.loc[1, "x"] = 20
    assert client.submit(ident, df).commit_hash != r1.commit_hash
    other_index = pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "c"]}, index=[5, 6, 7])
    assert client.submit(ident, other_index).commit_hash != r1.commit_hash
    as_float = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": ["a", "b", "c"]})
    assert client.submit(ident, as_float).commit_hash != r1.commit_hash
    s = pd.Series([1, 2, 3], name="x")
    assert client.submit(ident, s).commit_hash != client.submit(ident, s.rename("z")).commit_hash


def test_numpy_and_pandas_are_not_imported_by_encoding():
    code = (
        "import sys, tempfile; from taskvault import Client\n"
        "c = Client(store_dir=tempfile.mkdtemp())\n"
        "c.submit(len, [1, 2, {3: 'x'}])\n"
        "assert 'numpy' not in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class M:
    def __init__(self, k):
        self.k = k

    def mul(self, x):
        return self.k * x


def test_bound_methods_include_their_objects_state(client):
    assert client.submit(M(2).mul, 10).load() == 20
    assert client.submit(M(3).mul, 10).load() == 30
    assert client.submit(M(2).mul, 10).commit_hash == client.submit(M(2).mul, 10).commit_hash


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


class Other:
    def __init__(self, x, y):
        self.x, self.y = x, y


def test_objects_by_class_and_state(client):
    assert client.submit(ident, Point(1, 2)).commit_hash == client.submit(ident, Point(1, 2)).commit_hash
    assert client.submit(ident, Point(1, 2)).commit_hash != client.submit(ident, Point(1, 3)).commit_hash
    assert client.submit(ident, Point(1, 2)).commit_hash != client.submit(ident, Other(1, 2)).commit_hash


def type_name(file, obj):
    bump(file)
    return type(obj).__name__


def test_unencodable_arguments_raise_or_skip(client, counter):
    gen = (i for i in range(3))
    with pytest.raises(Unencodable, match="generator"):
        client.submit(ident, gen)
    with pytest.warns(UserWarning, match="not cached"):
        r = client.submit(type_name, counter.file, gen, _on_unencodable="skip")
    assert r.load() == "generator"
    client.submit(type_name, counter.file, gen, _on_unencodable="skip")
    assert counter.n == 2  # never cached


def test_locks_count_by_type_so_guarded_functions_stay_cacheable(client, counter):
    import threading

    lock, rlock = threading.Lock(), threading.RLock()

    def guarded(file, x):
        with lock, rlock:
            bump(file)
            return x * 2

    assert client.submit(guarded, counter.file, 4).load() == 8
    with lock:  # held or not, the same key
        assert client.submit(guarded, counter.file, 4).load() == 8
    assert counter.n == 1
    assert client.submit(ignore, lock).commit_hash != client.submit(ignore, rlock).commit_hash


def test_self_containing_containers_are_keyed_by_back_references(client):
    a = []
    a.append(a)
    b = []
    b.append(b)
    assert client.submit(len, a).commit_hash == client.submit(len, b).commit_hash
    # The same shape one level down is another value.
    c = [[]]
    c[0].append(c)
    assert client.submit(len, c).commit_hash != client.submit(len, a).commit_hash
    d = {"k": 1}
    d["self"] = d
    e = {"k": 2}
    e["self"] = e
    assert client.submit(len, d).commit_hash != client.submit(len, e).commit_hash
    # A value met twice side by side is not a cycle.
    x = [1]
    assert client.submit(len, [x, x]).commit_hash == client.submit(len, [[1], [1]]).commit_hash


class Box(list):
    pass


def test_a_self_containing_subclass_of_a_builtin_is_keyed(client):
    b = Box()
    b.append(b)
    assert client.submit(len, b).load() == 1


def test_a_changed_range_or_slice_global_is_never_served_stale(client):
    # The regression: these were left out of the key, and the second call got [0, 1].
    ns = {"W": range(2)}
    exec("def f():\n    return list(W)", ns)
    assert client.submit(ns["f"]).load() == [0, 1]
    ns["W"] = range(3)
    assert client.submit(ns["f"]).load() == [0, 1, 2]
    ns = {"S": slice(0, 1)}
    exec("def g(x):\n    return x[S]", ns)
    assert client.submit(ns["g"], [5, 6, 7]).load() == [5]
    ns["S"] = slice(0, 2)
    assert client.submit(ns["g"], [5, 6, 7]).load() == [5, 6]
    # As a closure value too.
    def make(w):
        return lambda: list(w)

    assert client.submit(make(range(1))).load() == [0]
    assert client.submit(make(range(2))).load() == [0, 1]


def test_helper_changed_through_module_attribute_invalidates(client, make_module):
    helpers = make_module("tv_helpers", "def helper(x):\n    return x + 1\n")
    user = make_module(
        "tv_user",
        "import tv_helpers\n\ndef work(x):\n    return tv_helpers.helper(x) * 10\n",
    )
    r1 = client.submit(user.work, 1)
    assert r1.load() == 20
    assert client.submit(user.work, 1).commit_hash == r1.commit_hash
    helpers = make_module("tv_helpers", "def helper(x):\n    return x + 2\n")
    user.tv_helpers = helpers
    r2 = client.submit(user.work, 1)
    assert r2.commit_hash != r1.commit_hash
    assert r2.load() == 30


def test_helpers_by_name_and_nested_functions_count(client, make_module):
    m = make_module(
        "tv_named",
        """
        def helper(x):
            return x + 1

        def work(x):
            def inner(y):
                return y * 3
            return inner(helper(x))
        """,
    )
    r1 = client.submit(m.work, 1)
    m.helper = lambda x: x + 100
    assert client.submit(m.work, 1).commit_hash != r1.commit_hash


def test_comments_docstrings_and_formatting_do_not_matter(client, make_module):
    a = make_module("tv_fmt", "def f(x):\n    return x + 1\n")
    ka = client.submit(a.f, 1).commit_hash
    b = make_module("tv_fmt", 'def f( x ):\n    """Adds one."""\n    # a comment\n    return (x + 1)\n')
    assert client.submit(b.f, 1).commit_hash == ka
    c = make_module("tv_fmt", "def f(x):\n    return x + 2\n")
    assert client.submit(c.f, 1).commit_hash != ka


def test_closures_and_global_values_are_part_of_the_key(client, make_module):
    def make(k):
        def f(x):
            return x * k

        return f

    assert client.submit(make(2), 5).load() == 10
    assert client.submit(make(3), 5).load() == 15
    m = make_module("tv_glob", "SCALE = 2\n\ndef f(x):\n    return x * SCALE\n")
    r1 = client.submit(m.f, 5)
    m.SCALE = 3
    r2 = client.submit(m.f, 5)
    assert (r1.load(), r2.load()) == (10, 15)


def test_an_unencodable_global_makes_the_call_uncached_and_says_so(client, make_module, counter):
    m = make_module(
        "tv_warn",
        "STREAM = open(__file__)\nfrom conftest import bump\n\n"
        "def f(file, x):\n    bump(file)\n    STREAM.seek(0)\n    return x\n",
    )
    with pytest.warns(KeyWarning, match="not cached.*'STREAM'") as caught:
        assert client.submit(m.f, counter.file, 1).load() == 1
    # It names the user's call, not a line inside the package.
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(KeyWarning, match="not cached"):
        client.submit(m.f, counter.file, 1)
    assert counter.n == 2  # run both times: nothing was stored or served
    assert client.log("f") == []
    # Even `_on_unencodable="raise"` (the default, for arguments) runs it: the call is fine,
    # only its caching is not.
    with pytest.warns(KeyWarning):
        assert client.submit(m.f, counter.file, 2, _on_unencodable="raise").load() == 2
    m.STREAM.close()


def test_an_unencodable_closure_value_or_helper_default_makes_the_call_uncached(client):
    numbers = (i for i in range(10))

    def reads_closure():
        return next(numbers)

    with pytest.warns(KeyWarning, match="not cached.*'numbers'"):
        assert client.submit(reads_closure).load() == 0
    with pytest.warns(KeyWarning, match="not cached.*'numbers'"):
        assert client.submit(reads_closure).load() == 1  # never a stale 0

    def helper(x, source=numbers):
        return x

    def uses_helper(x):
        return helper(x)

    with pytest.warns(KeyWarning, match="not cached.*default arguments"):
        assert client.submit(uses_helper, 3).load() == 3
    assert client.log() == []


def test_functions_without_source_use_their_bytecode(client):
    ns1, ns2, ns3 = {}, {}, {}
    exec("def g(x):\n    return x + 1\n", ns1)
    exec("def g(x):\n    return x + 1\n", ns2)
    exec("def g(x):\n    return x - 1\n", ns3)
    assert client.submit(ns1["g"], 1).load() == 2
    assert client.submit(ns1["g"], 1).commit_hash == client.submit(ns2["g"], 1).commit_hash
    assert client.submit(ns3["g"], 1).load() == 0


def deco(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        return fn(*a, **k)

    return wrapper


@deco
def decorated(x):
    return x + 1


@functools.lru_cache(maxsize=None)
def memoized(x):
    return x * 7


def test_builtins_partials_and_wrapped_callables(client):
    assert client.submit(len, [1, 2, 3]).load() == 3
    assert client.submit(max, [1, 5, 3]).load() == 5
    assert client.submit(len, [1]).commit_hash != client.submit(max, [1]).commit_hash
    p2 = functools.partial(defaults, "/dev/null", b=5)
    assert client.submit(p2, 1).load() == 6
    p3 = functools.partial(defaults, "/dev/null", b=6)
    assert client.submit(p2, 1).commit_hash != client.submit(p3, 1).commit_hash
    assert client.submit(decorated, 1).load() == 2
    assert client.submit(memoized, 2).load() == 14


def test_serializer_is_part_of_the_key(vault_dir):
    from taskvault import JsonSerializer

    a = Client(store_dir=vault_dir).submit(ident, [1])
    b = Client(store_dir=vault_dir, serializer=JsonSerializer()).submit(ident, [1])
    assert a.commit_hash != b.commit_hash
    assert b.load() == [1]


def test_no_warning_for_plain_functions(client):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.submit(twice, "/dev/null", 1)


def test_a_remembered_code_identity_is_not_reused_once_anything_it_read_changes(client, make_module):
    # Each step calls the function once (its identity is then remembered), changes one thing
    # the identity was computed from, and calls again: the second call must not hit.
    m = make_module(
        "tv_known",
        """
        LIMITS = [1]

        class Scaler:
            def factor(self):
                return 2

        def deep(x):
            return x + 1

        def helper(x):
            return deep(x)

        def work(x, k=1):
            return helper(x) * Scaler().factor() * k + sum(LIMITS)

        def counter():
            n = 0
            def step(x):
                return x + n
            def bump():
                nonlocal n
                n += 1
            return step, bump
        """,
    )

    def changed(fn, change, *args):
        first = client.submit(fn, *args)
        assert client.submit(fn, *args).commit_hash == first.commit_hash  # remembered and reused
        before = first.load()
        change()
        again = client.submit(fn, *args)
        assert again.commit_hash != first.commit_hash
        return before, again.load()

    # A helper two calls down, rebound.
    assert changed(m.work, lambda: setattr(m, "deep", lambda x: x + 10), 1) == (5, 23)
    # A mutable global edited in place (never remembered: encoded on every call).
    assert changed(m.work, lambda: m.LIMITS.append(5), 1) == (23, 28)
    # A method of a class the function uses, replaced.
    assert changed(m.work, lambda: setattr(m.Scaler, "factor", lambda self: 3), 1) == (28, 39)
    # Defaults and code reassigned.
    assert changed(m.work, lambda: setattr(m.work, "__defaults__", (2,)), 1) == (39, 72)
    assert changed(m.deep, lambda: setattr(m.deep, "__code__", (lambda x: x * 100).__code__), 2) == (12, 200)
    # A closure cell rebound by `nonlocal`.
    step, bump = m.counter()
    assert changed(step, bump, 1) == (1, 2)


LIBRARY_USERS = '''
import math
import os.path

import numpy as np
import pandas as pd

import tv_own_helpers
from tv_own_helpers import scale


def with_numpy(xs):
    {doc}return float(np.mean(xs))


def with_pandas(xs):
    {doc}return int(pd.Series(xs).sum())


def with_math(x):
    {doc}return math.floor(x) + 1


def with_os_path(p):
    {doc}return os.path.basename(p)


def with_own_helper(x):
    {doc}return scale(x) + tv_own_helpers.shift(x)
'''


def test_functions_calling_libraries_and_own_helpers_keep_their_source_identity(client, make_module):
    # Reading an attribute of an imported module (`np.mean`, `math.floor`) compiles differently
    # inside its module than alone; the identity must still be the source, not the bytecode.
    pytest.importorskip("numpy")
    pytest.importorskip("pandas")
    make_module("tv_own_helpers", "def scale(x):\n    return x * 10\n\ndef shift(x):\n    return 1\n")
    m = make_module("tv_libusers", LIBRARY_USERS.format(doc=""))
    calls = {"with_numpy": [1, 2, 3], "with_pandas": [1, 2, 3], "with_math": 2.5,
             "with_os_path": "/a/b.txt", "with_own_helper": 2}
    expected = {"with_numpy": 2.0, "with_pandas": 6, "with_math": 3, "with_os_path": "b.txt",
                "with_own_helper": 21}
    first = {}
    for name, arg in calls.items():
        r = client.submit(getattr(m, name), arg)
        assert r.load() == expected[name]
        first[name] = r.commit_hash
        details = client.show(r.commit_hash)["details"]
        assert details["source"].startswith(f"def {name}("), details["source"]
        assert details["module"] == "tv_libusers"
    # A docstring and a comment: the same entries.
    documented = LIBRARY_USERS.format(doc='"""Documented now."""\n    # and commented\n    ')
    m = make_module("tv_libusers", documented)
    for name, arg in calls.items():
        assert client.submit(getattr(m, name), arg).commit_hash == first[name], name
    # The code a function calls changes: it runs again.
    changed = documented.replace("np.mean", "np.median").replace(".sum()", ".max()")
    changed = changed.replace("math.floor", "math.ceil").replace("os.path.basename", "os.path.dirname")
    m = make_module("tv_libusers", changed)
    for name in ("with_numpy", "with_pandas", "with_math", "with_os_path"):
        assert client.submit(getattr(m, name), calls[name]).commit_hash != first[name], name
    helpers = make_module("tv_own_helpers", "def scale(x):\n    return x * 100\n\ndef shift(x):\n    return 1\n")
    m.scale = helpers.scale
    m.tv_own_helpers = helpers
    r = client.submit(m.with_own_helper, 2)
    assert r.commit_hash != first["with_own_helper"]
    assert r.load() == 201
    # Only the helper reached as a module attribute changes: it runs again as well.
    helpers2 = make_module("tv_own_helpers", "def scale(x):\n    return x * 100\n\ndef shift(x):\n    return 2\n")
    m.tv_own_helpers = helpers2
    assert client.submit(m.with_own_helper, 2).load() == 202
