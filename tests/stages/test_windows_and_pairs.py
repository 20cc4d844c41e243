"""Per-video window pooling and pair building, without Ray."""

import math

import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.features.windows import FeatureStore, VideoFeatures, pool, sample
from egoray.stages.base import REASON, STAGE, pending
from egoray.stages.pairs import Labels, PoolPairs, label_code
from egoray.stages.video import from_npy


def _naive(video: VideoFeatures, t1: float, t2: float) -> np.ndarray:
    """The per-item way (CLEP notebook's get_start_end_idx) on one video's array."""
    n = len(video.features)
    x1 = min(max(0, math.floor(t1 * video.fps)), n - 1)
    x2 = min(max(math.floor(t2 * video.fps), x1), n - 1)
    return video.features[x1:x2 + 1].mean(0)


def test_vectorised_pooling_equals_per_item_pooling():
    rng = np.random.default_rng(0)
    for fps, n in ((1.875, 7), (2.0, 3), (1.0, 12)):
        video = VideoFeatures(rng.normal(size=(n, 5)).astype(np.float32), fps)
        centre = rng.uniform(-2, 14, 100)
        got = pool(video, centre - 1.0, centre + 1.0)
        want = np.stack([_naive(video, a, b) for a, b in zip(centre - 1.0, centre + 1.0, strict=True)])
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_sampling_spreads_frames_and_repeats_when_short():
    video = VideoFeatures(np.arange(24, dtype=np.float32).reshape(12, 2), 1.0)
    out = sample(video, np.array([0.0]), np.array([11.9]), 4)
    np.testing.assert_array_equal(out[0], video.features[[1, 4, 7, 10]])
    short = sample(video, np.array([0.0]), np.array([0.1]), 3)
    np.testing.assert_array_equal(short[0], np.repeat(video.features[:1], 3, 0))


def _features(tmp_path):
    feats = {"va": np.arange(20, dtype=np.float32).reshape(10, 2), "vb": np.ones((4, 2), np.float32)}
    storage.write_hdf5_shard(str(tmp_path / "vf" / "features" / "part-0000.h5"), feats)
    storage.write_parquet(str(tmp_path / "vf" / "index" / "part-0000.parquet"), pa.Table.from_pylist([
        {"key": k, "video_uid": k, "file": "features/part-0000.h5", "n": len(v), "dim": 2, "fps": 1.0,
         "model": "m", "t_start": 0.0, "t_end": float(len(v))} for k, v in feats.items()]))
    return str(tmp_path / "vf"), feats


def test_feature_store_reads_one_key(tmp_path):
    url, feats = _features(tmp_path)
    store = FeatureStore(url)
    np.testing.assert_array_equal(store.get("va").features, feats["va"])
    assert store.get("no-such-video") is None and "vb" in store


def test_pairs_pool_the_right_window_per_video_and_reject_missing_videos(tmp_path):
    url, feats = _features(tmp_path)
    pooler = PoolPairs(url, offset=1.0)
    va = pa.table({"id": ["n1"], "video_uid": ["va"], "t_start": [3.5], "t_end": [3.5], "verb": ["open"],
                   "noun": ["jar"]})
    out = pooler(va)
    # n1: t = 3.5 ± 1 at 1 feature/s -> rows 2..4 of va
    np.testing.assert_allclose(out["video"][0].as_py(), feats["va"][2:5].mean(0))
    assert out["verb_code"][0].as_py() == label_code("open") >= 0 and pending(out).all()
    missing = pooler(pa.table({"id": ["n3", "n4"], "video_uid": ["vc", "vc"], "t_start": [0.0, 1.0],
                               "t_end": [0.0, 1.0]}))
    assert not pending(missing).any()
    assert missing[REASON].to_pylist() == ["no_video_features"] * 2 and missing[STAGE][0].as_py() == "pairs"
    frames = PoolPairs(url, offset=0.0, num_frames=2)(va)
    assert from_npy(frames["frames"][0].as_py()).shape == (2, 2)


def test_items_with_clip_keyed_features_take_their_own(tmp_path):
    """An item whose id is a key (a clip's own frames, e.g. one tower feature per clip) uses that
    key whatever its sampling; the others of the video pool its window; none: rejected."""
    url, feats = _features(tmp_path)
    clip = np.array([[5.0, 7.0], [1.0, 3.0]], np.float32)
    storage.write_hdf5_shard(str(tmp_path / "vf" / "features" / "part-0001.h5"), {"n2": clip})
    storage.write_parquet(str(tmp_path / "vf" / "index" / "part-0001.parquet"), pa.Table.from_pylist([
        {"key": "n2", "video_uid": "vc", "file": "features/part-0001.h5", "n": 2, "dim": 2, "fps": None,
         "model": "m", "t_start": 0.0, "t_end": 9.0}]))
    group = pa.table({"id": ["n2", "n3"], "video_uid": ["vc", "vc"], "t_start": [1.0, 2.0], "t_end": [2.0, 3.0]})
    out = PoolPairs(url, offset=1.0)(group)
    np.testing.assert_allclose(out["video"][0].as_py(), clip.mean(0))
    assert pending(out).tolist() == [True, False] and out[REASON][1].as_py() == "no_video_features"
    mixed = PoolPairs(url, offset=0.0, num_frames=4)(pa.table({
        "id": ["n2", "n5"], "video_uid": ["va", "va"], "t_start": [0.0, 0.0], "t_end": [3.9, 3.9]}))
    np.testing.assert_array_equal(from_npy(mixed["frames"][0].as_py()), clip[[0, 0, 1, 1]])
    np.testing.assert_array_equal(from_npy(mixed["frames"][1].as_py()), feats["va"][[0, 1, 2, 3]])


