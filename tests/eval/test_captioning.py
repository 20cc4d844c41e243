"""Caption metrics against hand-computed values and against the COCO evaluation code itself."""

import math

import pytest

from egoray.eval.captioning import _java_on_path, caption_scores, ptb_tokenize

REFS = {
    "same": ["A man cuts the tomato.", "The man is cutting a tomato"],
    "empty": ["The camera wearer opens the fridge"],
    "short": ["the cat sat on the mat"],
    "other": ["#C C stirs the pot with a spoon", "someone stirs soup"],
}
PREDS = {"same": "A man cuts the tomato.", "empty": "", "short": "The cat sat", "other": "stirs the soup"}


@pytest.fixture(scope="module")
def scored():
    refs, preds = ptb_tokenize(REFS), ptb_tokenize({k: [v] for k, v in PREDS.items()})
    return refs, preds, caption_scores(refs, preds)


def test_ptb_tokenisation_like_coco(scored):
    refs, preds, _ = scored
    assert preds["same"] == ["a man cuts the tomato"]  # lower case, punctuation gone
    assert preds["empty"] == [""]
    assert refs["other"][0] == "#c c stirs the pot with a spoon"


def test_identical_and_empty_captions(scored):
    _, _, (corpus, per) = scored
    assert per["same"]["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert per["same"]["METEOR"] == pytest.approx(1.0) and per["same"]["ROUGE-L"] == pytest.approx(1.0)
    for metric in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert per["empty"][metric] == pytest.approx(0.0, abs=1e-6), metric
    assert 0 < corpus["BLEU-1"] < 1 and corpus["CIDEr"] > 0


def test_short_caption_worked_by_hand(scored):
    _, _, (_, per) = scored
    # 3 of 3 unigrams match; brevity penalty exp(1 - 6/3)
    assert per["short"]["BLEU-1"] == pytest.approx(math.exp(-1), rel=1e-6)
    # ROUGE-L: LCS 3, precision 1, recall 1/2, beta 1.2: F = (1 + b^2) P R / (R + b^2 P)
    b2 = 1.2 ** 2
    assert per["short"]["ROUGE-L"] == pytest.approx((1 + b2) * 0.5 / (0.5 + b2))


def test_agrees_with_coco_eval_cap(monkeypatch, scored):
    """COCOEvalCap (SPICE left out: it downloads models) on the same captions gives the same numbers."""
    import pycocoevalcap.eval as coco_eval

    class NoSpice:
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    class Captions:  # the two attributes COCOEvalCap reads from a pycocotools COCO object
        def __init__(self, caps):
            self.imgToAnns = {k: [{"image_id": k, "caption": c} for c in v] for k, v in caps.items()}

        def getImgIds(self):
            return list(self.imgToAnns)

    monkeypatch.setattr(coco_eval, "Spice", NoSpice)
    with _java_on_path():
        ev = coco_eval.COCOEvalCap(Captions(REFS), Captions({k: [v] for k, v in PREDS.items()}))
        ev.evaluate()
    _, _, (ours, _) = scored
    names = {"BLEU-1": "Bleu_1", "BLEU-2": "Bleu_2", "BLEU-3": "Bleu_3", "BLEU-4": "Bleu_4",
             "METEOR": "METEOR", "ROUGE-L": "ROUGE_L", "CIDEr": "CIDEr"}
    for ours_name, coco_name in names.items():
        assert ours[ours_name] == pytest.approx(ev.eval[coco_name], abs=1e-9), ours_name


def test_lavila_protocol_keeps_punctuation_and_scores_identical_and_empty_captions():
    """LaViLa's narrator evaluation: one reference per clip, BERT-uncased tokens with punctuation
    kept (re-attached as its decoder does), no PTB tokenizer."""
    from egoray.eval.captioning import lavila_tokenize, score_captions

    assert lavila_tokenize({"a": ["#C C picks up the Knife, then cuts an onion."]})["a"] == [
        "# c c picks up the knife, then cuts an onion."]
    refs = {"w1": "#C C opens the fridge.", "w2": "C cuts the onion", "w3": "C stirs the soup"}
    same = score_captions(refs, refs, "lavila")
    assert same["BLEU-1"] == pytest.approx(1.0) and same["METEOR"] == pytest.approx(1.0, abs=1e-3)
    assert same["ROUGE-L"] == pytest.approx(1.0)
    empty = score_captions({k: "" for k in refs}, refs, "lavila")
    for metric in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert empty[metric] == pytest.approx(0.0, abs=1e-6), metric
    # the period is a token: without it one of the reference's unigrams is missed
    dotless = score_captions({"w1": "#C C opens the fridge"}, {"w1": "#C C opens the fridge."}, "lavila")
    assert dotless["ROUGE-L"] < 1.0 and score_captions({"w1": "#C C opens the fridge"},
                                                       {"w1": "#C C opens the fridge."}, "ptb")["ROUGE-L"] == \
        pytest.approx(1.0)
