from egoray import storage
from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.prompts import SummaryPrompts
from egoray.llm.steps import SummaryStep
from egoray.pipelines import rephrase, validate_config
from egoray.pipelines.rephrase import clean_paraphrases
from tests.killing import assert_no_leftovers, kill_mid_run


def test_clean_paraphrases():
    got = clean_paraphrases("The camera wearer cuts the onion",
                            ["the camera wearer cuts the onion.", "Paraphrase: C slices an onion\nmore",
                             "C slices an onion!", "", "  ", "The wearer chops onion"])
    assert got == ["C slices an onion", "The wearer chops onion"]


def test_rephrase_job(ingested_small, tmp_path):
    config = validate_config({"job": "rephrase", "input": str(ingested_small), "output": str(tmp_path / "r"),
                              "limit": 10, "k": 3,
                              "params": {"max_new_tokens": 10, "temperature": 1.0}, "ray": {"in_process": True}})
    manifest = rephrase.run(config)  # the reference in process; the killed two-actor run on Ray must equal it
    c = manifest["stages"]["paraphrase"]
    assert c["in"] == 10 == c["out"] + c["rejected"]
    table = storage.read_parquet(str(tmp_path / "r" / "paraphrases"))
    assert table.num_rows == c["out"]
    for row in table.to_pylist():
        assert 1 <= len(row["paraphrases"]) <= 3
        keys = [" ".join(p.lower().split()) for p in row["paraphrases"]]
        assert len(set(keys)) == len(keys)
        assert row["text"] and row["text"].lower() not in keys
    # LaViLa's rephraser pickle: a tuple per narration, its original first, readable by ingest
    import pickle

    from egoray.data.lavila import lavila_style, read_lavila_pickle
    from egoray.pipelines.rephrase import write_rephraser_pkl

    tuples = pickle.loads((tmp_path / "r" / "rephraser.pkl").read_bytes())
    by_video = sorted(table.to_pylist(), key=lambda r: (r["video_uid"], r["t_start"], r["narration_id"]))
    assert tuples == [(r["video_uid"], r["t_start"], r["t_end"], [r["text"], *r["paraphrases"]]) for r in by_video]
    assert manifest["narrations_in_pkl"] == len(tuples)
    back = read_lavila_pickle((tmp_path / "r" / "rephraser.pkl").read_bytes())
    assert back.num_rows == sum(1 + len(r["paraphrases"]) for r in by_video) and back["issue"].null_count == back.num_rows
    write_rephraser_pkl(str(tmp_path / "r"), "lavila")
    styled = pickle.loads((tmp_path / "r" / "rephraser.pkl").read_bytes())
    assert [t[3] for t in styled] == [[lavila_style(x) for x in t[3]] for t in tuples]
    assert any(x.startswith("#C C ") for t in styled for x in t[3])

    # two actors, SIGKILL mid-run, the same job again: the paraphrases of the one-actor run
    two = config.model_copy(update={"output": str(tmp_path / "r2"), "rows_per_file": 2,
                                    "ray": config.ray.model_copy(update={"in_process": False}),
                                    "engine": config.engine.model_copy(update={"num_actors": 2, "batch_size": 3})})
    assert kill_mid_run(two, tmp_path) >= 1
    resumed = rephrase.run(two)["stages"]["paraphrase"]
    assert (resumed["in"], resumed["out"], resumed["rejected"]) == (c["in"], c["out"], c["rejected"])
    got = storage.read_parquet(str(tmp_path / "r2" / "paraphrases"))
    assert sorted(got.select(["narration_id", "paraphrases"]).to_pylist(), key=lambda x: x["narration_id"]) == \
        sorted(table.select(["narration_id", "paraphrases"]).to_pylist(), key=lambda x: x["narration_id"])
    assert_no_leftovers(tmp_path / "r2")


def test_summary_step_through_the_engine():
    import pyarrow as pa

    from egoray.stages.base import REASON, pending
    from egoray.stages.generate import LLMStage

    stage = LLMStage(EngineConfig(model="tiny:llama", batch_size=4),
                     [SummaryStep(GenerationParams(max_new_tokens=12), SummaryPrompts())], "key")
    stage.setup()
    out = stage(pa.table({"key": ["v1", "v2"], "kept_captions": [["a hand opens a door", "a kitchen"], ["a cup"]]}))
    ok = pending(out)
    for row, good in zip(out.to_pylist(), ok, strict=True):
        assert (good and row["summary"].strip() and "\n" not in row["summary"]) or row[REASON] == "empty_output"
        assert 1 <= row["attempts_summary"] <= 3
