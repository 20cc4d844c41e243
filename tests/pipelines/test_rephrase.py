from egoray import storage
from egoray.config import validate_config
from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.summary import summarise
from egoray.pipelines import rephrase
from egoray.pipelines.rephrase import clean_paraphrases


def test_clean_paraphrases():
    got = clean_paraphrases("The camera wearer cuts the onion",
                            ["the camera wearer cuts the onion.", "Paraphrase: C slices an onion\nmore",
                             "C slices an onion!", "", "  ", "The wearer chops onion"])
    assert got == ["C slices an onion", "The wearer chops onion"]


def test_rephrase_job(ingested_small, tmp_path):
    config = validate_config({"job": "rephrase", "input": str(ingested_small), "output": str(tmp_path / "r"),
                              "limit": 10, "k": 3, "num_shards": 2,
                              "params": {"max_new_tokens": 10, "temperature": 1.0}})
    manifest = rephrase.run(config)
    c = manifest["stages"]["paraphrase"]
    assert c["in"] == 10 == c["out"] + c["rejected"]
    table = storage.read_parquet(str(tmp_path / "r" / "paraphrases"))
    assert table.num_rows == c["out"]
    for row in table.to_pylist():
        assert 1 <= len(row["paraphrases"]) <= 3
        keys = [" ".join(p.lower().split()) for p in row["paraphrases"]]
        assert len(set(keys)) == len(keys)
        assert row["text"] and row["text"].lower() not in keys


def test_summary_step_through_the_engine(ray_session):
    outcomes = summarise({"v1": ["a hand opens a door", "a kitchen"], "v2": ["a cup"]},
                         EngineConfig(model="tiny:llama", batch_size=4), GenerationParams(max_new_tokens=12))
    assert set(outcomes) == {"v1", "v2"}
    for o in outcomes.values():
        assert (o.ok and o.value.strip() and "\n" not in o.value) or o.parsed.reason == "empty_output"
        assert 1 <= o.attempts <= 3
