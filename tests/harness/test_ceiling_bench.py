"""scripts/bench/ceiling: the raw read path it measures delivers every byte and keeps an exact copy,
and it leaves no network namespace behind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.harness.netns import list_netns

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
import ceiling  # noqa: E402

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]


def _namespaces() -> set[str]:
    return {ns for ns in list_netns() if ns.startswith("eltceil-")}


def test_each_way_reads_the_whole_file_and_keeps_exact_copies(tmp_path: Path) -> None:
    before = _namespaces()
    res = ceiling.measure(size_mib=8, rounds=2, piece_kib=640, work=tmp_path)  # raises on a bad copy
    assert set(res) == {"local", "none", "direct", "buffered"}
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in res.values())
    assert _namespaces() == before
    assert "| relay, the copy written with O_DIRECT |" in ceiling.table(res)


def test_a_relay_that_keeps_other_bytes_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ceiling._digest
    calls: list[Path] = []

    def corrupt_copies(path: Path) -> str:
        calls.append(path)
        return "not the file" if path.name == "copy" else real(path)

    monkeypatch.setattr(ceiling, "_digest", corrupt_copies)
    with pytest.raises(SystemExit, match="kept a copy unlike the file"):
        ceiling.measure(size_mib=4, rounds=1, work=tmp_path)
    assert calls
    assert not _namespaces() & {f"eltceil-a{os.getpid() % 100000}", f"eltceil-b{os.getpid() % 100000}"}
