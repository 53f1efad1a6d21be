"""cache_quota: sizes with units, percentages of the disk, unlimited; TOML < environment < flag."""

from __future__ import annotations

import pytest

from mesh.config import load_config, parse_size
from mesh.errors import ConfigError


@pytest.mark.parametrize(("text", "value"), [
    ("1048576", 1 << 20), (4096, 4096), ("512MiB", 512 << 20), ("50GiB", 50 << 30), ("50 G", 50 << 30),
    ("1.5TB", 1_500_000_000_000), ("2kb", 2000), ("0", 0), ("20%", 0.2), ("100%", 1.0),
    ("unlimited", None), ("none", None),
])
def test_sizes(text, value):
    assert parse_size(text, "cache_quota") == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "5X", "120%", "-3%", "nan", "1e30"])
def test_bad_sizes_name_the_setting(text):
    with pytest.raises(ConfigError, match="cache_quota must be a size"):
        parse_size(text, "cache_quota")


def test_sources_and_resolution(tmp_path):
    toml = tmp_path / "e.toml"
    toml.write_text('cache_quota = "10%"\n')
    cfg = load_config({"data_dir": tmp_path}, toml, env={})
    assert cfg.cache_quota_bytes(1000 << 20) == 100 << 20
    cfg = load_config({"data_dir": tmp_path}, toml, env={"ELTON_CACHE_QUOTA": "3MiB"})
    assert cfg.cache_quota_bytes(1 << 40) == 3 << 20
    cfg = load_config({"data_dir": tmp_path, "cache_quota": "unlimited"}, toml, env={"ELTON_CACHE_QUOTA": "3MiB"})
    assert cfg.cache_quota_bytes(1 << 40) is None
    assert load_config({"data_dir": tmp_path}, env={}).cache_quota_bytes(1000) == 200  # default: 20% of the disk
    toml.write_text("cache_quota = 2048\n")
    assert load_config({"data_dir": tmp_path}, toml, env={}).cache_quota_bytes(1 << 40) == 2048
    with pytest.raises(ConfigError, match="cache_quota must be a size .* not 'lots'"):
        load_config({"data_dir": tmp_path, "cache_quota": "lots"}, env={})
