import math

import pytest
import torch
from torch.nn import functional as F

from egoray.models.dual_encoder import DualEncoder, DualEncoderConfig, contrastive_loss, same_label


def test_info_nce_by_hand():
    v = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    t = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    scale = torch.tensor(2.0)
    logits = 2.0 * v @ t.T  # [[2, 1.414], [0, 1.414]]
    c = 1 / math.sqrt(2)
    row = [-(2 - math.log(math.exp(2) + math.exp(2 * c))), -(2 * c - math.log(1 + math.exp(2 * c)))]
    col = [-(2 - math.log(math.exp(2) + 1)), -(2 * c - math.log(math.exp(2 * c) * 2))]
    expected = (sum(row) / 2 + sum(col) / 2) / 2
    assert float(contrastive_loss(v, t, scale)) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(logits, scale * v @ t.T)


def test_egonce_with_only_the_diagonal_is_info_nce():
    torch.manual_seed(0)
    v, t = F.normalize(torch.randn(6, 4), dim=-1), F.normalize(torch.randn(6, 4), dim=-1)
    none = torch.zeros(6, 6, dtype=torch.bool)
    assert float(contrastive_loss(v, t, torch.tensor(5.0), none)) == pytest.approx(
        float(contrastive_loss(v, t, torch.tensor(5.0))), rel=1e-6)


def test_egonce_extra_positives_lower_the_loss_of_shared_labels():
    v = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]), dim=-1)
    t = v.clone()
    verb, noun = torch.tensor([0, 0, 1]), torch.tensor([2, 2, 3])
    pos = same_label(verb, noun)
    assert pos.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    scale = torch.tensor(20.0)
    assert float(contrastive_loss(v, t, scale, pos)) < float(contrastive_loss(v, t, scale)) - 0.3


def test_unknown_labels_are_never_extra_positives():
    pos = same_label(torch.tensor([-1, -1]), torch.tensor([-1, -1]))
    assert not pos.any()


def test_logit_scale_is_clamped_at_100():
    torch.manual_seed(0)
    model = DualEncoder(DualEncoderConfig(video_dim=3, text_dim=4, embed_dim=2, hidden_dim=32))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert float(model.scales()[0].detach()) == pytest.approx(100.0)
    ve, te, scale, _ = model(torch.randn(5, 3), torch.randn(5, 4))
    assert ve.shape == te.shape == (5, 2)
    assert torch.allclose(ve.norm(dim=-1), torch.ones(5))


def test_mixed_batch_scales_follow_lavila():
    """Human–human pairs meet at s, pseudo–pseudo at s', across at sqrt(s·s') (LaViLa's SSL loss)."""
    from egoray.models.dual_encoder import pair_scales

    human = torch.tensor([True, True, False])
    m = pair_scales(human, torch.tensor(4.0), torch.tensor(9.0))
    assert torch.allclose(m, torch.tensor([[4.0, 4.0, 6.0], [4.0, 4.0, 6.0], [6.0, 6.0, 9.0]]))
    # all human: the plain loss at one scale
    torch.manual_seed(0)
    v, t = F.normalize(torch.randn(5, 4), dim=-1), F.normalize(torch.randn(5, 4), dim=-1)
    everyone = pair_scales(torch.ones(5, dtype=torch.bool), torch.tensor(4.0), torch.tensor(9.0))
    assert float(contrastive_loss(v, t, everyone)) == pytest.approx(float(contrastive_loss(v, t, torch.tensor(4.0))))
    # the pseudo block's logits use s': by hand for a batch of pseudo pairs only
    nobody = pair_scales(torch.zeros(5, dtype=torch.bool), torch.tensor(4.0), torch.tensor(9.0))
    assert float(contrastive_loss(v, t, nobody)) == pytest.approx(float(contrastive_loss(v, t, torch.tensor(9.0))))


def test_the_clep_config_is_seed_001s_clip_model():
    """configs/train_clep.yaml builds the notebook's ClipModel: 1536 → 1536 → 1536 heads with
    Xavier (ReLU gain) weights and zero biases, unnormalised outputs, logits × the raw scale
    ln(1/0.07) clamped to [0, ln 100], AdamW (0.98, 0.9), eps 1e-6, decay on every parameter."""
    import math
    from pathlib import Path

    from egoray.models.dual_encoder import DualEncoder, contrastive_loss
    from egoray.pipelines import load_config
    from egoray.train.schedule import param_groups

    config = load_config(str(Path(__file__).resolve().parents[2] / "configs" / "train_clep.yaml"))
    model = DualEncoder(config.model.model_copy(update={"video_dim": 1536, "text_dim": 768}))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.endswith("weight")}
    assert shapes == {"video_proj.0.weight": (1536, 1536), "video_proj.2.weight": (1536, 1536),
                      "text_proj.0.weight": (1536, 768), "text_proj.2.weight": (1536, 1536)}
    bound = math.sqrt(2) * math.sqrt(6 / (768 + 1536))  # xavier_uniform_ with gain calculate_gain("relu")
    w = model.text_proj[0].weight
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert all(float(m.bias.abs().max()) == 0 for m in (model.video_proj[0], model.text_proj[2]))
    scale, _ = model.scales()
    assert float(scale) == pytest.approx(math.log(1 / 0.07))  # the raw parameter, not its exp
    torch.manual_seed(0)
    video, text = torch.randn(6, 1536), torch.randn(6, 768)
    v, t, s, _ = model(video, text)
    assert not torch.allclose(v.norm(dim=-1), torch.ones(6))  # unnormalised
    # the notebook's loss: CE of logit_scale · v tᵀ against the identity, both directions
    logits = s * v @ t.T
    eye = torch.eye(6)
    seed = (torch.nn.functional.cross_entropy(logits, eye) + torch.nn.functional.cross_entropy(logits.T, eye)) / 2
    assert float(contrastive_loss(v, t, s)) == pytest.approx(float(seed), rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(5.0)
    model.clamp_scales()  # after each step, in place, as the notebook does
    assert float(model.logit_scale) == pytest.approx(math.log(100))
    groups = param_groups(model, config.train.weight_decay, config.train.no_decay_group)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.01  # every parameter decays
    assert tuple(config.train.betas) == (0.98, 0.9) and config.train.eps == 1e-6 and config.train.grad_clip == 0
