"""Stages and sinks without Ray: reject marking, counting, the job stages on tiny models."""

import json
import pickle

import numpy as np
import pyarrow as pa
import pytest

from egoray import storage
from egoray.features.text import TextEncoderConfig
from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.prompts import QAPrompts, RephrasePrompts
from egoray.llm.steps import ParaphraseStep, QuestionStep, WrongAnswersStep
from egoray.stages.base import INPUT, REASON, STAGE, Resources, Sink, Stage, pending, read_counts, stage_counts
from egoray.stages.generate import LLMStage
from egoray.stages.text import TextEncodeStage, TextSink


class Halve(Stage):
    """Rejects odd values, doubles the even ones."""

    name = "halve"

    def process(self, rows):
        x = np.asarray(rows["x"].to_pylist())
        rows = rows.append_column("y", pa.array(x * 2))
        return self.reject(rows, x % 2 == 1, "odd", [f"x={v}" for v in x])


class Drop(Stage):
    name = "drop"

    def process(self, rows):
        return rows.slice(1)


def test_a_stage_marks_instead_of_dropping_and_later_stages_pass_marked_rows_through():
    batch = pa.table({"id": ["a", "b", "c", "d"], "x": [1, 2, 3, 4]})
    out = Halve()(batch)
    assert out.num_rows == 4 and pending(out).tolist() == [False, True, False, True]
    assert out[REASON].to_pylist() == ["odd", None, "odd", None] and out[STAGE][0].as_py() == "halve"

    class Square(Stage):
        name = "square"
        seen = []

        def process(self, rows):
            Square.seen.append(rows["id"].to_pylist())
            return rows.append_column("z", pa.array([v * v for v in rows["y"].to_pylist()]))

    again = Square()(out)
    assert Square.seen == [["b", "d"]]  # only the usable rows reach a later stage
    assert again.num_rows == 4 and sorted(again["id"].to_pylist()) == ["a", "b", "c", "d"]
    counts = stage_counts(again, ["halve", "square"])
    assert counts == {"halve": {"in": 4, "out": 2, "rejected": 2}, "square": {"in": 2, "out": 2, "rejected": 0}}
    with pytest.raises(RuntimeError, match="marks rows it cannot use"):
        Drop()(batch)


class TableSink(Sink):
    tables = ("things",)

    def write_rows(self, rows, output, base):
        storage.write_parquet(storage.join(output, "things", f"{base}.parquet"), rows)
        return {"things": rows.num_rows}


def test_a_sink_writes_rows_rejects_and_counts_under_one_base_name(tmp_path):
    batch = Halve()(pa.table({"id": ["a", "b", "c"], "x": [1, 2, 3]}))
    sink = TableSink(id_column="id", stages=["halve"], input_columns=["id", "x"])
    record = sink.write(batch, str(tmp_path), "w1_000003")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "_counts/w1_000003.json", "rejects/w1_000003.parquet", "things/w1_000003.parquet"]
    rejects = storage.read_parquet(str(tmp_path / "rejects")).to_pylist()
    assert [(r["record_id"], r["stage"], r["reason"], r["detail"]) for r in rejects] == [
        ("a", "halve", "odd", "x=1"), ("c", "halve", "odd", "x=3")]
    assert json.loads(rejects[0]["input"]) == {"id": "a", "x": 1}
    assert record["stages"]["halve"] == {"in": 3, "out": 1, "rejected": 2} and record["units"] == {"things": 1}
    assert read_counts(str(tmp_path)) == [record]
    assert "_reject_reason" not in storage.read_parquet(str(tmp_path / "things")).column_names


