"""MetaStore: group commit survives callers that give up."""

from __future__ import annotations

import asyncio
import threading

from mesh.store.meta import MetaStore, record_chunks


def test_a_cancelled_writer_does_not_kill_the_writer_thread(tmp_path):
    meta = MetaStore(tmp_path / "meta.sqlite")
    gate = threading.Event()

    def slow(conn):  # holds the writer so the next operations queue behind it
        gate.wait(5)

    async def main() -> None:
        blocker = asyncio.ensure_future(meta.write(slow))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(meta.write(record_chunks([("a" * 64, 1)])))
        await asyncio.sleep(0.05)
        doomed.cancel()
        await asyncio.sleep(0.05)  # the cancellation reaches the writer's future in a loop callback
        gate.set()
        await blocker
        await asyncio.wait_for(meta.write(record_chunks([("b" * 64, 2)])), 5)

    asyncio.run(main())
    assert meta.has_chunks(["a" * 64, "b" * 64]) == {"b" * 64}, "the cancelled write was not carried out"
    meta.close()


def test_a_batch_of_only_non_durable_writes_commits_without_fsync_and_the_next_durable_one_fsyncs(tmp_path):
    meta = MetaStore(tmp_path / "meta.sqlite")
    seen: list[int] = []

    def mode(conn):  # what the writer connection's transaction runs under
        seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])

    meta.submit(mode, durable=False).result(5)
    meta.submit(mode).result(5)
    meta.submit(record_chunks([("c" * 64, 3)]), durable=False).result(5)
    assert seen == [1, 2], "NORMAL (1) for a non-durable batch, FULL (2) for a durable one"
    assert meta.has_chunks(["c" * 64]) == {"c" * 64}, "a non-durable write is visible once done"
    meta.close()


def test_a_batch_settles_each_callers_own_result_or_error_on_the_loop_and_in_threads(tmp_path):
    meta = MetaStore(tmp_path / "meta.sqlite")
    gate = threading.Event()

    def hold(conn):  # the operations below queue behind it and commit as one batch
        gate.wait(5)

    def value(n):
        return lambda conn: conn.execute("SELECT ?", (n,)).fetchone()[0]

    def broken(conn):
        raise ValueError("this one only")

    async def main() -> None:
        first = asyncio.ensure_future(meta.write(hold))
        await asyncio.sleep(0.05)
        writes = [asyncio.ensure_future(meta.write(value(n) if n % 5 else broken)) for n in range(1, 21)]
        submitted = [meta.submit(value(100 + n)) for n in range(5)]  # a thread's callers, same batch
        await asyncio.sleep(0.05)
        gate.set()
        await first
        got = await asyncio.gather(*writes, return_exceptions=True)
        for n, result in zip(range(1, 21), got, strict=True):
            if n % 5:
                assert result == n
            else:
                assert isinstance(result, ValueError) and str(result) == "this one only"
        assert [f.result(5) for f in submitted] == [100, 101, 102, 103, 104]

    asyncio.run(main())
    late = asyncio.new_event_loop()  # a loop that closes before its write is settled
    fut = late.create_future()
    late.close()
    meta._queue.put((value(7), fut, False))
    assert meta.submit(value(8)).result(5) == 8, "the writer thread outlives a closed loop"
    meta.close()
