"""eltond's life cycle and its behaviour under crashes, corruption and a full disk."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mesh.config import load_config
from mesh.errors import ConfigError, CorruptChunk, KeyNotFound, StorageFull
from tests.eltond_process import EltondProcess


def eltond_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh.cli.eltond", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_sigterm_drains_and_exits_zero(tmp_path):
    d = EltondProcess(tmp_path / "n").start()
    d.client().put("k", b"v")
    assert d.stop() == 0
    assert not (tmp_path / "n" / "eltond.json").exists()
    assert not (tmp_path / "n" / "eltond.pid").exists()


def test_second_daemon_on_same_data_dir_fails_clearly(eltond):
    r = eltond_cli("start", "--data-dir", str(eltond.data_dir), "--http", "127.0.0.1:0", "--gossip", "127.0.0.1:0")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        f"eltond: The data directory is in use by another eltond: {eltond.data_dir} (pid {eltond.pid})")
    assert eltond.client().health()["ok"]


def test_identity_and_versions_survive_restart(tmp_path):
    d = EltondProcess(tmp_path / "n").start()
    node = d.client().health()["node_id"]
    d.client().put("persist", b"one")
    d.stop()
    d.start()
    assert d.client().health()["node_id"] == node
    assert d.client().read("persist", 1) == b"one"
    assert d.client().put("persist", b"two")["version"] == 2
    d.stop()
    assert oct((tmp_path / "n" / "identity.key").stat().st_mode & 0o777) == "0o600"


def test_detach_status_stop(tmp_path):
    data = tmp_path / "n"
    port = _free_port()
    r = eltond_cli("start", "--detach", "--data-dir", str(data), "--http", f"127.0.0.1:{port}",
                   "--gossip", "127.0.0.1:0", "--cluster", "lab")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("eltond started: pid ")
    try:
        st = eltond_cli("status", "--data-dir", str(data))
        assert st.returncode == 0, st.stderr
        fields = dict(line.split(":", 1) for line in st.stdout.splitlines())
        assert fields["cluster"].strip() == "lab" and fields["role"].strip() == "both"
        assert fields["http"].strip() == f"127.0.0.1:{port}"
        js = json.loads(eltond_cli("status", "--json", "--data-dir", str(data)).stdout)
        assert js["store"]["keys"] == 0 and len(js["node_id"]) == 40
    finally:
        stop = eltond_cli("stop", "--data-dir", str(data))
    assert stop.returncode == 0 and "eltond stopped" in stop.stdout
    after = eltond_cli("status", "--data-dir", str(data))
    assert after.returncode != 0 and "not running" in after.stderr


def test_bad_flags_give_one_line_errors(tmp_path):
    r = eltond_cli("start", "--data-dir", str(tmp_path / "n"), "--http", "nonsense")
    assert r.returncode == 1 and r.stderr.strip() == (
        "eltond: Invalid configuration: http must be HOST:PORT, not 'nonsense'")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    r = eltond_cli("start", "--data-dir", str(tmp_path / "n"), "--http", f"127.0.0.1:{port}", "--gossip", "127.0.0.1:0")
    busy.close()
    assert r.returncode == 1 and f"cannot listen on http 127.0.0.1:{port}" in r.stderr


def test_config_precedence(tmp_path):
    cfg = tmp_path / "elton.toml"
    cfg.write_text('http = "127.0.0.1:1111"\ncluster = "from-file"\nrole = "master"\n')
    env = {"ELTON_CLUSTER": "from-env", "ELTON_JOIN": "10.0.0.1:7946,10.0.0.2:7946"}
    c = load_config({"role": "node", "data_dir": tmp_path, "gossip": "192.0.2.10:7946"}, cfg, env)
    assert (c.http, c.cluster, c.role) == ("127.0.0.1:1111", "from-env", "node")
    assert c.join == ("10.0.0.1:7946", "10.0.0.2:7946")
    # the data dir's own elton.toml is read when no file is named
    c2 = load_config({"data_dir": tmp_path}, None, {})
    assert c2.cluster == "from-file"
    cfg.write_text('colour = "blue"\n')
    with pytest.raises(ConfigError, match="unknown setting.*colour"):
        load_config({}, cfg, {})


def test_config_refuses_unsafe_or_unreachable_addresses(tmp_path):
    with pytest.raises(ConfigError, match="beyond loopback: set http_token"):
        load_config({"data_dir": tmp_path, "http": "0.0.0.0:7420"}, None, {})
    assert load_config({"data_dir": tmp_path, "http": "0.0.0.0:7420", "http_token": "s3cret"}, None, {})
    with pytest.raises(ConfigError, match="--join needs --gossip"):
        load_config({"data_dir": tmp_path, "join": ("192.0.2.1:7946",)}, None, {})


def test_env_sets_the_http_address(tmp_path):
    port = _free_port()
    d = EltondProcess(tmp_path / "n", env={"ELTON_HTTP": f"127.0.0.1:{port}"})
    d.extra = []
    d.data_dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "mesh.cli.eltond", "start", "--data-dir", str(d.data_dir),
                             "--gossip", "127.0.0.1:0"],
                            env={**os.environ, "ELTON_HTTP": f"127.0.0.1:{port}"},
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (d.data_dir / "eltond.json").exists():
            time.sleep(0.05)
        info = json.loads((d.data_dir / "eltond.json").read_text())
        assert info["http"] == f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


@pytest.mark.slow
def test_kill9_during_put_leaves_no_partial_version(tmp_path):
    d = EltondProcess(tmp_path / "n").start()
    try:
        d.client().put("crash/k", b"version one")
        u = urlsplit(d.url)
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(b"PUT /v1/keys/crash/k HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n")
        block = os.urandom(1 << 20)
        for _ in range(60):  # 60 MiB in: chunks are on disk, no version yet
            s.sendall(block)
        time.sleep(0.3)
        d.kill9()
        s.close()
        d.start()
        c = d.client()
        assert [v["version"] for v in c.versions("crash/k")] == [1]
        assert c.read("crash/k") == b"version one"
        assert list((tmp_path / "n" / "chunks" / "tmp").iterdir()) == []
        assert c.put("crash/k", b"version two")["version"] == 2
    finally:
        d.stop()


def _chunk_path(data_dir: Path, h: str) -> Path:
    return data_dir / "chunks" / h[:2] / h


def test_corrupt_small_object_is_reported_not_served(eltond):
    c = eltond.client()
    c.put("rot/small", b"precious bytes")
    h = c.manifest("rot/small")["chunks"][0]["hash"]
    _chunk_path(eltond.data_dir, h).write_bytes(b"precious byteZ")
    with pytest.raises(CorruptChunk, match=f"chunk {h} failed its hash check"):
        c.read("rot/small")
    assert list((eltond.data_dir / "chunks" / "quarantine").iterdir())
    assert c.health()["ok"]
    c.put("rot/small", b"precious bytes")  # re-upload heals it
    assert c.read("rot/small", 1) == b"precious bytes"


def test_corrupt_chunk_mid_stream_never_reaches_the_reader(eltond):
    c = eltond.client()
    data = os.urandom(16 * 1024 * 1024)
    c.put("rot/big", data)
    chunks = c.manifest("rot/big")["chunks"]
    victim = chunks[len(chunks) // 2]
    p = _chunk_path(eltond.data_dir, victim["hash"])
    raw = bytearray(p.read_bytes())
    raw[100] ^= 0xFF
    p.write_bytes(bytes(raw))
    got = bytearray()
    with pytest.raises(CorruptChunk):
        for part in c.get("rot/big"):
            got += part
    assert data.startswith(bytes(got))
    offset = sum(ch["size"] for ch in chunks[: len(chunks) // 2])
    assert len(got) <= offset
    assert c.health()["ok"]


@pytest.mark.root
def test_disk_full_fails_cleanly_and_recovers(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    try:
        d = EltondProcess(mnt / "n").start()
        d.log_path = tmp_path / "n.log"
        c = d.client()
        c.put("full/small", b"fits")
        with pytest.raises(StorageFull, match="No space left"):
            c.put("full/big", os.urandom(40 * 1024 * 1024))
        with pytest.raises(KeyNotFound):
            c.read("full/big")
        used = sum(f.stat().st_size for f in (mnt / "n" / "chunks").rglob("*") if f.is_file())
        assert used < 1024 * 1024, f"a failed upload left {used} bytes of chunks behind"
        assert c.put("full/small", b"still works")["version"] == 2
        assert c.read("full/small", 1) == b"fits"
        d.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