def test_text_stage_embeds_strings_and_lists_and_rejects_empty_text(tmp_path):
    stage = TextEncodeStage(TextEncoderConfig(model="tiny:sentence", normalize=True), "text", 8, Resources())
    stage.setup()
    out = stage(pa.table({"narration_id": ["n1", "n2", "n3"], "text": ["c opens the door", "", "c cuts bread"],
                          "video_uid": ["v1", "v1", "v2"]}))
    assert pending(out).tolist() == [True, False, True] and out[REASON][1].as_py() == "empty_text"
    vectors = np.array(out.filter(pa.array(pending(out)))["embedding"].to_pylist())
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sink = TextSink(id_column="narration_id", stages=["encode"], keep=["video_uid"], model="tiny:sentence")
    sink.write(out, str(tmp_path / "p"), "b0")
    emb = storage.read_parquet(str(tmp_path / "p" / "embeddings"))
    assert emb["id"].to_pylist() == ["n1", "n3"] and emb["video_uid"].to_pylist() == ["v1", "v2"]
    # a list column: one text per element, ids <id>#<k>, each with its own vector
    lists = stage_for_lists = TextEncodeStage(TextEncoderConfig(model="tiny:sentence"), "paraphrases", 8)
    lists.setup()
    out = stage_for_lists(pa.table({"narration_id": ["n1", "n2"], "paraphrases": [["a b", "c d"], []]}))
    assert pending(out).tolist() == [True, False]
    TextSink(id_column="narration_id", stages=["encode"], text_col="paraphrases", storage_format="hdf5",
             model="tiny:sentence").write(out, str(tmp_path / "h"), "b0")
    index = storage.read_parquet(str(tmp_path / "h" / "index"))
    assert index["id"].to_pylist() == ["n1#0", "n1#1"] and index["row"].to_pylist() == [0, 1]
    h5 = storage.read_hdf5_shard(str(tmp_path / "h" / "embeddings" / "b0.h5"))
    single = stage.encoder.encode(["c d"])
    np.testing.assert_allclose(h5["embeddings"][1], single[0] / np.linalg.norm(single[0]) * np.linalg.norm(
        h5["embeddings"][1]), atol=1e-5)


def test_llm_stage_retries_with_new_seeds_then_rejects_with_the_raw_output():
    groups = pa.table({"group_id": ["g1", "g2"], "texts": [["c opens the door"], ["c cuts bread"]],
                       "t_start": [0.0, 5.0], "t_end": [2.0, 7.0]})
    prompts = QAPrompts()
    short = QuestionStep(GenerationParams(max_new_tokens=3, temperature=1.0), prompts, max_attempts=2)
    stage = LLMStage(EngineConfig(model="tiny:llama"), [short, WrongAnswersStep(GenerationParams(), prompts)],
                     "group_id")
    stage.setup()
    out = stage(groups)
    assert not pending(out).any() and set(out[STAGE].to_pylist()) == {"question"}
    kept = json.loads(out[INPUT][0].as_py())
    assert kept["attempts"] == 2 and kept["raw_output"].startswith("{") and kept["narrations"]
    assert out["attempts_question"].to_pylist() == [2, 2]


def test_llm_outputs_of_an_item_do_not_depend_on_its_batch():
    step = ParaphraseStep(GenerationParams(max_new_tokens=10, temperature=1.0, top_k=50), RephrasePrompts(), k=3)
    stage = LLMStage(EngineConfig(model="tiny:t5"), [step], "narration_id")
    stage.setup()
    rows = pa.table({"narration_id": [f"n{i}" for i in range(5)],
                     "text": [f"the camera wearer picks up cup {i}" for i in range(5)]})
    together = stage(rows).sort_by("narration_id")["paraphrases"].to_pylist()
    apart = [stage(rows.slice(i, 1))["paraphrases"][0].as_py() for i in (3, 0, 4, 1, 2)]
    assert together == [apart[1], apart[3], apart[4], apart[0], apart[2]]


def test_a_crafted_pickle_and_a_crafted_model_file_are_refused(tmp_path):
    """Neither file may run code when egoray reads it."""
    import torch

    from egoray.data.raw import InputError
    from egoray.eval.relevancy import load_relevancy
    from egoray.models.checkpoint import load_exported

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (tmp_path / "rel.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(InputError):
        load_relevancy(str(tmp_path / "rel.pkl"))
    (tmp_path / "model").mkdir()
    torch.save({"kind": "narrator", "config": {}, "state_dict": {}, "x": Payload()}, tmp_path / "model" / "model.pt")
    with pytest.raises(InputError, match="refused to load"):
        load_exported(str(tmp_path))
    assert not marker.exists()
    # an honest array pickle (EK-100's relevancy) still loads
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(np.eye(3, dtype=np.float32)))
    np.testing.assert_array_equal(load_relevancy(str(tmp_path / "ok.pkl")), np.eye(3))
