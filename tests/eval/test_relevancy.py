import pickle
from pathlib import Path

import numpy as np
import pytest

from egoray.data.raw import InputError
from egoray.eval.relevancy import ek100_relevancy, label_relevancy, load_relevancy

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ek100"
HEADER = "narration_id,narration,verb_class,all_noun_classes\n"


def test_relevancy_worked_by_hand(tmp_path):
    csv = tmp_path / "v.csv"
    csv.write_text(HEADER + 'a,take plate,0,[2]\n'
                            'b,take plate and cup,0,"[2, 7]"\n'
                            'c,wash cup,2,[7]\n'
                            'd,take plate,0,[2]\n')
    r = ek100_relevancy(str(csv))
    # sentences: distinct narrations in order of first appearance
    assert r.sentences == ["take plate", "take plate and cup", "wash cup"] and r.sentence_ids == ["a", "b", "c"]
    expected = np.array([
        [1.0, 0.5 + 0.5 * 1 / 2, 0.0],        # a: same verb; {2} vs {2,7} IoU 1/2; vs c: nothing shared
        [0.5 + 0.25, 1.0, 0.0 + 0.5 * 1 / 2],  # b vs c: verbs differ, {2,7} vs {7} IoU 1/2
        [0.0, 0.25, 1.0],
        [1.0, 0.75, 0.0],
    ])
    assert r.matrix == pytest.approx(expected)
    assert r.video_ids == ["a", "b", "c", "d"]


def test_ek100_mir_relevancy_from_the_real_csvs():
    r = ek100_relevancy(str(FIXTURES / "EPIC_100_validation.csv"), str(FIXTURES / "EPIC_100_retrieval_test_sentence.csv"))
    assert r.matrix.shape == (9668, 3842)
    # every sentence is fully relevant to the segment it was drawn from
    rows = {v: i for i, v in enumerate(r.video_ids)}
    own = r.matrix[[rows[s] for s in r.sentence_ids], np.arange(3842)]
    assert (own == 1).all()
    assert ((r.matrix >= 0) & (r.matrix <= 1)).all()
    assert (r.matrix == 1).any(axis=1).all()  # mAP needs a fully relevant sentence for every video


def test_bad_relevancy_inputs(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "a,take plate,0,not-a-list\n")
    with pytest.raises(InputError, match="all_noun_classes"):
        ek100_relevancy(str(bad))
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "a,take plate,0,[2]\n")
    sentences = tmp_path / "s.csv"
    sentences.write_text("narration_id,narration\nzz,wash\n")
    with pytest.raises(InputError, match="not in"):
        ek100_relevancy(str(good), str(sentences))
    missing = tmp_path / "m.csv"
    missing.write_text("narration_id,narration\na,b\n")
    with pytest.raises(InputError, match="missing column"):
        ek100_relevancy(str(missing))


def test_load_relevancy_npy_and_pickle(tmp_path):
    m = label_relevancy(np.array([0, 1]), np.eye(2, dtype=bool), np.array([0, 1]), np.eye(2, dtype=bool))
    assert m.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    np.save(tmp_path / "r.npy", m)
    (tmp_path / "r.pkl").write_bytes(pickle.dumps(m))
    assert load_relevancy(str(tmp_path / "r.npy")).tolist() == m.tolist()
    assert load_relevancy(str(tmp_path / "r.pkl")).tolist() == m.tolist()
    (tmp_path / "x.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="cannot read"):
        load_relevancy(str(tmp_path / "x.pkl"))
