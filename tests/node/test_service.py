"""scripts/install-service and the eltond@.service unit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def install(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "scripts" / "install-service"), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def test_install_writes_unit_and_config(tmp_path):
    r = install(tmp_path, "--role", "node", "--user", "storage")
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "etc/systemd/system/eltond@.service").read_text()
    assert not re.findall(r"@[A-Z]+@", unit), "every placeholder is filled in"
    assert f"ExecStart={ROOT}/.venv/bin/eltond start --role %i --config /etc/elton/eltond.toml" in unit
    assert "User=storage" in unit and "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit
    conf = (tmp_path / "etc/elton/eltond.toml").read_text()
    assert 'http = "127.0.0.1:7420"' in conf
    (tmp_path / "etc/elton/eltond.toml").write_text("# edited\n")
    install(tmp_path)
    assert (tmp_path / "etc/elton/eltond.toml").read_text() == "# edited\n", "an existing config is kept"


def test_bad_role_is_refused(tmp_path):
    r = install(tmp_path, "--role", "boss")
    assert r.returncode == 2 and "--role is master, node or both, not 'boss'" in r.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine")
def test_unit_verifies_and_is_hardened(tmp_path):
    install(tmp_path)
    unit = tmp_path / "eltond@master.service"
    shutil.copy(tmp_path / "etc/systemd/system/eltond@.service", unit)
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sec = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True,
                         text=True, timeout=60)
    level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", sec.stdout).group(1))
    assert level < 3.0, sec.stdout[-400:]


def test_the_units_command_line_starts_eltond(tmp_path):
    install(tmp_path)
    unit = (tmp_path / "etc/systemd/system/eltond@.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1).replace("%i", "master").split()
    env_line = re.search(r"^Environment=ELTON_DATA_DIR=(.+)$", unit, re.M).group(1)
    assert env_line == "/var/lib/elton/%i"
    conf = tmp_path / "eltond.toml"
    conf.write_text('http = "127.0.0.1:0"\ngossip = "127.0.0.1:0"\n')
    argv = [a if a != "/etc/elton/eltond.toml" else str(conf) for a in exec_start]
    data = tmp_path / "state"
    proc = subprocess.Popen(argv, env={**os.environ, "ELTON_DATA_DIR": str(data)}, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (data / "eltond.json").exists():
            time.sleep(0.05)
        info = json.loads((data / "eltond.json").read_text())
        assert info["role"] == "master"
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
