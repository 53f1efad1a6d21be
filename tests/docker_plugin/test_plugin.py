"""The Docker volume plugin driven over its unix socket with dockerd's request sequences, real mounts below."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.docker_plugin.conftest import PluginProcess

CID1 = "a1" * 32  # Docker's mount ids are 64 hex digits
CID2 = "b2" * 32


def test_socket_is_group_only(plugin: PluginProcess):
    assert stat.S_ISSOCK(os.stat(plugin.socket).st_mode)
    assert stat.S_IMODE(os.stat(plugin.socket).st_mode) == 0o660


def test_docker_run_then_exit_keeps_uncommitted_changes(plugin: PluginProcess, volume: str):
    # docker run -v V:/data ...: dockerd activates the plugin, asks its scope, looks the volume up, creates it
    assert plugin.ok("Plugin.Activate")["Implements"] == ["VolumeDriver"]
    assert plugin.ok("VolumeDriver.Capabilities")["Capabilities"] == {"Scope": "global"}
    assert "no such volume" in plugin.call("VolumeDriver.Get", {"Name": volume})["Err"]
    plugin.ok("VolumeDriver.Create", {"Name": volume, "Opts": {}})
    assert plugin.ok("VolumeDriver.Get", {"Name": volume})["Volume"]["Name"] == volume
    mnt = Path(plugin.ok("VolumeDriver.Mount", {"Name": volume, "ID": CID1})["Mountpoint"])
    assert os.path.ismount(mnt)
    assert plugin.ok("VolumeDriver.Path", {"Name": volume})["Mountpoint"] == str(mnt)
    assert (mnt / "hello.txt").read_text() == "committed"
    assert (mnt / "docs" / "readme.md").read_text() == "# lower\n"
    (mnt / "out.log").write_text("written by the container")
    listed = plugin.ok("VolumeDriver.List")["Volumes"]
    assert {"Name": volume, "Mountpoint": str(mnt)} in listed

    # the plugin restarts while the container runs: volumes and the active mount are remembered
    plugin.stop()
    plugin.start()
    assert plugin.ok("VolumeDriver.Path", {"Name": volume})["Mountpoint"] == str(mnt)

    # container exit
    plugin.ok("VolumeDriver.Unmount", {"Name": volume, "ID": CID1})
    assert not os.path.ismount(mnt)
    assert plugin.ok("VolumeDriver.Path", {"Name": volume})["Mountpoint"] == ""
    status = plugin.ok("VolumeDriver.Get", {"Name": volume})["Volume"]["Status"]
    assert status["mounts"] == []
    [kept] = status["uncommitted"]
    assert kept["id"] == CID1 and kept["changes"] == 1
    assert Path(kept["state_dir"]).is_dir()
    assert kept["state_dir"] in plugin.log() and "uncommitted" in plugin.log()
    assert "Elton.Commit" in kept["publish"] and CID1 in kept["publish"]

    # the same container starts again: its upper layer is back; it writes more and exits
    again = Path(plugin.ok("VolumeDriver.Mount", {"Name": volume, "ID": CID1})["Mountpoint"])
    assert again == mnt and (mnt / "out.log").read_text() == "written by the container"
    (mnt / "second.log").write_text("second run")
    plugin.ok("VolumeDriver.Unmount", {"Name": volume, "ID": CID1})
    assert plugin.ok("VolumeDriver.Get", {"Name": volume})["Volume"]["Status"]["uncommitted"][0]["changes"] == 2

    # publishing the kept changes: then nothing is left uncommitted and the mount's state is gone
    reply = plugin.ok("Elton.Commit", {"Name": volume, "ID": CID1, "Message": "container output"})
    assert reply["Result"] == "committed version 3"
    assert plugin.ok("VolumeDriver.Get", {"Name": volume})["Volume"]["Status"]["uncommitted"] == []
    assert not Path(kept["state_dir"]).exists()
    plugin.ok("VolumeDriver.Remove", {"Name": volume})

    # a new container on a new docker volume sees the committed files
    plugin.ok("VolumeDriver.Create", {"Name": "after", "Opts": {"volume": volume}})
    fresh = Path(plugin.ok("VolumeDriver.Mount", {"Name": "after", "ID": CID2})["Mountpoint"])
    assert (fresh / "out.log").read_text() == "written by the container"
    assert (fresh / "second.log").read_text() == "second run"
    plugin.ok("VolumeDriver.Unmount", {"Name": "after", "ID": CID2})
    assert "no such volume" in plugin.call("VolumeDriver.Get", {"Name": volume})["Err"]


def test_two_containers_have_separate_upper_layers(plugin: PluginProcess, volume: str):
    plugin.ok("VolumeDriver.Create", {"Name": "shared", "Opts": {"volume": volume, "version": "2"}})
    one = Path(plugin.ok("VolumeDriver.Mount", {"Name": "shared", "ID": CID1})["Mountpoint"])
    two = Path(plugin.ok("VolumeDriver.Mount", {"Name": "shared", "ID": CID2})["Mountpoint"])
    assert one != two and os.path.ismount(one) and os.path.ismount(two)
    assert (one / "hello.txt").read_text() == (two / "hello.txt").read_text() == "committed"
    (one / "only-in-one").write_text("1")
    (two / "hello.txt").write_text("changed in two")
    assert not (two / "only-in-one").exists()
    assert (one / "hello.txt").read_text() == "committed"
    status = plugin.ok("VolumeDriver.Get", {"Name": "shared"})["Volume"]["Status"]
    assert status["volume"] == volume and status["version"] == 2
    assert [m["id"] for m in status["mounts"]] == [CID1, CID2]
    # each container has its own state dir (upper layer), side by side in the one shared cache dir
    states = list((plugin.state_dir / "cache" / "mounts").iterdir())
    assert len(states) == 2 and all(p.name.startswith(volume) for p in states)

    err = plugin.call("VolumeDriver.Remove", {"Name": "shared"})["Err"]
    assert "mounted by 2 container(s)" in err
    plugin.ok("VolumeDriver.Unmount", {"Name": "shared", "ID": CID1})
    assert os.path.ismount(two) and (two / "hello.txt").read_text() == "changed in two"
    plugin.ok("VolumeDriver.Unmount", {"Name": "shared", "ID": CID2})
    assert "not mounted" in plugin.call("VolumeDriver.Unmount", {"Name": "shared", "ID": CID2})["Err"]
    plugin.ok("VolumeDriver.Remove", {"Name": "shared"})


def test_version_option_pins_the_lower_layer(plugin: PluginProcess, volume: str):
    plugin.ok("VolumeDriver.Create", {"Name": "old", "Opts": {"volume": volume, "version": "1"}})
    mnt = Path(plugin.ok("VolumeDriver.Mount", {"Name": "old", "ID": CID1})["Mountpoint"])
    assert os.listdir(mnt) == []
    plugin.ok("VolumeDriver.Unmount", {"Name": "old", "ID": CID1})
    # creating again with the same options is accepted, with other options refused
    plugin.ok("VolumeDriver.Create", {"Name": "old", "Opts": {"volume": volume, "version": "1"}})
    assert "exists with other options" in plugin.call(
        "VolumeDriver.Create", {"Name": "old", "Opts": {"volume": volume}})["Err"]


def test_create_with_bad_options_is_refused_naming_the_option(plugin: PluginProcess, volume: str):
    cases = {"size": {"volume": volume, "size": "1G"}, "version": {"volume": volume, "version": "abc"},
             "volume": {"volume": ""}}
    for option, opts in cases.items():
        err = plugin.call("VolumeDriver.Create", {"Name": "bad", "Opts": opts})["Err"]
        assert f"option {option}" in err or f"option '{option}'" in err, err
    assert "version=" in plugin.call("VolumeDriver.Create", {"Name": "bad", "Opts": {"version": "0"}})["Err"]
    missing = plugin.call("VolumeDriver.Create", {"Name": "bad", "Opts": {"volume": volume, "version": "99"}})
    assert "99" in missing["Err"]
    assert "no such volume" in plugin.call("VolumeDriver.Get", {"Name": "bad"})["Err"]
    assert plugin.ok("VolumeDriver.List")["Volumes"] == []


def test_mount_of_unknown_volume_is_refused(plugin: PluginProcess):
    err = plugin.call("VolumeDriver.Mount", {"Name": "nope", "ID": CID1})["Err"]
    assert "no such volume: 'nope'" in err
    assert "no such volume" in plugin.call("VolumeDriver.Path", {"Name": "nope"})["Err"]
    assert "no such volume" in plugin.call("VolumeDriver.Remove", {"Name": "nope"})["Err"]
    assert "unknown request" in plugin.call("VolumeDriver.Frobnicate", {})["Err"]
    assert "no volume" in plugin.call("VolumeDriver.Mount", {"ID": CID1})["Err"]


def test_create_without_an_elton_volume_makes_an_empty_one(plugin: PluginProcess):
    name = f"fresh{os.getpid()}"
    plugin.ok("VolumeDriver.Create", {"Name": name, "Opts": {}})
    mnt = Path(plugin.ok("VolumeDriver.Mount", {"Name": name, "ID": CID1})["Mountpoint"])
    assert os.listdir(mnt) == []
    (mnt / "new").write_text("x")
    assert "give the ID" in plugin.call("Elton.Commit", {"Name": name, "ID": CID2})["Err"]
    assert plugin.ok("Elton.Commit", {"Name": name})["Result"] == "committed version 2"
    assert os.path.ismount(mnt)  # a live container's changes are committed in place
    plugin.ok("VolumeDriver.Unmount", {"Name": name, "ID": CID1})
    assert plugin.ok("VolumeDriver.Get", {"Name": name})["Volume"]["Status"]["uncommitted"] == []
