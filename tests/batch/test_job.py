"""What a batch job reads and writes, decided from its description before any model loads."""

from __future__ import annotations

import pytest

from modelhost.batch.formats import count_rows
from modelhost.batch.job import BatchJob, input_format, output_format, resolve_inputs
from modelhost.errors import InvalidInput


def job(tmp_path, input_: str, output: str = "out", **options) -> BatchJob:
    return BatchJob("models:/m/1", input_, str(tmp_path / output), **options)


def test_a_folder_gives_its_data_files_in_name_order(tmp_path):
    folder = tmp_path / "in"
    (folder / "day=2").mkdir(parents=True)
    for name in ("b.csv", "a.csv", "day=2/c.csv", "_SUCCESS", ".a.csv.crc"):
        (folder / name).write_text("x\n1\n")
    files = resolve_inputs(job(tmp_path, str(folder)))
    assert [f.relative_to(folder).as_posix() for f in files] == ["a.csv", "b.csv", "day=2/c.csv"]
    assert input_format(job(tmp_path, str(folder)), files) == "csv"


def test_a_glob_that_matches_nothing_is_named(tmp_path):
    with pytest.raises(InvalidInput, match=r"No file matches the input pattern '.*\*\.parquet'"):
        resolve_inputs(job(tmp_path, str(tmp_path / "*.parquet")))
    with pytest.raises(InvalidInput, match="neither a file, a folder nor a glob"):
        resolve_inputs(job(tmp_path, str(tmp_path / "missing.parquet")))


def test_formats_come_from_names_unless_given(tmp_path):
    (tmp_path / "rows.txt").write_text("{}\n")
    files = resolve_inputs(job(tmp_path, str(tmp_path / "rows.txt")))
    with pytest.raises(InvalidInput, match="--input-format"):
        input_format(job(tmp_path, str(tmp_path / "rows.txt")), files)
    assert input_format(job(tmp_path, "x", input_format="jsonl"), files) == "jsonl"
    assert output_format(job(tmp_path, "x", "scored.csv")) == "csv"
    assert output_format(job(tmp_path, "x", "scored")) == "parquet"
    assert output_format(job(tmp_path, "x", "scored.csv", output_format="jsonl")) == "jsonl"


def test_options_are_checked_where_they_enter(tmp_path):
    with pytest.raises(InvalidInput, match="error_threshold must be -1"):
        job(tmp_path, "x", error_threshold=-2)
    with pytest.raises(InvalidInput, match="Unknown output_format 'xlsx'"):
        job(tmp_path, "x", output_format="xlsx")
    described = job(tmp_path, "x", workers=3, progress_file="/tmp/p.json")
    assert BatchJob.from_json(described.to_json()) == described


def test_rows_are_counted_for_the_time_left(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n5,6")  # no line end after the last row
    (tmp_path / "b.jsonl").write_text('{"x": 1}\n{"x": 2}\n')
    assert count_rows([tmp_path / "a.csv"], "csv") == 3
    assert count_rows([tmp_path / "b.jsonl", tmp_path / "b.jsonl"], "jsonl") == 4
