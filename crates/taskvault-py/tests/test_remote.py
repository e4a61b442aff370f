"""The SDK with a remote tier: a real `taskvault serve` process, two vault directories standing
for two machines."""

import os
import subprocess
import textwrap

import pytest

from taskvault import Client, PickleSerializer, SafePickleSerializer


@pytest.fixture
def server(cli, tmp_path):
    proc = subprocess.Popen(
        [cli, "--dir", str(tmp_path / "server"), "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "TASKVAULT_LOG": "warn"},
    )
    line = proc.stdout.readline().decode()
    assert line.startswith("listening on "), line
    yield line.split()[-1]
    proc.terminate()
    proc.wait(timeout=30)


def machine(tmp_path, name, url, extra=""):
    d = tmp_path / name
    (d / ".taskvault").mkdir(parents=True)
    (d / ".taskvault" / "config.yaml").write_text(f"remote:\n  url: {url}\n{extra}")
    return str(d / ".taskvault" / "config.yaml")


def test_a_result_computed_on_one_machine_is_loaded_on_another(server, cli, tmp_path, make_module, counter):
    mod = make_module("remote_tasks", """
        from conftest import bump
        def train(n, file):
            bump(file)
            return {"weights": list(range(n))}
    """)
    a = Client(config=machine(tmp_path, "a", server))
    config_b = machine(tmp_path, "b", server)
    b = Client(config=config_b)
    assert isinstance(a.serializer, SafePickleSerializer), "network results are never plain-unpickled by default"
    ra = a.submit(mod.train, 5, counter.file)
    assert ra.load() == {"weights": [0, 1, 2, 3, 4]}
    assert counter.n == 1
    rb = b.submit(mod.train, 5, counter.file)
    assert rb.load() == {"weights": [0, 1, 2, 3, 4]}
    assert counter.n == 1, "the second machine loaded the first one's result"
    b.close()
    import json
    stats = json.loads(subprocess.run([cli, "--config", config_b, "stats", "--json"], check=True,
                                      capture_output=True).stdout)
    assert stats["remote_hits"] == 1
    # The next hit is local: no second remote hit.
    assert b.submit(mod.train, 5, counter.file).load() == {"weights": [0, 1, 2, 3, 4]}
    b.close()
    stats = json.loads(subprocess.run([cli, "--config", config_b, "stats", "--json"], check=True,
                                      capture_output=True).stdout)
    assert stats["remote_hits"] == 1


def test_a_class_from_the_network_is_not_unpickled_by_default(server, tmp_path, make_module):
    mod = make_module("remote_evil", """
        class Model:
            def __init__(self, w):
                self.w = w
            def __eq__(self, o):
                return self.w == o.w
        def fit(w):
            return Model(w)
    """)
    a = Client(config=machine(tmp_path, "a", server), serializer=PickleSerializer())
    assert a.submit(mod.fit, 3).load() == mod.Model(3)
    # The same serializer, chosen explicitly, shares arbitrary objects.
    b = Client(config=machine(tmp_path, "b", server), serializer=PickleSerializer())
    assert b.submit(mod.fit, 3).load() == mod.Model(3)
    # The default (restricted) serializer is another key, and refuses the class on load.
    c = Client(config=machine(tmp_path, "c", server))
    with pytest.raises(Exception, match="allowlist"):
        c.submit(mod.fit, 4).load()


def test_an_unreachable_server_only_warns(tmp_path, capfd, make_module):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    mod = make_module("remote_offline", """
        def double(x):
            return 2 * x
    """)
    c = Client(config=machine(tmp_path, "a", f"http://127.0.0.1:{port}"))
    assert c.submit(mod.double, 21).load() == 42
    assert c.submit(mod.double, 22).load() == 44
    err = capfd.readouterr().err
    assert err.count("warning") == 1, err
