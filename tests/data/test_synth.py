import json
import pickle

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from egoray.data.em_pkl import read_em_pickle
from egoray.data.synth import NOUNS, VERBS, synthesize
from egoray.video.render import FrameRenderer


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    synthesize(a, videos=3, seed=11, with_videos=False)
    synthesize(b, videos=3, seed=11, with_videos=False)
    synthesize(c, videos=3, seed=12, with_videos=False)
    for name in ("narration.json", "em_train_narrations.pkl", "splits.json", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "narration.json").read_bytes() != (tmp_path / "c" / "narration.json").read_bytes()


def test_narration_json_has_the_ego4d_layout(synth_small):
    data = json.loads((synth_small / "narration.json").read_text())
    manifest = json.loads((synth_small / "manifest.json").read_text())
    assert len(data) == manifest["videos"] == 6
    texts, out_of_order, total = [], 0, 0
    for video in data.values():
        assert set(video) == {"narration_pass_1", "narration_pass_2"}
        for ann in video.values():
            stamps = [n["timestamp_sec"] for n in ann["narrations"]]
            out_of_order += sum(1 for x, y in zip(stamps, stamps[1:], strict=False) if y < x)
            total += len(stamps)
            for n in ann["narrations"]:
                assert set(n) == {"timestamp_sec", "timestamp_frame", "narration_text", "annotation_uid"}
                assert n["timestamp_frame"] == round(n["timestamp_sec"] * 30)
                texts.append(n["narration_text"])
            assert len({n["annotation_uid"] for n in ann["narrations"]}) == 1
            assert ann["summaries"][0]["summary_text"].startswith("#Summary")
    assert total == manifest["narrations"]
    assert out_of_order > 0
    assert any(t.startswith("#C C") for t in texts)
    assert any(t.startswith("#O") for t in texts)
    assert any("#unsure" in t for t in texts)


def test_pickle_and_splits(synth_small):
    clips = pickle.loads((synth_small / "em_train_narrations.pkl").read_bytes())
    assert {c["narration_pass"] for c in clips} == {"narration_pass_1"}
    assert all(len(n["timestamps"]) == 2 for c in clips for n in c["narrations"])
    assert read_em_pickle((synth_small / "em_train_narrations.pkl").read_bytes())["issue"].null_count == sum(
        len(c["narrations"]) for c in clips)
    splits = json.loads((synth_small / "splits.json").read_text())
    uids = set(json.loads((synth_small / "narration.json").read_text()))
    assert set().union(*map(set, splits.values())) == uids
    assert all(splits[k] for k in ("train", "val", "test"))
    labels = (synth_small / "labels.txt").read_text().split("\n")[:-1]
    assert len(labels) == len(VERBS) * len(NOUNS) and "cut onion" in labels


def _decode(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_videos_show_what_is_narrated(synth_videos):
    videos = pq.read_table(synth_videos / "videos.parquet").to_pylist()
    clips = pq.read_table(synth_videos / "clips.parquet").to_pylist()
    renderer = FrameRenderer(videos[0]["width"], len(VERBS), len(NOUNS))
    verb_index = {v[0]: i for i, v in enumerate(VERBS)}
    noun_index = {n: i for i, n in enumerate(NOUNS)}
    still = np.random.default_rng(0)
    hits_verb = hits_noun = total = 0
    for v in videos:
        frames = _decode(synth_videos / v["path"])
        assert len(frames) == v["frames"] == round(v["duration"] * v["fps"])
        assert frames.shape[1:] == (v["height"], v["width"], 3)
        assert abs(frames[0].astype(float).mean() - 110) < 10  # idle grey before the first action
        for c in (c for c in clips if c["video_uid"] == v["video_uid"]):
            t = (c["t_start"] + c["t_end"]) / 2
            frame = frames[int(t * v["fps"])].astype(np.float32)
            t_frame = (int(t * v["fps"]) + 0.5) / v["fps"]

            def err(verb, noun, frame=frame, t_frame=t_frame):
                ref = renderer.frame(t_frame, verb, noun, still).astype(np.float32)
                return float(np.mean((ref - frame) ** 2))

            best_verb = min(range(len(VERBS)), key=lambda i: err(i, noun_index[c["noun"]]))
            best_noun = min(range(len(NOUNS)), key=lambda j: err(verb_index[c["verb"]], j))
            hits_verb += best_verb == verb_index[c["verb"]]
            hits_noun += best_noun == noun_index[c["noun"]]
            total += 1
    assert total == 18
    assert hits_verb == total and hits_noun == total


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthesize(str(tmp_path), videos=0)
