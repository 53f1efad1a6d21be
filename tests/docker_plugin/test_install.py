"""The shipped installation forms: managed-plugin config.json and the socket-activated systemd units."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docker_plugin.conftest import PluginProcess

HERE = Path(__file__).resolve().parents[2]
DOCKER = HERE / "scripts" / "docker"


def test_managed_plugin_config_matches_the_command():
    config = json.loads((DOCKER / "config.json").read_text())
    assert config["interface"] == {"socket": "elton.sock", "types": ["docker.volumedriver/1.0"]}
    entry = config["entrypoint"]
    assert entry[1:2] == ["docker-plugin"]
    assert entry[entry.index("--socket") + 1] == f"/run/docker/plugins/{config['interface']['socket']}"
    # container mounts must be made under the propagated mount for dockerd to see them
    assert entry[entry.index("--mount-root") + 1] == config["propagatedMount"]
    state = entry[entry.index("--state-dir") + 1]
    assert any(m["destination"] == state for m in config["mounts"])
    assert {"path": "/dev/fuse"} in config["linux"]["devices"]
    assert "CAP_SYS_ADMIN" in config["linux"]["capabilities"]


def test_legacy_units_install_and_verify(tmp_path: Path):
    r = subprocess.run([str(DOCKER / "install-legacy"), "--root", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    units = tmp_path / "etc" / "systemd" / "system"
    service = (units / "elton-docker-plugin.service").read_text()
    assert "@" not in service.split("ExecStart=")[1].splitlines()[0]
    assert "KillMode=process" in service  # a plugin restart must not end the containers' mounts
    socket_unit = (units / "elton-docker-plugin.socket").read_text()
    assert "ListenStream=/run/docker/plugins/elton.sock" in socket_unit and "SocketMode=0660" in socket_unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    v = subprocess.run(["systemd-analyze", "verify", str(units / "elton-docker-plugin.service"),
                        str(units / "elton-docker-plugin.socket")], capture_output=True, text=True)
    assert v.returncode == 0, v.stderr


def test_socket_activation(tmp_path: Path, plugin: PluginProcess):
    """The legacy form as systemd runs it: the listening socket is passed in as fd 3."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed")
    sock = tmp_path / "activated" / "elton.sock"
    sock.parent.mkdir()
    proc = subprocess.Popen([tool, "-l", str(sock), sys.executable, "-m", "fs.cli", "docker-plugin",
                             "--state-dir", str(tmp_path / "activated-state"),
                             "--socket", str(tmp_path / "not-used.sock")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=plugin.env)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        activated = PluginProcess(tmp_path, plugin.url)
        activated.socket = sock
        assert activated.ok("VolumeDriver.Capabilities")["Capabilities"] == {"Scope": "global"}
        assert activated.ok("VolumeDriver.List")["Volumes"] == []
        assert not (tmp_path / "not-used.sock").exists()
    finally:
        proc.terminate()
        proc.wait(20)
