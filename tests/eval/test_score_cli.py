"""``egoray score`` and ``egoray report`` as a user runs them: files in, one JSON object out."""

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from egoray.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_score_retrieval_square_and_with_relevancy(tmp_path, capsys):
    np.save(tmp_path / "sim.npy", np.eye(4) + 0.1)
    code, out, _ = _run(capsys, "score", "retrieval", "--sim", str(tmp_path / "sim.npy"))
    m = json.loads(out)
    assert code == 0 and m["v2t_R@1"] == m["t2v_R@1"] == 1.0 and m["queries"] == 4
    # reversed scores with an EK-100-style pickle relevancy
    rel = np.eye(4, dtype=np.float32)
    rel[0, 1] = 0.5
    (tmp_path / "rel.pkl").write_bytes(pickle.dumps(rel))
    np.save(tmp_path / "rev.npy", -np.eye(4))
    code, out, _ = _run(capsys, "score", "retrieval", "--sim", str(tmp_path / "rev.npy"),
                        "--relevancy", str(tmp_path / "rel.pkl"))
    m = json.loads(out)
    assert code == 0 and m["v2t_R@1"] == 0.0 and m["v2t_median_rank"] == 4.0
    assert m["v2t_mAP"] < 0.5 and m["avg_nDCG"] == 0.0  # the first K ranks hold nothing relevant
    np.save(tmp_path / "wrong.npy", np.eye(3))
    code, _, err = _run(capsys, "score", "retrieval", "--sim", str(tmp_path / "wrong.npy"),
                        "--relevancy", str(tmp_path / "rel.pkl"))
    assert code == 1 and "one shape" in err and err.count("\n") == 1


def test_score_gap_writes_a_plot(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(12, 5)) + 2)
    np.save(tmp_path / "b.npy", rng.normal(size=(12, 5)) - 2)
    code, out, _ = _run(capsys, "score", "gap", "--a", str(tmp_path / "a.npy"), "--b", str(tmp_path / "b.npy"),
                        "--plot", str(tmp_path / "gap.png"))
    m = json.loads(out)
    assert code == 0 and m["pairs"] == 12 and m["gap_norm"] > 1
    assert (tmp_path / "gap.png").read_bytes()[:4] == b"\x89PNG"


def test_score_captions_from_json_and_parquet(tmp_path, capsys):
    (tmp_path / "pred.json").write_text(json.dumps({"a": "open the door", "zzz": "never referenced"}))
    pq.write_table(pa.table({"id": ["a", "b", "b"], "text": ["open the door", "close the door", "shut it"]}),
                   tmp_path / "ref.parquet")
    code, out, _ = _run(capsys, "score", "captions", "--pred", str(tmp_path / "pred.json"),
                        "--ref", str(tmp_path / "ref.parquet"), "--tokenizer", "none")
    m = json.loads(out)  # stdout is exactly one JSON object (the scorers' own prints go to stderr)
    assert code == 0 and m["items"] == 2
    # b has no prediction: it is scored as an empty caption, not dropped; zzz has no reference
    assert m["missing_predictions"] == 1 and m["unmatched_predictions"] == 1
    assert m["ROUGE-L"] == pytest.approx(0.5) and 0.3 < m["METEOR"] < 0.7  # one perfect, one empty
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, _, err = _run(capsys, "score", "captions", "--pred", str(tmp_path / "bad.json"),
                        "--ref", str(tmp_path / "ref.parquet"))
    assert code == 1 and "expected" in err


def test_report_of_a_missing_or_empty_directory(tmp_path, capsys):
    code, _, err = _run(capsys, "report", str(tmp_path / "nope"))
    assert code == 1 and "no such run directory" in err
    code, _, err = _run(capsys, "report", str(tmp_path))
    assert code == 1 and "no job outputs" in err