def test_labels_come_from_the_segment_containing_the_time(tmp_path):
    storage.write_parquet(str(tmp_path / "labels.parquet"), pa.table({
        "video_uid": ["a", "a", "b"], "t_start": [0.0, 5.0, 0.0], "t_end": [4.0, 9.0, 3.0],
        "verb": ["open", "cut", "wash"], "noun": ["jar", "bread", "cup"]}))
    labels = Labels(str(tmp_path / "labels.parquet"))
    verbs, nouns = labels.at("a", np.array([1.0, 4.5, 6.0]))
    assert verbs == ["open", None, "cut"] and nouns == ["jar", None, "bread"]
    assert labels.at("c", np.array([1.0])) == ([None], [None])
    assert label_code(None) == -1 and label_code("cut") == label_code("cut") != label_code("open")


def test_window_texts_flatten_paraphrase_lists_and_drop_empty_texts():
    from egoray.train.data import FlattenTexts

    batch = pa.table({"narration_id": ["n1", "n2"], "paraphrases": [["a cup", "", "the cup"], ["x"]],
                      "video_uid": ["va", "vb"], "t_start": [1.0, 2.0], "t_end": [2.0, 3.0]})
    out = FlattenTexts("narration_id", "paraphrases")(batch).to_pylist()
    assert [(r["id"], r["text"], r["video_uid"], r["t_start"]) for r in out] == [
        ("n1#0", "a cup", "va", 1.0), ("n1#2", "the cup", "va", 1.0), ("n2#0", "x", "vb", 2.0)]
    one = FlattenTexts("caption_id", "text")(pa.table({"caption_id": ["w#0"], "text": ["c"], "video_uid": ["va"],
                                                        "t_start": [0.0], "t_end": [1.0]}))
    assert one["id"].to_pylist() == ["w#0"] and one["text"].to_pylist() == ["c"]


def test_dense_windows_leave_out_narrated_time_and_table_windows_start_at_zero(tmp_path):
    from egoray.stages.narrate import DenseWindows, TableWindows

    storage.write_parquet(str(tmp_path / "narr" / "narrations" / "part-0000.parquet"), pa.table({
        "narration_id": ["a", "b", "c"], "video_uid": ["va", "va", "vb"], "t_start": [2.0, 9.5, 1.0],
        "t_end": [2.0, 9.5, 1.0], "text": ["x", "y", "z"]}))
    index = pa.table({"key": ["va", "vc"], "n": [12, 8], "fps": [1.0, 1.0], "t_start": [0.0, 0.0]})
    every = DenseWindows(4.0, 4.0)(index)
    assert [(r["video_uid"], r["t_start"]) for r in every.to_pylist()] == [
        ("va", 0.0), ("va", 4.0), ("va", 8.0), ("vc", 0.0), ("vc", 4.0)]
    # LaViLa's uncovered windows: va's narrations at 2 s and 9.5 s cover [0, 4] and [8, 12]; vc has none
    uncovered = DenseWindows(4.0, 4.0, uncovered=str(tmp_path / "narr"))(index)
    assert [(r["video_uid"], r["t_start"]) for r in uncovered.to_pylist()] == [("va", 4.0), ("vc", 0.0), ("vc", 4.0)]
    widened = TableWindows(None, offset=1.5)(pa.table({"video_uid": ["va", "va"], "t_start": [0.5, 5.0],
                                                      "t_end": [1.0, 6.0]}))
    assert widened["t_start"].to_pylist() == [0.0, 3.5] and widened["t_end"].to_pylist() == [2.5, 7.5]


def test_items_without_times_pool_the_whole_video_and_key_safely(tmp_path):
    from egoray.data.videos import clip_key, list_video_files

    url, feats = _features(tmp_path)
    out = PoolPairs(url, offset=1.0)(pa.table({"id": ["k1", "k2"], "video_uid": ["va", "va"],
                                               "t_start": pa.array([None, 2.0], pa.float64()),
                                               "t_end": pa.array([None, None], pa.float64())}))
    np.testing.assert_allclose(out["video"][0].as_py(), feats["va"].mean(0))
    np.testing.assert_allclose(out["video"][1].as_py(), feats["va"][1:].mean(0))  # from 2 - 1 s to the end
    assert clip_key("v", None, None) == "v" and clip_key("v", 1.0, None) == "v_1.000_"
    assert clip_key("v", 1.0, 2.5) == "v_1.000_2.500"
    # a YouTube id may start with "_": such videos are listed (hidden files are not)
    for name in ("_abc123.mp4", "x.mp4", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"")
    assert [u.rsplit("/", 1)[1] for u in list_video_files(str(tmp_path))] == ["_abc123.mp4", "x.mp4"]
