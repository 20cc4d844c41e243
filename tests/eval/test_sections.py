"""The section registry: each section declares what the eval job pools for it, and the eval job
builds every declaration the same way, naming no section."""

from __future__ import annotations

import ast
from pathlib import Path

from egoray.eval import sections
from egoray.eval.sections import SECTIONS, Pooled


def test_every_section_declares_its_pooled_inputs_and_the_eval_job_names_none(tmp_path):
    u = lambda name: str(tmp_path / name)  # noqa: E731
    configs = {
        "retrieval": sections.RetrievalSection(narrations=u("n"), video_features=u("vf"), text_features=u("tf")),
        "zeroshot": sections.ZeroShotSection(classes=u("c.txt"), encoder={}, clips=u("clips"), video_features=u("vf")),
        "mcq": sections.MCQSection(qa=u("qa"), model=u("m"), video_features=u("vf"), text_features=u("tf")),
        "egomcq": sections.EgoMCQSection(egomcq=u("egomcq.json"), encoder={}, video_features=u("vf")),
        "egtea": sections.EGTEASection(classes=u("a.txt"), split=u("s.txt"), encoder={}, video_features=u("vf")),
        "gap": sections.GapSection(),
    }
    declared = {name: SECTIONS[name].pooled(cfg) for name, cfg in configs.items()}
    assert declared["gap"] is None and SECTIONS["gap"].uses_pairs(configs["gap"])
    assert not SECTIONS["retrieval"].uses_pairs(configs["retrieval"])
    for name, pooled in declared.items():
        if name == "gap":
            continue
        assert isinstance(pooled, Pooled) and pooled.video_features == u("vf"), name
        # exactly one place the items come from
        assert sum(x is not None for x in (pooled.table, pooled.benchmark, pooled.text_features)) == 1, name
    assert declared["retrieval"].text_features == (u("tf"), ["val", "test"]) and declared["retrieval"].offset == 1.0
    assert declared["mcq"].table == str(Path(u("qa")) / "qa") and "wrong_answers" in declared["mcq"].require
    assert declared["zeroshot"].table == u("clips") and declared["zeroshot"].optional == ("clip_id",)
    assert declared["egomcq"].benchmark is not None and declared["egtea"].per_batch is sections.zeroshot.zeroshot_clips

    job = Path(sections.__file__).resolve().parents[2] / "pipelines" / "eval.py"
    literals = {n.value for n in ast.walk(ast.parse(job.read_text())) if isinstance(n, ast.Constant)}
    assert not literals & set(SECTIONS), literals & set(SECTIONS)


def test_a_declared_table_that_is_missing_or_lacks_columns_is_an_input_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from egoray.data.raw import InputError
    from egoray.pipelines.eval import build_pooled

    declared = Pooled(str(tmp_path / "vf"), table=str(tmp_path / "qa"), require=("question",))
    with pytest.raises(InputError, match=r"input not found: .*qa$"):
        build_pooled(str(tmp_path / "out"), "mcq", declared)
    (tmp_path / "qa").mkdir()
    pq.write_table(pa.table({"answer": ["a"]}), tmp_path / "qa" / "part-0.parquet")
    with pytest.raises(InputError, match=r"qa: not a mcq items table \(missing \['question'\]; found \['answer'\]\)"):
        build_pooled(str(tmp_path / "out"), "mcq", declared)
    assert not (tmp_path / "out").exists()  # refused before anything was written
