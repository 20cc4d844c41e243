"""Pairs for training, built from handmade job outputs (no Ray)."""

import numpy as np
import pyarrow as pa
import pytest

from egoray import storage
from egoray.pipelines.text_features import Config as TextConfig
from egoray.pipelines.text_features import load_texts
from egoray.pipelines.train_dual_encoder import AuxSource, _aux_pairs
from egoray.train.bank import load_bank
from egoray.train.pairs import label_by_time, resolve_windows, text_matrix


@pytest.fixture()
def outputs(tmp_path):
    feats = {"va": np.arange(20, dtype=np.float32).reshape(10, 2), "vb": np.ones((4, 2), np.float32)}
    storage.write_hdf5_shard(str(tmp_path / "vf" / "features" / "part-0000.h5"), feats)
    storage.write_parquet(str(tmp_path / "vf" / "index" / "part-0000.parquet"), pa.Table.from_pylist([
        {"key": k, "video_uid": k, "file": "features/part-0000.h5", "n": len(v), "dim": 2, "fps": 1.0,
         "model": "m", "t_start": 0.0, "t_end": float(len(v))} for k, v in feats.items()]))
    narrations = pa.table({"narration_id": ["n1", "n2", "n3"], "video_uid": ["va", "vb", "vc"],
                           "text": ["c opens a jar", "c cuts bread", "c waves"], "t_start": [3.5, 1.0, 0.0],
                           "t_end": [3.5, 1.0, 0.0], "split": ["train", "val", "train"]})
    emb = pa.table({"id": ["n1", "n2", "n1#0", "n1#1", "n2#0"],
                    "embedding": [[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [3.0, 0.0], [0.0, 2.0]]})
    storage.write_parquet(str(tmp_path / "tf" / "embeddings" / "part-0000.parquet"), emb)
    return tmp_path, narrations


def test_windows_pool_the_right_features_and_reject_missing_videos(outputs):
    root, narrations = outputs
    bank = load_bank(str(root / "vf"))
    w = resolve_windows(narrations, bank, offset=1.0)
    assert w.ids == ["n1", "n2"]
    assert [(r["record_id"], r["reason"]) for r in w.rejects] == [("n3", "no_video_features")]
    pooled = bank.pool(w.rows, w.t1, w.t2)
    # n1: t = 3.5 ± 1 at 1 feature/s -> rows 2..4 of va
    np.testing.assert_allclose(pooled[0], np.arange(20, dtype=np.float32).reshape(10, 2)[2:5].mean(0))
    np.testing.assert_allclose(pooled[1], [1.0, 1.0])
    text, found = text_matrix(str(root / "tf"), w.ids + ["zz"])
    assert found.tolist() == [True, True, False]
    np.testing.assert_array_equal(text[1], [0.0, 1.0])


def test_labels_come_from_the_segment_containing_the_time():
    labels = pa.table({"video_uid": ["a", "a", "b"], "t_start": [0.0, 5.0, 0.0], "t_end": [4.0, 9.0, 3.0],
                       "verb": ["open", "cut", "wash"], "noun": ["jar", "bread", "cup"]})
    verbs, nouns = label_by_time(labels, ["a", "a", "a", "b", "c"], np.array([1.0, 4.5, 6.0, 2.9, 1.0]))
    assert verbs == ["open", None, "cut", "wash", None]
    assert nouns == ["jar", None, "bread", "cup", None]


def test_aux_texts_pair_with_their_source_window(outputs):
    root, narrations = outputs
    storage.write_parquet(str(root / "paraphrases.parquet"), narrations)
    bank = load_bank(str(root / "vf"))
    video, text = _aux_pairs(AuxSource(text_features=str(root / "tf"), windows=str(root / "paraphrases.parquet")),
                             bank, 1.0)
    # every embedding id maps to n1 or n2 (itself or before '#'): n1, n2, n1#0, n1#1, n2#0
    assert video.shape == (5, 2) and text.shape == (5, 2)
    np.testing.assert_allclose(video[2], video[0])  # n1#0 uses n1's window
    np.testing.assert_allclose(video[4], video[1])


def test_text_features_explodes_a_list_column(tmp_path):
    table = pa.table({"narration_id": ["n1", "n2"], "paraphrases": [["a b", "c d"], ["e f"]]})
    storage.write_parquet(str(tmp_path / "p.parquet"), table)
    texts = load_texts(TextConfig(input=str(tmp_path / "p.parquet"), output=str(tmp_path / "o"),
                                  text_col="paraphrases"))
    assert texts.to_pylist() == [{"id": "n1#0", "text": "a b"}, {"id": "n1#1", "text": "c d"},
                                 {"id": "n2#0", "text": "e f"}]
