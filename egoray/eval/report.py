"""``egoray report RUN_DIR``: one self-contained HTML page about a run directory.

A run directory holds job outputs (each with its ``run.json``), as ``egoray demo`` writes them.
The page shows the jobs (status, counts, reject reasons) and a timeline of them and their stages;
the metrics of any ``eval`` output, each table with a line saying what it measures and its chance
or baseline level, and the modality-gap plots; a training curve per training run; a grid of
held-out clips (frame thumbnails, the human narration, every narrate output's text, a QA pair);
and readable samples of the other outputs. Every picture is an embedded PNG, so the one file can
be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from egoray import storage
from egoray.data.raw import InputError

CSS = """
body{font-family:system-ui,-apple-system,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.bad{color:#b42318}img{max-width:48%;margin:.3em;border:1px solid #eee}
img.wide{max-width:100%}img.thumb{max-width:none;margin:0;image-rendering:pixelated;height:72px}
.muted{color:#777;font-size:.85em}p.note{color:#555;font-size:.85em;margin:-.8em 0 1.2em;max-width:60em}
table.grid td{max-width:14em}table.grid td.frames{max-width:none;white-space:nowrap}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[dict[str, Any]], limit: int = 12) -> str:
    if not rows:
        return "<p class=muted>(none)</p>"
    cols = list(dict.fromkeys(k for r in rows[:limit] for k in r))
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for r in rows[:limit]:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if isinstance(v, list):
                v = " | ".join(str(x) for x in v)
            cls = " class=n" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{_e(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p class=muted>{len(rows) - limit} more not shown</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = [{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float, str))]
    nested = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    out = _table(rows, limit=200) if rows else ""
    for name, sub in nested.items():
        out += f"<h4>{_e(name)}</h4>" + _metrics_table(sub)
    return out


def _job_dirs(run_dir: str) -> list[str]:
    found = [run_dir] if storage.exists(storage.join(run_dir, "run.json")) else []
    for child in storage.listdirs(run_dir):
        if storage.exists(storage.join(child, "run.json")):
            found.append(child)
    return found


def _reject_reasons(job_dir: str) -> dict[str, int]:
    url = storage.join(job_dir, "rejects")
    if not storage.exists(url):
        return {}
    try:
        reasons = storage.read_parquet(url, columns=["reason"])["reason"].to_pylist()
    except (storage.StorageError, KeyError, pa.ArrowInvalid):
        return {}
    return dict(Counter(reasons).most_common())


def _read(job_dir: str, table: str, columns: list[str] | None = None, limit: int = 8) -> list[dict[str, Any]]:
    """The first rows of a table, for a look at it: files are read one at a time until enough."""
    rows: list[dict[str, Any]] = []
    for url in storage.listdir(storage.join(job_dir, table), ".parquet"):
        try:
            rows += storage.read_parquet(url, columns=columns).slice(0, limit - len(rows)).to_pylist()
        except (storage.StorageError, KeyError, pa.ArrowInvalid):
            return rows
        if len(rows) >= limit:
            break
    return rows


# what an output holds → how the report shows a few of its rows: (table, columns it must have,
# heading, columns shown, rows); the first view an output matches is its samples
SAMPLE_VIEWS = (
    ("qa", {"question", "answer"}, "Question–answer pairs", ["video_uid", "question", "answer", "wrong_answers"], 8),
    ("paraphrases", {"paraphrases"}, "Paraphrases", None, 8),
    ("captions", {"window_id", "k"}, "Narrator output", ["window_id", "k", "text", "nll"], 10),
    ("captions", {"kept_captions", "summary"}, "Frame captions and summaries",
     ["video_uid", "kept_captions", "summary"], 6),
    ("narrations", {"raw_text", "text"}, "Narrations (raw → cleaned) and summaries",
     ["video_uid", "t_start", "raw_text", "text", "split"], 6),
)


def _samples(job_dir: str) -> tuple[str, str]:
    """(heading, html) of readable examples from an output, by the tables it holds, or ("", "")."""
    from egoray.eval.report_samples import holds

    for table, needs, heading, columns, limit in SAMPLE_VIEWS:
        if holds(job_dir, table, needs):
            body = _table(_read(job_dir, table, columns, limit=limit))
            if table == "narrations":
                body += _table(_read(job_dir, "summaries", ["video_uid", "text"], limit=4))
            return heading, body
    return "", ""


TRAINING_KEYS = ("loss", "eval_loss", "t2v_R@1", "v2t_R@1", "t2v_median_rank", "chance_R@1",
                 "t2v_R@1_label", "chance_R@1_label")


def _training_row(name: str, run: dict[str, Any]) -> dict[str, Any]:
    """One row per training job: the headline held-out numbers before and after training."""
    before, after = run.get("initial_metrics") or {}, run["final_metrics"]
    row: dict[str, Any] = {"output": name, "job": run.get("job", ""), "epochs": after.get("epoch", "")}
    for key in TRAINING_KEYS:
        if key in after:
            row[key] = f"{_fmt(before[key])} → {_fmt(after[key])}" if key in before else _fmt(after[key])
    return row


def _img(data: bytes, alt: str, cls: str = "") -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img{f" class={cls}" if cls else ""} alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'


def _curves(job_dir: str, name: str) -> str:
    """The training curves of a training output's metrics table (one row per evaluation)."""
    from egoray.eval.report_figures import training_curves

    rows = _read(job_dir, "metrics", limit=10_000)
    if not rows:
        return ""
    return f"<h3>{_e(name)}</h3>" + _img(training_curves(name, rows), f"training curves of {name}", "wide")


def _eval_html(job_dir: str) -> str:
    from egoray.eval.metric_notes import metric_note

    parts = []
    metrics_url = storage.join(job_dir, "metrics.json")
    metrics = storage.read_json(metrics_url) if storage.exists(metrics_url) else {}
    samples_url = storage.join(job_dir, "samples.json")
    samples = storage.read_json(samples_url) if storage.exists(samples_url) else {}
    for section, values in metrics.items():
        shown = {k: v for k, v in values.items() if k != "gap_vector"}
        if section == "gap":
            shown = {src: {k: v for k, v in m.items() if k != "gap_vector"} for src, m in values.items()}
        parts.append(f"<h3>{_e(section)}</h3>{_metrics_table(shown)}<p class=note>{_e(metric_note(section, values))}</p>")
        if samples.get(section):
            parts.append(f"<details><summary>samples</summary>{_table(samples[section])}</details>")
    plots_url = storage.join(job_dir, "plots")
    if storage.exists(plots_url):
        imgs = [_img(storage.read_bytes(url), storage.basename(url))
                for url in sorted(storage.listdir(plots_url, ".png"))]
        parts.append("<h3>modality-gap plots</h3>" + "".join(imgs))
    return "".join(parts)


def headline_items(metrics: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    """The eval's headline numbers, each with the level it has to beat (each section says its own)."""
    from egoray.eval.sections import kind_of

    items = []
    for section, m in metrics.items():
        kind = kind_of(section)
        if kind is not None and isinstance(m, dict):
            items += kind.headlines(section, m)
    return items


def build_report(run_dir: str) -> str:
    """The HTML of the report of ``run_dir``."""
    run_dir = run_dir.rstrip("/")
    if not storage.exists(run_dir):
        raise InputError(f"{run_dir}: no such run directory")
    dirs = _job_dirs(run_dir)
    if not dirs:
        raise InputError(f"{run_dir}: no job outputs (no run.json in it or its subdirectories)")
    from egoray.eval.metric_notes import training_note
    from egoray.eval.report_figures import headline, timeline
    from egoray.eval.report_samples import sample_grid

    runs = [(d, storage.read_json(storage.join(d, "run.json"))) for d in dirs]
    runs.sort(key=lambda dr: (dr[1].get("started_at") or "", dr[0]))  # the order they ran in
    overview, sample_html, eval_html, train_rows, curves = [], [], [], [], []
    headlines: list[tuple[str, float, float, str]] = []
    for d, run in runs:
        wall = run.get("timings", {}).get("wall_this_run")
        stages = "; ".join(f"{name}: {c.get('in', 0)} in → {c.get('out', 0)} out, {c.get('rejected', 0)} rejected"
                           for name, c in run.get("stages", {}).items())
        reasons = _reject_reasons(d)
        status = run.get("status", "?")
        overview.append({
            "output": storage.basename(d) or d, "job": run.get("job", "?"),
            "status": status, "finished": run.get("finished_at") or "",
            "seconds (last run)": round(wall, 1) if isinstance(wall, (int, float)) else "",
            "stages": stages, "reject reasons": ", ".join(f"{k} ×{v}" for k, v in reasons.items()),
        })
        heading, body = _samples(d)
        if heading:
            sample_html.append(f"<h3>{_e(heading)} <span class=muted>({_e(storage.basename(d))})</span></h3>{body}")
        metrics_url = storage.join(d, "metrics.json")
        if storage.exists(metrics_url):  # an eval output
            eval_html.append(_eval_html(d))
            headlines += headline_items(storage.read_json(metrics_url))
        elif run.get("final_metrics"):
            train_rows.append(_training_row(storage.basename(d), run))
            curves.append(_curves(d, storage.basename(d)))
    chart = timeline([{**run, "name": storage.basename(d)} for d, run in runs])
    grid = sample_grid(run_dir, runs)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    incomplete = sum(1 for _, r in runs if r.get("status") != "complete")
    status = (f"<span class=ok>all {len(runs)} jobs complete</span>" if not incomplete
              else f"<span class=bad>{incomplete} of {len(runs)} jobs not complete</span>")
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>egoray report: {_e(run_dir)}</title><style>{CSS}</style></head><body>"
        f"<h1>egoray report</h1><p>{_e(run_dir)} · generated {now} · {status}</p>"
        + (f"<h2>What the models learned</h2>{_img(headline(headlines), 'headline metrics', 'wide')}"
           "<p class=note>Each held-out metric (green: above the level it has to beat, red: not) beside chance, "
           "or for generated text beside a video-blind baseline that writes the most frequent training text "
           "for every clip. The tables below hold every number.</p>" if headlines else "") +
        f"<h2>Jobs</h2>{_table(overview, limit=100)}"
        + (_img(chart, "timeline of the jobs and their stages", "wide") if chart else "") +
        f"<h2>Metrics</h2>{''.join(eval_html) or '<p class=muted>no eval output in this run</p>'}"
        + (f"<h3>training (held-out, before → after)</h3>{_table(train_rows, limit=100)}"
           f"<p class=note>{_e(training_note(train_rows))}</p>" if train_rows else "")
        + (f"<h2>Training curves</h2>{''.join(curves)}" if any(curves) else "")
        + (f"<h2>Held-out clips</h2>{grid}" if grid else "") +
        f"<h2>Samples</h2>{''.join(sample_html)}"
        "</body></html>"
    )


def write_report(run_dir: str, out: str | None = None) -> str:
    """Write the report (default ``RUN_DIR/report.html``); returns its URL."""
    out = out or storage.join(run_dir.rstrip("/"), "report.html")
    storage.write_bytes(out, build_report(run_dir).encode("utf-8"))
    return out
