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


def test_mean_class_accuracy_by_hand():
    from egoray.eval.zeroshot import mean_class_accuracy

    # class 0: 3 clips, 2 right; class 1: 1 clip, right; class 2: none. A tie counts against the clip.
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.2, 0.7, 0.1]])
    labels = np.array([0, 0, 0, 1])
    assert mean_class_accuracy(scores, labels) == pytest.approx((2 / 3 + 1) / 2)
    assert mean_class_accuracy(np.array([[0.5, 0.5]]), np.array([0])) == 0.0


def test_egomcq_accuracy_splits_inter_and_intra_video_questions():
    from egoray.eval.mcq import egomcq_accuracy

    scores = np.array([[0.9, 0.1, 0.2], [0.1, 0.2, 0.9], [0.3, 0.8, 0.1], [0.5, 0.5, 0.1]])
    answers = np.array([0, 1, 1, 0])
    intra = np.array([False, False, True, True])
    m = egomcq_accuracy(scores, answers, intra)
    # inter: right, wrong; intra: right, a two-way tie at the top (half credit)
    assert m == {"chance": pytest.approx(1 / 3), "inter_video_accuracy": 0.5, "inter_video_questions": 2.0,
                 "intra_video_accuracy": 0.75, "intra_video_questions": 2.0}


def test_egomcq_and_egtea_readers():
    import json

    from egoray.data.benchmarks import read_egomcq, read_egtea_classes, read_egtea_split
    from egoray.data.raw import InputError

    def choice(v, a, b):
        return {"video_uid": v, "clip_start": a, "clip_end": b, "clip_text": "x"}

    questions = {"0": {"query": {"clip_text": "#C C cuts"}, "answer": 1, "types": 1,
                       "choices": {"0": choice("va", 1, 2), "1": choice("vb", 3, 4)}},
                 "1": {"query": {"clip_text": "#C C opens"}, "answer": 0, "types": 2,
                       "choices": {"0": choice("va", 1, 2), "1": choice("va", "5.5", 6)}}}
    table = read_egomcq(json.dumps(questions).encode()).to_pylist()
    assert [(r["id"], r["video_uid"], r["t_start"], r["answer"], r["intra"]) for r in table] == [
        ("0:0", "va", 1.0, 1, False), ("0:1", "vb", 3.0, 1, False), ("1:0", "va", 1.0, 0, True),
        ("1:1", "va", 5.5, 0, True)]
    with pytest.raises(InputError, match="question '0': answer 3"):
        read_egomcq(json.dumps({"0": {**questions["0"], "answer": 3}}).encode())
    classes = read_egtea_classes(b"Take_bowl 2\nOpen_fridge 1\n")
    assert classes == ["open fridge", "take bowl"]
    clips = read_egtea_split(b"P01-R01-PastaSalad-1-2-F003 2 5 7\n", classes).to_pylist()
    assert clips == [{"clip_id": "P01-R01-PastaSalad-1-2-F003", "video_uid": "P01-R01-PastaSalad-1-2-F003",
                      "t_start": 0.0, "t_end": 0.0, "label": "take bowl"}]
    with pytest.raises(InputError, match="action 1..2"):
        read_egtea_split(b"clip 9 1 1\n", classes)


def test_kinetics_and_charades_ego_readers_on_rows_in_their_formats():
    from egoray.data.benchmarks import read_charades_ego_csv, read_kinetics_csv
    from egoray.data.labels import read_labels
    from egoray.data.raw import InputError

    fixtures = Path(__file__).resolve().parent.parent / "fixtures" / "benchmarks"
    kinetics = read_kinetics_csv((fixtures / "kinetics400_val.csv").read_bytes()).to_pylist()
    # each clip is the downloader's file: <youtube_id>_<start:06d>_<end:06d>; ids may start with "_"
    assert [(r["clip_id"], r["label"], r["t_start"]) for r in kinetics] == [
        ("-3B32lodo2M_000059_000069", "abseiling", None), ("_Zq1Vmt0xYA_000020_000030", "eating ice cream", None),
        ("a0Tq3rAk4Oo_000003_000013", "texting", None)]
    names = dict(read_labels(str(LABELS / "Charades_v1_classes.reconstructed.txt")))
    data = (fixtures / "CharadesEgo_v1_test.csv").read_bytes()
    ego = read_charades_ego_csv(data, names).to_pylist()
    assert [(r["clip_id"], r["label"]) for r in ego] == [
        ("005BUEGO", sorted([names["c000"], names["c002"]])), ("0A8ZTEGO", [])]  # no action: negative everywhere
    assert [r["clip_id"] for r in read_charades_ego_csv(data, names, "third_person").to_pylist()] == ["005BU"]
    assert len(read_charades_ego_csv(data, names, "all")) == 3
    with pytest.raises(InputError, match="class 'c002' is not in the class list"):
        read_charades_ego_csv(data, {"c000": "x"})
    with pytest.raises(InputError, match="missing column"):
        read_kinetics_csv(b"label,youtube\nx,y\n")


def test_zeroshot_reads_a_benchmark_file_as_its_clip_table(tmp_path):
    """What the eval job's worker reads for zeroshot.clips_format (the reader the section
    declares): the clip table it pools."""
    from egoray.eval.sections import SECTIONS, ZeroShotSection

    fixtures = Path(__file__).resolve().parent.parent / "fixtures" / "benchmarks"
    cfg = ZeroShotSection(classes=str(LABELS / "Charades_v1_classes.reconstructed.txt"), encoder={},
                          clips=str(fixtures / "CharadesEgo_v1_test.csv"), clips_format="charades_ego_csv",
                          video_features=str(tmp_path / "vf"))
    pooled = SECTIONS["zeroshot"].pooled(cfg)
    assert pooled.table is None and pooled.video_features == cfg.video_features
    table = pooled.benchmark()
    assert table["clip_id"].to_pylist() == ["005BUEGO", "0A8ZTEGO"] and table["t_start"].null_count == 2
    with pytest.raises(ValueError, match="needs classes"):
        ZeroShotSection(class_prompts="x", clips="y", clips_format="charades_ego_csv", video_features="z")
