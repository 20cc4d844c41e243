import json
from pathlib import Path

import numpy as np
import pytest

from egoray.eval.mcq import mcq_accuracy
from egoray.eval.zeroshot import (
    average_precision,
    class_embeddings,
    expand_templates,
    multilabel_map,
    read_class_names,
    topk_accuracy,
)

LABELS = Path(__file__).resolve().parent.parent / "fixtures" / "labels"


def test_class_lists_of_kinetics_and_charades():
    kinetics = read_class_names(str(LABELS / "kinetics_classnames.json"))
    ids = json.loads((LABELS / "kinetics_classnames.json").read_text())
    assert len(kinetics) == 400
    by_id = {v: k.strip('"') for k, v in ids.items()}
    assert kinetics[0] == by_id[0] and kinetics[399] == by_id[399]
    assert not any('"' in name for name in kinetics)
    charades = read_class_names(str(LABELS / "Charades_v1_classes.reconstructed.txt"))
    assert len(charades) == 157 and charades[0] == "Holding some clothes"


def test_templates_and_prompt_ensembles():
    prompts = expand_templates(["cut onion", "open door"], ["Camera wearer is {label}", "{label}"])
    assert prompts == ["Camera wearer is cut onion", "cut onion", "Camera wearer is open door", "open door"]
    with pytest.raises(ValueError, match="placeholder"):
        expand_templates(["x"], ["no slot"])
    emb = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0], [0.0, -1.0]])  # class 0: x and y; class 1: -y twice
    cls = class_embeddings(emb, 2)
    assert cls == pytest.approx(np.array([[1 / np.sqrt(2), 1 / np.sqrt(2)], [0.0, -1.0]]))


def test_topk_accuracy_by_hand_with_ties_against_the_clip():
    scores = np.array([[0.9, 0.5, 0.1],   # true 0: rank 1
                       [0.9, 0.5, 0.1],   # true 1: rank 2
                       [0.9, 0.5, 0.1],   # true 2: rank 3
                       [0.4, 0.4, 0.4]])  # true 1, all tied: counted last
    acc = topk_accuracy(scores, np.array([0, 1, 2, 1]), (1, 2))
    assert acc == {"top1": 0.25, "top2": 0.5}


def test_multilabel_map_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.6]])
    targets = np.array([[1, 0], [0, 1], [1, 0]], dtype=bool)
    # class 0: positives at ranks 1 and 3 -> (1 + 2/3)/2; class 1: positive at rank 1 -> 1
    assert average_precision(scores[:, 0], targets[:, 0]) == pytest.approx(5 / 6)
    assert multilabel_map(scores, targets) == pytest.approx((5 / 6 + 1) / 2)
    # a class with no positive clip is left out of the mean, not counted as 0
    wider = np.hstack([scores, np.zeros((3, 1))])
    assert multilabel_map(wider, np.hstack([targets, np.zeros((3, 1), bool)])) == pytest.approx((5 / 6 + 1) / 2)


def test_mcq_accuracy_perfect_chance_and_ties():
    correct = np.array([0, 2, 1])
    perfect = np.eye(3)[correct] + 0.0
    assert mcq_accuracy(perfect, correct)["accuracy"] == 1.0
    assert mcq_accuracy(-perfect, correct)["accuracy"] == 0.0
    # a scorer that cannot tell options apart earns exactly chance
    flat = mcq_accuracy(np.zeros((3, 4)), correct)
    assert flat["accuracy"] == pytest.approx(0.25) == flat["chance"]
    # question 0: right answer tied with one other at the top -> 1/2 credit
    tied = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 5.0], [0.0, 1.0, 0.0]])
    assert mcq_accuracy(tied, correct)["accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    with pytest.raises(ValueError):
        mcq_accuracy(np.zeros(3), correct)
