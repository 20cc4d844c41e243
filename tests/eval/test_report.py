"""The HTML report of a hand-built run directory (no Ray): headline, curves, timeline, the
held-out clip grid with decodable thumbnails, and a note under every metric table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from egoray.eval.report import build_report, headline_items
from egoray.eval.report_samples import THUMB_FRAMES, THUMB_SIZE
from tests.html_images import PageParser, decoded_images


def _write(path: Path, rows: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path / "part-0000.parquet")


def _run_json(d: Path, job: str, start: str, end: str, **extra) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.json").write_text(json.dumps({"job": job, "status": "complete", "started_at": start,
                                            "finished_at": end, "config": extra.pop("config", {}), **extra}))


@pytest.fixture
def run_dir(tmp_path, synth_videos) -> Path:
    run = tmp_path / "run"
    every = pq.read_table(synth_videos / "clips.parquet").to_pylist()
    clips = [next(c for c in every if c["video_uid"] == v) for v in sorted({c["video_uid"] for c in every})]
    assert len(clips) == 3  # the first clip of each video
    _run_json(run / "narrations", "ingest", "2026-01-01T10:00:00+00:00", "2026-01-01T10:00:02+00:00",
              stages={"validate": {"in": 3, "out": 3, "rejected": 0, "seconds": 1.5}})
    _write(run / "narrations" / "narrations",
           [{"video_uid": c["video_uid"], "t_start": c["t_start"], "t_end": c["t_end"],
             "raw_text": "#C C does it", "text": f"The camera wearer {c['verb']}s the {c['noun']}"} for c in clips])
    windows = [{"window_id": f"w{i}", "video_uid": c["video_uid"], "t_start": c["t_start"], "t_end": c["t_end"]}
               for i, c in enumerate(clips)]
    for name, start in (("narrate", "2026-01-01T10:00:05+00:00"), ("narrate_vlm", "2026-01-01T10:00:09+00:00")):
        config = {"backend": "vlm", "vlm": {"model": f"{run}/vlm/"}} if name == "narrate_vlm" else \
            {"model": f"{run}/narrator"}
        _run_json(run / name, "narrate", start, start.replace(":0", ":1", 1), config=config)
        _write(run / name / "captions", [{**w, "k": 0, "text": f"{name} says {i} <b>", "nll": 1.0}
                                         for i, w in enumerate(windows)])
    _run_json(run / "qa", "qa", "2026-01-01T10:00:03+00:00", "2026-01-01T10:00:04+00:00")
    _write(run / "qa" / "qa", [{"video_uid": clips[0]["video_uid"], "question": "What did C open?",
                                "answer": "the door", "wrong_answers": ["a cup", "the tap"]}])
    _run_json(run / "narrator", "train_narrator", "2026-01-01T10:00:02+00:00", "2026-01-01T10:00:05+00:00",
              initial_metrics={"eval_loss": 2.0}, final_metrics={"loss": 1.0, "eval_loss": 1.5, "epoch": 2})
    _write(run / "narrator" / "metrics", [
        {"epoch": e, "step": 3 * e, "loss": None if e == 0 else 2.0 - e / 2, "eval_loss": 2.0 - e / 4,
         "t2v_R@1": 0.1 * e, "chance_R@1": 0.05, "worker_peak_rss_mb": 900.0} for e in range(3)])
    _run_json(run / "eval", "eval", "2026-01-01T10:00:12+00:00", "2026-01-01T10:00:14+00:00",
              config={"input": str(synth_videos / "videos")})
    (run / "eval" / "metrics.json").write_text(json.dumps({
        "retrieval": {"items": 10, "t2v_R@1": 0.3, "chance_R@1": 0.1},
        "captioning-narrator": {"CIDEr": 1.2, "items": 3, "blind_text": "The camera wearer opens the door",
                                "blind_CIDEr": 0.3},
        "something_new": {"score": 0.5, "chance_score": 0.25}}))
    return run


def test_report_pictures_decode_and_each_table_says_what_it_measures(run_dir):
    html = build_report(str(run_dir))
    parser = PageParser()
    parser.feed(html)
    assert parser.stack == [], parser.stack  # every element closed
    images = decoded_images(html)
    alts = [a for a, _ in images]
    assert alts.count("headline metrics") == 1
    assert alts.count("training curves of narrator") == 1
    assert alts.count("timeline of the jobs and their stages") == 1
    thumbs = [px for a, px in images if a.startswith("frames of ")]
    assert len(thumbs) == 3  # one strip per held-out clip, each 4 frames of 72 px with 2 px gaps
    for px in thumbs:
        assert px.shape[:2] == (THUMB_SIZE, THUMB_FRAMES * THUMB_SIZE + 2 * (THUMB_FRAMES - 1))
        assert px[..., :3].std() > 0.01  # real frames, not a blank
    # the grid: one row per clip, a column per narrate output, the QA pair of the first video
    grid = html[html.index("<h2>Held-out clips</h2>"):html.index("<h2>Samples</h2>")]
    assert grid.count("<tr>") == 4 and "<th>narrate (narrator: narrator)</th>" in grid
    assert "<th>narrate_vlm (VLM: vlm)</th>" in grid
    assert "narrate_vlm says 2 &lt;b&gt;" in grid  # generated text is escaped
    assert grid.count("What did C open?") == 1 and grid.count("no question about this video") == 2
    assert "The camera wearer" in grid  # the human narration inside the clip
    notes = parser.notes
    assert any("chance R@1 = 0.1" in n for n in notes)
    assert any("Video-blind baseline" in n and "CIDEr 0.3" in n for n in notes)
    assert any("chance_score = 0.25" in n for n in notes)  # a section without a note of its own
    assert any(n.startswith("loss: training cross-entropy") for n in notes)
    # jobs in the order they ran
    order = [m.group(1) for m in re.finditer(r"<tr><td>([a-z_]+)</td><td>", html)][:6]
    assert order == ["narrations", "narrator", "qa", "narrate", "narrate_vlm", "eval"]


def test_headline_pairs_each_metric_with_its_baseline():
    items = headline_items({"retrieval": {"t2v_R@1": 0.3, "chance_R@1": 0.1},
                            "zeroshot": {"top1": 0.2, "chance_top1": 0.0125},
                            "mcq": {"accuracy": 0.2, "chance": 0.25},
                            "captioning-vlm": {"CIDEr": 0.5, "blind_CIDEr": 0.6},
                            "captioning-x": {"CIDEr": 0.5}})
    assert items == [("text→video R@1", 0.3, 0.1, "chance"), ("zero-shot top-1", 0.2, 0.0125, "chance"),
                     ("multiple-choice QA", 0.2, 0.25, "chance"), ("vlm CIDEr", 0.5, 0.6, "blind")]
