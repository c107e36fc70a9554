"""The fingerprint benchmark (``python -m bench.fingerprint``) on a few files: it makes its folder once and its
cold and warm runs agree on the content hash."""

from __future__ import annotations

from pathlib import Path

from bench.fingerprint import run


def test_the_fingerprint_bench_times_cold_and_warm_runs_of_one_hash(tmp_path: Path) -> None:
    record = run(files=25, repeats=2, workdir=tmp_path)
    assert record["files"] == 25 and len(list((tmp_path / "source").rglob("*.png"))) == 25
    assert record["cold_s"] >= 0 and record["warm_s"] >= 0 and len(record["content_hash"]) == 64
    made = {p: p.stat().st_mtime_ns for p in (tmp_path / "source").rglob("*.png")}
    assert run(files=25, repeats=1, workdir=tmp_path)["content_hash"] == record["content_hash"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "source").rglob("*.png")} == made  # not made again
