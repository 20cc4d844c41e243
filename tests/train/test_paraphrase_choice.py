"""Rephrased narrations drawn as LaViLa draws them: one of [narration, paraphrases...] per clip
per epoch (``random.choice`` over the rephraser's list, the original first)."""

from __future__ import annotations

import numpy as np

from egoray.train.data import choose_texts


def _rows():
    return {"id": np.array(["a", "b", "c"], dtype=object),
            "text": np.array(["c opens the door", "c cuts", "c sits"], dtype=object),
            "paraphrases": [["the door is opened", "c pulls the door open"], [], None],
            "frames": np.zeros(3)}


def test_each_clip_draws_from_its_narration_and_paraphrases_per_epoch():
    epochs = [choose_texts(_rows(), seed=0, epoch=e)["text"] for e in range(1, 41)]
    firsts = [t[0] for t in epochs]
    # every option of clip a comes up over the epochs, about a third of the time each
    counts = {t: firsts.count(t) for t in set(firsts)}
    assert set(counts) == {"c opens the door", "the door is opened", "c pulls the door open"}
    assert min(counts.values()) >= 40 // 3 - 3 * (40 * 2 / 9) ** 0.5  # 3 standard deviations below 40/3
    # clips without paraphrases keep their narration; other columns pass through
    assert all(t[1] == "c cuts" and t[2] == "c sits" for t in epochs)
    assert choose_texts(_rows(), 0, 1)["frames"] is not None


def test_a_draw_depends_on_seed_epoch_and_clip_only():
    a = choose_texts(_rows(), seed=3, epoch=2)["text"]
    assert list(a) == list(choose_texts(_rows(), seed=3, epoch=2)["text"])
    reordered = {k: (v[::-1] if not isinstance(v, list) else v[::-1]) for k, v in _rows().items()}
    assert list(choose_texts(reordered, seed=3, epoch=2)["text"]) == list(a)[::-1]  # not by position in the batch
    assert {tuple(choose_texts(_rows(), seed=s, epoch=2)["text"]) for s in range(12)} != {tuple(a)}
    without = {k: v for k, v in _rows().items() if k != "paraphrases"}
    assert choose_texts(without, 0, 1) is without


def test_rephrased_must_be_a_rephrase_output(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from egoray.data.raw import InputError
    from egoray.train.data import with_paraphrases

    with pytest.raises(InputError, match="not a rephrase output"):
        with_paraphrases(lambda: None, str(tmp_path / "narrations"), str(tmp_path / "nothing"))
    (tmp_path / "r" / "paraphrases").mkdir(parents=True)
    pq.write_table(pa.table({"narration_id": ["a"], "paraphrases": [["x"]]}), tmp_path / "r" / "paraphrases" / "p.parquet")
    with pytest.raises(InputError, match="video_uid"):
        with_paraphrases(lambda: None, str(tmp_path / "narrations"), str(tmp_path / "r"))
