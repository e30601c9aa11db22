"""End-to-end test of mvm_sdk against a running service (MVM_URL, MVM_TOKEN): one microVM, created
here, through exec (buffered and streaming), files, port forwarding and errors, then deleted.
Run by test/e2e/sdk-python.test.ts, which starts the service."""
import hashlib
import os
import time
import urllib.request

import pytest

from mvm_sdk import Mvm, MvmApiError


@pytest.fixture(scope="module")
def mvm():
    c = Mvm(os.environ["MVM_URL"], token=os.environ["MVM_TOKEN"])
    yield c
    c.close()


@pytest.fixture(scope="module")
def vm(mvm):
    created = mvm.microvms.create({"name": "sdk-py", "memory": "256Mi"})
    assert created["id"]
    try:
        ready = mvm.microvms.wait_for(created["id"], timeout=240)
        assert ready["status"]["phase"] == "Running"
        yield created["id"]
    finally:
        mvm.microvms.delete(created["id"], wait=True, timeout=120)
        with pytest.raises(MvmApiError) as e:
            mvm.microvms.get(created["id"])
        assert e.value.status == 404


def test_list_has_the_vm(mvm, vm):
    assert vm in [x["id"] for x in mvm.microvms.list()["items"]]


def test_exec_buffered(mvm, vm):
    r = mvm.exec(vm, ["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 3"])
    assert r.exit_code == 3
    assert r.stdout == "out-42\n"
    assert r.stderr == "err\n"
    assert r.timed_out is False


def test_exec_stream_with_stdin(mvm, vm):
    with mvm.exec_stream(vm, ["sh", "-c", "read a; echo got-$a; echo e-$a >&2; exit 5"]) as s:
        assert s.pid
        s.write(b"hello\n")
        s.close_stdin()
        seen = {"stdout": b"", "stderr": b""}
        for name, data in s:
            seen[name] += data
        res = s.wait()
    assert seen == {"stdout": b"got-hello\n", "stderr": b"e-hello\n"}
    assert res.exit_code == 5


def test_exec_stream_signal(mvm, vm):
    s = mvm.exec_stream(vm, ["sleep", "60"])
    s.signal("TERM")
    res = s.wait(timeout=30)
    assert res.exit_code == 128 + 15
    assert res.signal == "TERM"


def test_files_round_trip_1mib(mvm, vm):
    data = os.urandom(1024 * 1024)
    up = mvm.files.write(vm, "/tmp/sdk/blob.bin", data, mode=0o640)
    assert up["size"] == len(data)
    assert mvm.files.read(vm, "/tmp/sdk/blob.bin") == data
    st = mvm.files.stat(vm, "/tmp/sdk/blob.bin")
    assert (st["type"], st["size"], st["mode"]) == ("file", len(data), 0o640)
    # a stream in (chunks of an iterable) and out
    chunks = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]
    mvm.files.write(vm, "/tmp/sdk/blob2.bin", iter(chunks))
    h = hashlib.sha256()
    for b in mvm.files.read_iter(vm, "/tmp/sdk/blob2.bin"):
        h.update(b)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert mvm.files.mkdir(vm, "/tmp/sdk/d/e")["created"] is True
    assert sorted(e["name"] for e in mvm.files.list(vm, "/tmp/sdk")) == ["blob.bin", "blob2.bin", "d"]
    mvm.files.remove(vm, "/tmp/sdk", recursive=True)
    with pytest.raises(MvmApiError) as e:
        mvm.files.stat(vm, "/tmp/sdk")
    assert e.value.status == 404


def test_port_forward(mvm, vm):
    mvm.files.write(vm, "/srv/index.html", b"hello-from-guest-py\n")
    r = mvm.exec(vm, ["busybox", "httpd", "-p", "8080", "-h", "/srv"])
    assert r.exit_code == 0, r.stderr
    with mvm.port_forward(vm, 8080) as fwd:
        assert fwd.port > 0
        body = None
        deadline = time.monotonic() + 30
        while body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{fwd.port}/index.html", timeout=10) as res:
                    body = res.read()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert body == b"hello-from-guest-py\n"
    # the tunnel refuses a port nobody listens on, with a typed error
    with pytest.raises(MvmApiError) as e:
        mvm.connect_port(vm, 9)
    assert e.value.status == 503


def test_errors(mvm, vm):
    with pytest.raises(MvmApiError) as e:
        mvm.exec("no-such-vm-py", ["true"])
    assert (e.value.status, e.value.code) == (404, "NOT_FOUND")
    with pytest.raises(MvmApiError) as e:
        mvm.exec(vm, [])
    assert e.value.status == 400 and e.value.code == "VALIDATION_FAILED"
    assert any(v["field"].startswith("cmd") for v in e.value.violations), e.value.problem
    with pytest.raises(MvmApiError) as e:
        mvm.exec_stream("no-such-vm-py", ["true"])
    assert e.value.status == 404
