"""Learning-rate schedules, weight-decay groups and frozen parameters (no distribution involved)."""

import math

import pytest
import torch

from egoray.models.dual_encoder import DualEncoder, DualEncoderConfig
from egoray.train.schedule import freeze, lr_factor, param_groups


def test_warmup_is_linear_then_cosine_ends_at_the_end_ratio():
    factors = [lr_factor("cosine", s, 10, 4, 0.2) for s in range(12)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    assert factors[7] == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert factors[10] == factors[11] == pytest.approx(0.2)  # held after the planned steps
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))


def test_linear_decay_after_warmup_as_hugging_face_trainer():
    # 2 warmup steps, then 1 → 0 in a straight line over the 8 remaining of 10
    assert [lr_factor("linear", s, 10, 2) for s in range(11)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0])


def test_constant_after_warmup():
    assert [lr_factor("constant", s, 10, 2) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor("constant", 0, 10, 0) == 1.0


def _model() -> DualEncoder:
    return DualEncoder(DualEncoderConfig(video_dim=6, text_dim=5, embed_dim=4, hidden_dim=8))


def test_biases_and_temperatures_are_not_decayed():
    model = _model()
    decayed, kept = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in kept["params"]) == sorted(
        ["logit_scale", "aux_logit_scale", "video_proj.0.bias", "video_proj.2.bias", "text_proj.0.bias",
         "text_proj.2.bias"])
    assert all(p.ndim == 2 for p in decayed["params"]) and len(decayed["params"]) == 4


def test_freeze_by_prefix_and_refuse_unknown_names():
    model = _model()
    assert freeze(model, ["logit_scale", "video_proj.0"]) == ["logit_scale", "video_proj.0.bias",
                                                               "video_proj.0.weight"]
    assert not model.logit_scale.requires_grad and model.aux_logit_scale.requires_grad
    assert not model.video_proj[0].weight.requires_grad and model.video_proj[2].weight.requires_grad
    groups = param_groups(model, 0.1)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no parameter is named 'temprature'"):
        freeze(_model(), ["temprature"])


def test_init_from_loads_matching_weights_and_refuses_strangers(tmp_path):
    from egoray.data.raw import InputError
    from egoray.models.dual_encoder import save_dual_encoder
    from egoray.train.recipe import init_weights

    source = _model()
    torch.nn.init.constant_(source.text_proj[0].weight, 0.5)
    (tmp_path / "run" / "model").mkdir(parents=True)
    torch.save(save_dual_encoder(source), tmp_path / "run" / "model" / "model.pt")
    wider = DualEncoder(DualEncoderConfig(video_dim=7, text_dim=5, embed_dim=4, hidden_dim=8))
    counts = init_weights(wider, str(tmp_path / "run"))
    assert counts == {"loaded": 9, "skipped": 1, "missing": 1}  # video_proj.0.weight differs in shape
    assert torch.all(wider.text_proj[0].weight == 0.5)
    torch.save({"kind": "other", "state_dict": {"x": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="shares no weights"):
        init_weights(_model(), str(tmp_path / "other.pt"))
