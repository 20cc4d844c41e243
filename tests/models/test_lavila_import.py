"""LaViLa's space–time tower and its checkpoints, against models written from LaViLa's code
(``tests/lavila_reference.py``) at tiny sizes with random weights, saved as LaViLa saves them."""

from __future__ import annotations

import argparse

import pytest
import torch

from egoray.data.raw import InputError
from egoray.models.lavila_import import import_lavila
from egoray.models.video_text import load_video_text
from tests.lavila_reference import tiny_tsf_clip


def _save_lavila(net: torch.nn.Module, path, **args) -> None:
    """As LaViLa's main.py saves: DDP's ``module.`` prefix, its args Namespace, the epoch."""
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"epoch": 5, "state_dict": state, "args": argparse.Namespace(**args), "best_acc1": 0.0}, path)


def _frames(seed: int, b: int = 2, t: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_space_time_tower_is_lavilas_on_every_token():
    """Our SpaceTimeTransformer with a LaViLa tower's weights: the same class token and the
    same 1 + T·N tokens (the narrator's input), for full and for shorter clips."""
    from egoray.models.timesformer import SpaceTimeTransformer

    ref = tiny_tsf_clip().visual.eval()
    ours = SpaceTimeTransformer(64, 16, 64, 2, 4, num_frames=3).eval()
    ours.load_state_dict(ref.state_dict())
    x = _frames(1)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x.permute(0, 2, 1, 3, 4)), atol=1e-5)
        tokens = ours.forward_features(x)
        assert tokens.shape == (2, 1 + 3 * 16, 64)
        assert torch.allclose(tokens, ref.forward_features(x, cls_at_last=False), atol=1e-5)
        two = x[:, :2]  # fewer frames than the tower's maximum, as LaViLa allows
        assert torch.allclose(ours(two), ref(two.permute(0, 2, 1, 3, 4)), atol=1e-5)


def test_untrained_space_time_tower_on_one_frame_is_the_clip_image_tower():
    """LaViLa inflates CLIP: the temporal attention starts at zero, so on a single frame the
    tower is CLIP's image tower (up to LaViLa's LayerNorm eps of 1e-6 for CLIP's 1e-5)."""
    from egoray.models.clip import ClipModel, load_open_clip
    from egoray.models.timesformer import from_open_clip

    clip, _, _ = load_open_clip(ClipModel())
    tower = from_open_clip(clip.visual, num_frames=4).eval()
    x = _frames(2, t=1)
    with torch.no_grad():
        pooled = tower(x) @ clip.visual.proj
        assert torch.allclose(pooled, clip.visual(x[:, 0]), atol=1e-4)
        tower.temporal_embed.normal_(std=0.5)  # a trained time embedding makes frame order matter
        clip4 = _frames(3, t=4)
        assert not torch.allclose(tower(clip4), tower(clip4.flip(1)), atol=1e-4)


def test_a_lavila_dual_encoder_checkpoint_imports_to_the_same_embeddings(tmp_path):
    from egoray.cli import main

    ref = tiny_tsf_clip().eval()
    _save_lavila(ref, tmp_path / "lavila.pth", model="CLIP_OPENAI_TIMESFORMER_BASE", norm_embed=True, num_frames=3)
    # the tiny towers' heads are 16 wide (LaViLa's, and the default, 64)
    assert main(["import", "lavila", str(tmp_path / "lavila.pth"), str(tmp_path / "out"), "--head-width", "16"]) == 0
    model = load_video_text(str(tmp_path / "out"))
    assert model.config.temporal == "space_time" and model.config.num_frames == 3
    x = _frames(4)
    texts = ["c opens the drawer", "c cuts the onion into small pieces"]
    tokens = model.tokenize(texts)
    assert tokens.shape == (2, 16)
    with torch.no_grad():
        video = model.encode_video(x)
        text = model.encode_text(tokens)
        expected_video = torch.nn.functional.normalize(ref.encode_image(x.permute(0, 2, 1, 3, 4)), dim=-1)
        expected_text = torch.nn.functional.normalize(ref.encode_text(tokens), dim=-1)
    assert video.shape == text.shape == (2, 24)
    assert (video - expected_video).abs().max() <= 1e-5 and (text - expected_text).abs().max() <= 1e-5
    assert torch.allclose(model.scales()[0], ref.logit_scale.exp())
    # the narrator's input: every token of the tower, as LaViLa's forward_features(cls_at_last=False)
    with torch.no_grad():
        assert torch.allclose(model.video.tokens(x), ref.visual.forward_features(x, cls_at_last=False), atol=1e-5)


