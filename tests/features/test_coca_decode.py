"""CoCa decoding without transformers equals open_clip's ``CoCa.generate`` as it ran on
transformers 4.56 (the output stored in data/coca_open_clip_reference.json)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from egoray.features.captions import CaptionOptions, CocaCaptioner
from egoray.features.coca_decode import EOT, SOT, cut_at_eot, generate
from egoray.features.vision import to_tensor
from egoray.models.clip import ClipModel

REFERENCE = json.loads((Path(__file__).parent / "data" / "coca_open_clip_reference.json").read_text())["cases"]
FRAMES = np.random.default_rng(1).integers(0, 255, size=(5, 64, 64, 3), dtype=np.uint8)


def _captioner(seed: int, **options) -> CocaCaptioner:
    return CocaCaptioner(ClipModel(name="tiny-coca", seed=seed), CaptionOptions(**options))


def _eos_biased(model, bias: float):
    """Adds ``bias`` to the eos logit, so captions end at different lengths (as trained ones do)."""
    forward = model.forward

    def biased(*args, **kwargs):
        out = forward(*args, **kwargs)
        out["logits"] = out["logits"].clone()
        out["logits"][..., EOT] += bias
        return out

    model.forward = biased
    return model


@pytest.mark.parametrize("seed", [0, 1])
def test_same_tokens_as_open_clip(seed):
    coca = _captioner(seed)
    x = to_tensor(FRAMES, coca.mean, coca.std)
    cases = [k for k in REFERENCE if k.endswith(f"/{seed}") and "kwargs" in REFERENCE[k]]
    assert len(cases) == 6
    for key in cases:
        torch.manual_seed(seed)
        tokens = generate(coca.model, x, max_seq_len=77, **REFERENCE[key]["kwargs"])
        assert tokens.tolist() == REFERENCE[key]["tokens"], key


def test_same_tokens_as_open_clip_when_captions_end_early():
    model = _eos_biased(_captioner(0).model, REFERENCE["eos_beam"]["bias"])
    coca = _captioner(0)
    x = to_tensor(FRAMES, coca.mean, coca.std)
    ended_early = 0
    for key in [k for k in REFERENCE if k.startswith("eos_")]:
        torch.manual_seed(3)
        tokens = generate(model, x, max_seq_len=77, **REFERENCE[key]["kwargs"])
        assert tokens.tolist() == REFERENCE[key]["tokens"], key
        rows = cut_at_eot(tokens)
        ended_early += sum(len(r) < tokens.shape[1] - 2 for r in rows)
        assert all(EOT not in r and SOT not in r for r in rows)
    assert ended_early >= 10  # the reference exercises finished beams and padded batches


def test_captioner_writes_the_captions_it_wrote_on_transformers_4():
    for seed in (0, 1):
        for kind in ("top_p", "beam_search"):
            beams = {"num_beam_groups": 1} if kind == "beam_search" else {}
            captions = _captioner(seed, generation_type=kind, seq_len=10, batch_size=2,
                                  **beams).caption(FRAMES, seed=seed)
            assert captions == REFERENCE[f"captioner_{kind}/{seed}"]["captions"]


def test_captioner_beam_search_uses_open_clips_three_beam_groups_by_default():
    import open_clip

    coca = _captioner(0, generation_type="beam_search", seq_len=12)
    assert (coca.options.num_beams, coca.options.num_beam_groups) == (6, 3)
    expected = [" ".join(open_clip.decode(torch.tensor(ids)).split()).rstrip(" .")
                for ids in cut_at_eot(torch.tensor(REFERENCE["beam_groups/0"]["tokens"]))]
    assert coca.caption(FRAMES, seed=0) == expected
    ungrouped = _captioner(0, generation_type="beam_search", seq_len=12, num_beam_groups=1).caption(FRAMES, seed=0)
    assert ungrouped != expected
    with pytest.raises(ValueError, match="divisible by num_beam_groups"):
        CaptionOptions(generation_type="beam_search", num_beams=4, num_beam_groups=3)


def test_padding_after_the_end_is_not_part_of_a_caption():
    tokens = torch.tensor([[SOT, 5, 6, EOT, 0, 0], [SOT, 7, 8, 9, 10, EOT]])
    assert cut_at_eot(tokens) == [[5, 6], [7, 8, 9, 10]]
    with pytest.raises(ValueError, match="min_seq_len"):
        generate(_captioner(0).model, torch.zeros(1, 3, 64, 64), seq_len=5)
