"""A batch job's memory is bounded by its chunks, not by its input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import Job, MemoryCap, group_pss

ROWS, COLUMNS = 4_000_000, 8
INPUT_BYTES = ROWS * COLUMNS * 8  # 256 MB of float64 once read
CHUNK_ROWS = 20_000  # 1.3 MB a chunk
STEADY_CAP = INPUT_BYTES // 4  # growth allowed once scoring runs
STARTUP_CAP = INPUT_BYTES // 2  # growth allowed to get there: a worker forked, the reader open


@pytest.fixture(scope="module")
def large_input(tmp_path_factory):
    """256 MB of doubles once read, a few MB on disk: values repeat, so they compress."""
    path = tmp_path_factory.mktemp("large") / "large.parquet"
    values = pa.array(np.tile(np.arange(1000, dtype=np.float64) / 7, ROWS // 1000))
    table = pa.table({f"f{i}": values for i in range(COLUMNS)})
    pq.write_table(table, path, row_group_size=50_000)
    return path


def test_scoring_an_input_larger_than_the_memory_cap(batch_models, large_input, tmp_path, jobs):
    output = tmp_path / "scored"
    options = ("--input", str(large_input), "--output", str(output))
    job = Job(
        batch_models["sum"], *options, "--workers", "1", "--chunk-rows", str(CHUNK_ROWS),
        log=tmp_path / "job.log",
    )  # fmt: skip
    jobs.append(job)
    # The footprint once the model is loaded (the job writes _job.json then), and once the
    # first part is written; the job is killed if it grows past the cap after that.
    loaded: list[int] = []

    def scoring() -> bool:
        if not loaded and (output / "_job.json").exists():
            loaded.append(group_pss(job.process.pid))
        return bool(loaded) and any(output.glob("part-*"))

    cap = MemoryCap(job.process.pid, STEADY_CAP, scoring)
    try:
        code = job.wait()
    finally:
        cap.close()
    assert not cap.killed, f"grew by {cap.peak_growth >> 20} MB, over {STEADY_CAP >> 20} MB"
    assert code == 0, job.log()
    assert cap.baseline is not None and loaded
    assert cap.baseline - loaded[0] < STARTUP_CAP, (
        f"grew by {(cap.baseline - loaded[0]) >> 20} MB before its first part"
    )
    assert json.loads((output / "_SUCCESS").read_text())["rows"] == ROWS
    predictions = pq.read_table(output, columns=["prediction"])["prediction"].to_numpy()
    expected = np.tile(np.arange(1000, dtype=np.float64) / 7 * COLUMNS, ROWS // 1000)
    np.testing.assert_allclose(predictions, expected)