def test_import_refuses_what_is_not_a_lavila_tsf_checkpoint(tmp_path):
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not a LaViLa space–time"):
        import_lavila(str(tmp_path / "other.pth"), str(tmp_path / "out"))
    ref = tiny_tsf_clip()
    state = {k: v for k, v in ref.state_dict().items() if k != "ln_final.weight"}
    torch.save({"state_dict": state}, tmp_path / "cut.pth")
    with pytest.raises(InputError, match="not in the checkpoint"):
        import_lavila(str(tmp_path / "cut.pth"), str(tmp_path / "out"), head_width=16)

    class Code:  # a pickle that would run code is refused before anything runs
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"state_dict": {}, "args": Code()}, tmp_path / "code.pth")
    with pytest.raises(InputError, match="refused"):
        import_lavila(str(tmp_path / "code.pth"), str(tmp_path / "out"))


def test_a_lavila_narrator_checkpoint_imports_to_the_same_logits(tmp_path):
    """A VCLM_HF (space–time tower, LaViLa's pooler, GPT-2 with gated cross-attention every 2nd
    layer) saved as LaViLa saves it → ``egoray import lavila`` → ``load_narrator``: the same
    next-token logits for the same frames and tokens, and ``narrate``'s generation runs on it."""
    import copy

    from egoray.cli import main
    from egoray.models.narrator import load_lm, load_narrator
    from tests.lavila_reference import tiny_vclm

    lm, tok = load_lm("tiny:gpt2")
    ref = tiny_vclm(copy.deepcopy(lm), cross_attn_freq=2)
    state = {f"module.{k}": v for k, v in ref.lavila_state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state,
                "args": argparse.Namespace(model="VCLM_OPENAI_TIMESFORMER_BASE_GPT2", num_frames=3)},
               tmp_path / "vclm.pth")
    assert main(["import", "lavila", str(tmp_path / "vclm.pth"), str(tmp_path / "out"), "--head-width", "16",
                 "--lm", "tiny:gpt2"]) == 0
    narrator = load_narrator(str(tmp_path / "out"))
    assert narrator.config.cross_attn_every == 2 and len(narrator.xattn) == 1  # layers 0 of 2
    assert narrator.config.num_queries == 5 and narrator.config.heads == 4 and narrator.config.dim_head == 16
    x = _frames(5)
    batch = narrator.tokenize(["c opens the drawer", "c cuts the onion"])
    with torch.no_grad():
        ours = narrator(x, batch["input_ids"], batch["attention_mask"]).logits
        expected = ref.logits(x.permute(0, 2, 1, 3, 4), batch["input_ids"])
        untouched = lm.eval()(batch["input_ids"]).logits
    assert (ours - expected)[batch["attention_mask"].bool()].abs().max() <= 1e-5
    assert not torch.allclose(ours, untouched, atol=1e-3)  # the video (through open gates) changes them
    texts, nlls = narrator.generate(x, n=2, max_new_tokens=5, seeds=[[1, 2], [3, 4]])
    assert [len(t) for t in texts] == [2, 2] and all(v > 0 for row in nlls for v in row)


def test_a_lavila_distilbert_dual_encoder_imports_to_the_same_embeddings(tmp_path):
    """CLIP_OPENAI_TIMESFORMER_*_DISTILBERT_BASE: the tower and a DistilBERT text tower (its
    first token's state, projected); ``--text-model`` names its config and tokenizer."""
    from transformers import DistilBertConfig, DistilBertModel

    from egoray.models.tiny import build_tokenizer
    from tests.lavila_reference import CLIPHF, SpaceTimeTransformer

    bert_dir = tmp_path / "distilbert"
    torch.manual_seed(7)
    DistilBertModel(DistilBertConfig(vocab_size=800, dim=32, n_layers=2, n_heads=2, hidden_dim=64)).save_pretrained(bert_dir)
    build_tokenizer().save_pretrained(bert_dir)
    ref = CLIPHF(24, SpaceTimeTransformer(64, 16, 64, 2, 4, 3), 64, DistilBertModel.from_pretrained(bert_dir)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _save_lavila(ref, tmp_path / "lavila.pth", model="CLIP_OPENAI_TIMESFORMER_BASE_DISTILBERT_BASE", norm_embed=True)
    import_lavila(str(tmp_path / "lavila.pth"), str(tmp_path / "out"), head_width=16, text_model=str(bert_dir))
    model = load_video_text(str(tmp_path / "out"))
    assert model.config.text == str(bert_dir)
    tokens = model.tokenize(["c opens the drawer", "c cuts"])
    x = _frames(6)
    with torch.no_grad():
        text = model.encode_text(tokens)
        expected = ref.encode_text(tokens["input_ids"], tokens["attention_mask"])
        video = model.encode_video(x)
        expected_video = ref.encode_image(x.permute(0, 2, 1, 3, 4))
    F = torch.nn.functional
    assert (text - F.normalize(expected, dim=-1)).abs().max() <= 1e-5
    assert (video - F.normalize(expected_video, dim=-1)).abs().max() <= 1e-5
