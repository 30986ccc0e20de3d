"""Export a run's per-episode records to CSV or Parquet."""

from __future__ import annotations

import csv
from pathlib import Path

from safetybed.errors import InputError
from safetybed.runner.store import iter_rows
from safetybed.sims.rollout import EpisodeRecord

FORMATS = ("csv", "parquet")


def export_records(records: list[EpisodeRecord], *, run_id: str, fmt: str, out: str | Path) -> Path:
    """Write one row per episode (``run_id`` first); ``inf`` distances are kept as ``inf``."""
    out = Path(out)
    if fmt not in FORMATS:
        raise InputError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.parent and not out.parent.exists():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    rows = [{"run_id": run_id, **row} for row in iter_rows(records)]
    columns = ["run_id", *EpisodeRecord.DETERMINISTIC_FIELDS, "wall_time_s"]
    if fmt == "csv":
        with out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return out
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("--format parquet needs pyarrow: pip install 'safetybed[export]'") from None
    table = pa.table({column: [row[column] for row in rows] for column in columns})
    pq.write_table(table, out)
    return out
