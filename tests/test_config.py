from pathlib import Path

import pytest

from egoray.config import ConfigError, JobConfig, apply_overrides, parse_override
from egoray.pipelines import load_config
from tests.conftest import ROOT

SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_shipped_configs():
    assert any(p.parent.name == "demo" for p in SHIPPED) and any(p.parent.name == "configs" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_every_shipped_config_loads(path: Path):
    config = load_config(str(path))
    assert isinstance(config, JobConfig)
    assert config.input and config.output
    # The header comment tells the user how to run it.
    assert "egoray run" in path.read_text().split("job:")[0]


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


BASE = "job: ingest\ninput: in.json\noutput: out\n"


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="key 'clean.min_wrds': unknown key"):
        load_config(_write(tmp_path, BASE + "clean:\n  min_wrds: 3\n"))


def test_bad_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match="key 'num_shards'"):
        load_config(_write(tmp_path, BASE + "num_shards: -2\n"))
    with pytest.raises(ConfigError, match="key 'clean.drop_splits.0'"):
        load_config(_write(tmp_path, BASE), ["clean.drop_splits=[holdout]"])


def test_missing_and_unknown_job(tmp_path):
    with pytest.raises(ConfigError, match="'job' is missing"):
        load_config(_write(tmp_path, "input: a\noutput: b\n"))
    with pytest.raises(ConfigError, match="unknown job 'nope'"):
        load_config(_write(tmp_path, "job: nope\ninput: a\noutput: b\n"))
    with pytest.raises(ConfigError, match="key 'output'"):
        load_config(_write(tmp_path, "job: ingest\ninput: a\n"))


def test_unreadable_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "job: [ingest\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_overrides_are_typed_and_nested(tmp_path):
    config = load_config(
        _write(tmp_path, BASE),
        ["num_shards=3", "clean.min_words=2", "clean.tags.other=someone", "input=s3://b/k.json",
         "clean.drop_splits=[val, test]", "ray.num_cpus=1"],
    )
    assert config.num_shards == 3
    assert config.clean.min_words == 2
    assert config.clean.tags.other == "someone"
    assert config.input == "s3://b/k.json"
    assert config.clean.drop_splits == ["val", "test"]
    assert config.ray.num_cpus == 1


def test_override_parsing():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=") == (["a"], "")
    assert parse_override("a=x=y") == (["a"], "x=y")
    with pytest.raises(ConfigError):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_fingerprint_ignores_ray_sizing(tmp_path):
    path = _write(tmp_path, BASE)
    a = load_config(path)
    assert a.fingerprint() == load_config(path, ["ray.num_cpus=1"]).fingerprint()
    assert a.fingerprint() != load_config(path, ["num_shards=2"]).fingerprint()


def test_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(_write(tmp_path, BASE), ["splits=data/s.json", "input=[a.json, s3://b/c.pkl]"])
    assert config.output == str(tmp_path / "out")
    assert config.splits == str(tmp_path / "data" / "s.json")
    assert config.input == [str(tmp_path / "a.json"), "s3://b/c.pkl"]
    assert load_config(_write(tmp_path, BASE), ["output=file://rel"]).output == f"file://{tmp_path}/rel"
    with pytest.raises(ConfigError, match="key 'output'"):
        load_config(_write(tmp_path, BASE), ["output= "])


def test_every_job_has_a_ray_jobs_entrypoint():
    """``egoray submit`` runs ``python jobs/<job>.py`` on the cluster: one file per job, naming it."""
    from egoray.pipelines import job_names

    for job in job_names():
        entry = ROOT / "jobs" / f"{job}.py"
        assert entry.exists(), f"jobs/{job}.py is missing"
        assert f'main("{job}")' in entry.read_text()


def test_the_other_training_jobs_aux_key_says_what_this_job_takes():
    from egoray.pipelines import validate_config

    with pytest.raises(ConfigError, match=r"aux.0.*texts is train_video_text's key.*takes text_features"):
        validate_config({"job": "train_dual_encoder", "input": "i", "output": "o", "video_features": "v",
                         "text_features": "t", "aux": [{"texts": "narrated"}]})
    with pytest.raises(ConfigError, match=r"aux.0.*text_features is train_dual_encoder's key.*give texts"):
        validate_config({"job": "train_video_text", "input": "i", "output": "o", "videos": "v",
                         "aux": [{"text_features": "embedded"}]})
    # both share one block: the window offset rule (pseudo texts are not widened unless asked)
    config = validate_config({"job": "train_video_text", "input": "i", "output": "o", "videos": "v",
                              "aux": [{"texts": "narrated"}, {"texts": "rephrased", "offset_sec": 0.5}]})
    assert [a.window_offset("pseudo", 1.0) for a in config.aux] == [0.0, 0.5]
    assert config.aux[0].window_offset("human", 1.0) == 1.0
