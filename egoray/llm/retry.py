"""Generate, validate, retry: the loop every generation job shares.

Each attempt is one Ray Data pass over the rows still pending (id and prompt only); outputs are
validated in the driver; rows that fail are tried again with fresh sampling seeds, up to
``max_attempts``, and then reported as failed with the reason and the raw output of the last try.
Nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.schemas import Parsed
from egoray.llm.stage import generate
from egoray.runtime import dataset_from_table

Validator = Callable[[dict[str, Any], list[str]], Parsed]


@dataclass
class Outcome:
    """What happened to one row: a value, or the failure with the outputs of the last attempt."""

    value: Any = None
    parsed: Parsed | None = None
    raw: list[str] | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.parsed is None


def collect(ds: Any) -> pa.Table:
    """Execute a Ray Dataset and bring its rows to the driver as one Arrow table."""
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


def generate_validated(
    rows: list[dict[str, Any]],
    *,
    id_col: str,
    prompt_col: str,
    engine: EngineConfig,
    params: GenerationParams,
    validate: Validator,
    schema: dict[str, Any] | None = None,
    n: int = 1,
    max_attempts: int = 3,
    columns: list[str] | None = None,
) -> dict[str, Outcome]:
    """Outcome per row id, for every row given.

    ``columns`` are the extra row fields ``validate`` reads (sent along with id and prompt).
    """

    outcomes: dict[str, Outcome] = {}
    used: dict[str, int] = {r[id_col]: 0 for r in rows}
    pending = list(rows)
    keep = [id_col, prompt_col, *(columns or [])]
    for round_no in range(max_attempts):
        if not pending:
            break
        table = pa.Table.from_pylist([{k: r[k] for k in keep} for r in pending])
        left = max_attempts - min(used[r[id_col]] for r in pending)
        ds = generate(dataset_from_table(table, engine.batch_size, engine.num_actors), engine, params,
                      prompt_col, "_out", schema, n, round_no,
                      validate=validate, max_attempts=left)
        result = collect(ds)
        outputs: dict[str, list[tuple[int, str]]] = {}
        tries: dict[str, int] = {}
        if result.num_rows:
            for rid, sample, text, k in zip(result[id_col].to_pylist(), result["sample"].to_pylist(),
                                            result["_out"].to_pylist(), result["_attempts"].to_pylist(), strict=True):
                outputs.setdefault(rid, []).append((sample, text))
                tries[rid] = k
        still = []
        for row in pending:
            rid = row[id_col]
            used[rid] += max(1, tries.get(rid, 1))
            outs = [t for _, t in sorted(outputs.get(rid, []))]
            parsed = validate(row, outs)
            if parsed.ok:
                outcomes[rid] = Outcome(value=parsed.value, attempts=used[rid])
            elif used[rid] < max_attempts:
                still.append(row)
            else:
                outcomes[rid] = Outcome(parsed=parsed, raw=outs, attempts=used[rid])
        pending = still
    return outcomes
