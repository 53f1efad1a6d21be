"""The `elton` CLI as a user runs it: output formats, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mesh.cli.elton import parse_ref
from mesh.errors import InvalidKey


def elton(d, *args: str, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "mesh.cli.elton", *args], input=stdin or b"", capture_output=True,
                       timeout=60, cwd=cwd, env={**os.environ, "ELTON_HOST": d.url})
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                       r.stderr.decode(errors="replace"))


def test_put_get_cat_log_ls_stat(shared_eltond, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(6 * 1024 * 1024))
    r = elton(shared_eltond, "put", "cli/file", str(src))
    assert (r.returncode, r.stdout) == (0, "cli/file@1\n")
    r = elton(shared_eltond, "put", "cli/file", "-", stdin=b"from stdin")
    assert r.stdout == "cli/file@2\n"
    js = json.loads(elton(shared_eltond, "put", "--json", "cli/file", "-", stdin=b"third").stdout)
    assert js["version"] == 3 and js["size"] == 5

    out = tmp_path / "out.bin"
    r = elton(shared_eltond, "get", "cli/file@1", "-o", str(out))
    assert r.returncode == 0 and out.read_bytes() == src.read_bytes()
    r = elton(shared_eltond, "get", "cli/file", cwd=tmp_path)
    assert (tmp_path / "file").read_bytes() == b"third"
    assert elton(shared_eltond, "cat", "cli/file@2").stdout == "from stdin"

    log = elton(shared_eltond, "log", "cli/file").stdout.splitlines()
    assert [line.split()[0] for line in log] == ["cli/file@3", "cli/file@2", "cli/file@1"]
    log_json = json.loads(elton(shared_eltond, "log", "--json", "cli/file").stdout)
    assert [v["version"] for v in log_json] == [3, 2, 1]

    ls = json.loads(elton(shared_eltond, "ls", "--json", "cli/").stdout)
    assert [(k["key"], k["version"]) for k in ls] == [("cli/file", 3)]
    assert elton(shared_eltond, "ls", "cli/").stdout.startswith("cli/file@3 ")

    stat = dict(line.split(":", 1) for line in elton(shared_eltond, "stat", "cli/file@1").stdout.splitlines())
    assert stat["version"].strip() == "1" and stat["size"].strip().startswith(str(6 * 1024 * 1024))
    assert json.loads(elton(shared_eltond, "stat", "--json", "cli/file").stdout)["version"] == 3


@pytest.mark.parametrize("args,message", [
    (("cat", "cli/none"), "elton: No such key: cli/none"),
    (("put", "a//b", "-"), "elton: Invalid key: 'a//b' has an empty segment"),
    (("get", "k", "-o", "/no/such/dir/file"), "elton: No such file or directory: /no/such/dir/file"),
])
def test_errors_are_one_line_and_nonzero(shared_eltond, args, message):
    if args[0] == "get":
        elton(shared_eltond, "put", "k", "-", stdin=b"x")
    r = elton(shared_eltond, *args, stdin=b"")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines == [message]


def test_missing_source_is_a_usage_error(shared_eltond):
    r = elton(shared_eltond, "put", "k", "/no/such/file")
    assert r.returncode == 2 and "'/no/such/file' does not exist" in r.stderr and "Traceback" not in r.stderr


def test_version_that_does_not_exist(shared_eltond):
    elton(shared_eltond, "put", "cli/v", "-", stdin=b"x")
    r = elton(shared_eltond, "cat", "cli/v@5")
    assert r.returncode == 1 and r.stderr.strip() == "elton: No such version: cli/v@5 (latest is 1)"


def test_failed_get_leaves_no_file(shared_eltond, tmp_path):
    r = elton(shared_eltond, "get", "cli/missing", "-o", str(tmp_path / "x"))
    assert r.returncode == 1 and list(tmp_path.iterdir()) == []


def test_unreachable_daemon(tmp_path):
    class Dead:
        url = "http://127.0.0.1:9"

    r = elton(Dead, "ls")
    assert r.returncode == 1 and r.stderr.startswith("elton: Cannot reach eltond: http://127.0.0.1:9")


def test_parse_ref():
    assert parse_ref("a/b@12") == ("a/b", 12)
    assert parse_ref("a/b") == ("a/b", None)
    assert parse_ref("mail@host") == ("mail@host", None)
    with pytest.raises(InvalidKey):
        parse_ref("a/../b@1")


def test_progress_bar_only_on_a_terminal(shared_eltond, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8 * 1024 * 1024))
    cmd = f"{sys.executable} -m mesh.cli.elton put tty/big {src}"
    tty = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, timeout=60,
                         env={**os.environ, "ELTON_HOST": shared_eltond.url, "COLUMNS": "100"})
    assert tty.returncode == 0
    screen = tty.stdout.decode(errors="replace")
    assert "put tty/big" in screen and "MB" in screen  # the bar's label and transferred amount
    assert screen.rstrip().endswith("tty/big@1")
    piped = elton(shared_eltond, "put", "tty/big", str(src))
    assert (piped.stdout, piped.stderr) == ("tty/big@2\n", "")


def test_members_and_mesh_commands(shared_eltond):
    me = shared_eltond.client().health()["node_id"]
    js = json.loads(elton(shared_eltond, "members", "--json").stdout)
    assert [(m["id"], m["state"], m["role"], m["cluster"]) for m in js] == [(me, "alive", "both", "default")]
    table = elton(shared_eltond, "members").stdout.splitlines()
    assert table[0].split() == ["ID", "CLUSTER", "ROLE", "ADDRESS", "STATE", "INC", "RTT", "EST"]
    assert table[1].startswith(me[:12]) and table[1].endswith("(self)")
    token = elton(shared_eltond, "mesh", "token", "--ttl", "60").stdout.strip()
    assert token.startswith("ELTON1-")
    r = elton(shared_eltond, "mesh", "remove", "deadbeefdeadbeef")
    assert r.returncode == 1 and r.stderr.strip().startswith("elton: Invalid request: 'deadbeefdeadbeef' names no member")


def test_where_and_pending(shared_eltond):
    elton(shared_eltond, "put", "where/k", "-", stdin=b"x")
    me = shared_eltond.client().health()["node_id"]
    info = json.loads(elton(shared_eltond, "where", "--json", "where/k").stdout)
    assert info["home"] == me and info["latest_version"] == 1 and info["holders_of_latest"] == [me]
    text = dict(line.split(":", 1) for line in elton(shared_eltond, "where", "where/k").stdout.splitlines())
    assert text["home"].strip() == me and text["replicas"].strip() == f"{me[:12]} (default)"
    assert json.loads(elton(shared_eltond, "pending", "--json").stdout) == []
    r = elton(shared_eltond, "put", "--queue", "where/k", "-", stdin=b"y")
    assert r.stdout == "where/k@2\n", "a reachable home issues at once, queue or not"
