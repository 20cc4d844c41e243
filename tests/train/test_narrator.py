import copy

import pytest
import torch

from egoray.models.narrator import Narrator, NarratorConfig, load_lm, load_narrator


@pytest.fixture(scope="module")
def lm_and_tokenizer():
    return load_lm("tiny:gpt2")


def _narrator(lm_and_tokenizer, **kw):
    lm, tok = lm_and_tokenizer
    torch.manual_seed(0)
    return Narrator(NarratorConfig(video_dim=16, num_queries=3, **kw), copy.deepcopy(lm), tok)


def test_gates_at_zero_reproduce_the_frozen_lm(lm_and_tokenizer):
    lm, _ = lm_and_tokenizer
    model = _narrator(lm_and_tokenizer).train()
    batch = model.tokenize(["c opens the drawer", "c cuts the onion into pieces"])
    frames = torch.randn(2, 4, 16)
    ours = model(frames, batch["input_ids"], batch["attention_mask"]).logits
    ref = lm.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(ours, ref)
    # with open gates the video changes the output
    with torch.no_grad():
        for block in model.xattn:
            block.attn_gate.fill_(0.5)
    assert not torch.allclose(model(frames, batch["input_ids"], batch["attention_mask"]).logits, ref)


def test_only_pooler_and_cross_attention_train(lm_and_tokenizer):
    model = _narrator(lm_and_tokenizer, cross_attn_every=2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith(("pooler.", "xattn.")) for n in names)
    assert len(model.xattn) == 1  # 2 layers, every 2nd


def test_narrator_loss_falls_and_video_matters(lm_and_tokenizer):
    model = _narrator(lm_and_tokenizer).train()
    # two "videos" with their own narration: the model must use the frames to tell them apart
    frames = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    batch = model.tokenize(["c opens the fridge", "c washes a cup"])
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = model(frames, batch["input_ids"], batch["attention_mask"], batch["labels"])
        first = first if first is not None else float(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.loss) < first * 0.9
    swapped = model(frames.flip(0), batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
    assert float(swapped) > float(out.loss)


def test_standardised_features_lose_their_shared_component_and_save_their_statistics(lm_and_tokenizer, tmp_path):
    """Features that are one large shared vector plus a small per-clip part (as a random encoder's
    are): the BatchNorm's running statistics learn the shared part, and in eval mode the pooler
    sees the per-clip part at unit scale; the statistics are saved and loaded with the narrator."""
    model = _narrator(lm_and_tokenizer, standardise=True).train()
    g = torch.Generator().manual_seed(2)
    shared = 20 * torch.randn(16, generator=g)
    frames = shared + 0.1 * torch.randn(64, 4, 16, generator=g)
    with torch.no_grad():
        for _ in range(150):  # BatchNorm's running mean and variance converge (momentum 0.1)
            model.visual_tokens(frames)
    bn = model.pooler.standardise
    assert torch.allclose(bn.running_mean, frames.flatten(0, 1).mean(0), atol=1e-3)
    model.eval()
    seen = bn(frames.flatten(0, 1))
    assert seen.mean(0).abs().max() < 1e-2 and (seen.std(0) - 1).abs().max() < 0.05
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith(("pooler.", "xattn.")) for n in names)
    assert "pooler.standardise.running_mean" in model.state_dict()
    assert NarratorConfig().standardise is False  # LaViLa's narrator: off unless asked for


def test_kv_cache_gives_the_same_samples(lm_and_tokenizer):
    model = _narrator(lm_and_tokenizer)
    with torch.no_grad():
        for block in model.xattn:
            block.attn_gate.fill_(0.3)
    frames = torch.randn(3, 4, 16)
    seeds = [[5, 6], [7, 8], [9, 10]]
    texts, nll = model.generate(frames, n=2, max_new_tokens=8, seeds=seeds)
    texts2, nll2 = model.generate(frames, n=2, max_new_tokens=8, seeds=seeds, use_cache=False)
    assert len(texts) == 3 and all(len(t) == 2 for t in texts)
    assert texts == texts2
    # a window's captions depend on its own seeds only, not on the other windows of the batch
    alone, _ = model.generate(frames[2:], n=2, max_new_tokens=8, seeds=seeds[2:])
    assert alone == texts[2:]
    assert torch.allclose(torch.tensor(nll), torch.tensor(nll2), atol=1e-4)
    assert all(x > 0 for row in nll for x in row)


def test_entropy_score_is_lavilas_mean_next_token_entropy(lm_and_tokenizer):
    """``generate``'s entropy is the mean over a caption's steps of the entropy of the unmodified
    next-token distribution (LaViLa scores captions by its exponential). Hand-worked case: an LM
    whose logits are all zero is uniform over its V tokens, so both the entropy and the NLL of
    every step are ln V, whatever is sampled."""
    import math

    model = _narrator(lm_and_tokenizer)
    with torch.no_grad():
        model.lm.get_output_embeddings().weight.zero_()  # logits = h · 0 = 0
    vocab = model.lm.get_output_embeddings().weight.shape[0]
    texts, nlls, entropies = model.generate(torch.randn(2, 4, 16), n=3, max_new_tokens=6,
                                            seeds=[[1, 2, 3], [4, 5, 6]], return_entropy=True)
    assert [len(t) for t in texts] == [3, 3]
    for row_nll, row_entropy in zip(nlls, entropies, strict=True):
        assert row_entropy == pytest.approx([math.log(vocab)] * 3, rel=1e-5)
        assert row_nll == pytest.approx([math.log(vocab)] * 3, rel=1e-5)
    _, with_cache = model.generate(torch.randn(1, 4, 16), n=1, max_new_tokens=4, seeds=[[7]])
    assert len(with_cache) == 1  # without return_entropy: texts and NLLs, as before


def test_export_round_trip(lm_and_tokenizer, tmp_path):
    model = _narrator(lm_and_tokenizer)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.01)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("pooler.", "xattn."))}
    blob = {"kind": "narrator", "config": model.config.model_dump(), "state_dict": state}
    (tmp_path / "model").mkdir()
    torch.save(blob, tmp_path / "model" / "model.pt")
    loaded = load_narrator(str(tmp_path))
    frames = torch.randn(2, 4, 16)
    batch = model.tokenize(["c picks the knife"] * 2)
    model.eval()
    assert torch.allclose(model(frames, batch["input_ids"], batch["attention_mask"]).logits,
                          loaded(frames, batch["input_ids"], batch["attention_mask"]).logits)
    torch.save({**blob, "kind": "dual_encoder"}, tmp_path / "model" / "model.pt")
    from egoray.data.raw import InputError

    with pytest.raises(InputError, match="not a narrator"):
        load_narrator(str(tmp_path))


def test_narrator_on_a_video_tower_attends_to_its_frozen_space_time_tokens(lm_and_tokenizer, tmp_path):
    """LaViLa's narrator: a train_video_text tower's tokens (every patch of every frame) feed the
    pooler; the tower's weights load by name from the video–text model (init_from) and stay
    frozen, and the narrator's export carries them so it loads on its own."""
    import numpy as np

    from egoray.models.narrator import saved_prefixes
    from egoray.models.video_text import VideoTextConfig, VideoTextModel
    from egoray.train.recipe import init_weights

    tower_config = VideoTextConfig(temporal="divided", num_frames=3)
    torch.manual_seed(1)
    towers = VideoTextModel(tower_config)
    torch.save({"kind": "video_text", "config": tower_config.model_dump(), "state_dict": towers.state_dict()},
               tmp_path / "model.pt")
    lm, tok = lm_and_tokenizer
    model = Narrator(NarratorConfig(num_queries=5, tower=tower_config), copy.deepcopy(lm), tok)
    counts = init_weights(model, str(tmp_path / "model.pt"))
    tower_tensors = [k for k in towers.state_dict() if k.startswith("video.")]
    assert counts["loaded"] == len(tower_tensors)  # the video tower, nothing of the text tower
    for name, p in model.video.named_parameters():
        assert not p.requires_grad and torch.equal(p, towers.video.get_parameter(name))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith(("pooler.", "xattn.")) for n in trained)

    clips = np.random.default_rng(0).integers(0, 255, (2, 3, 64, 64, 3), dtype=np.uint8)
    frames = model.prepare(clips)
    assert frames.shape == (2, 3, 3, 64, 64)
    tokens = model.video.tokens(frames)
    patches = (64 // towers.video.visual.patch_size[0]) ** 2
    assert tokens.shape == (2, 3 * (1 + patches), model.video.width)
    assert model.visual_tokens(frames).shape == (2, 5, lm.config.hidden_size)
    batch = model.tokenize(["c opens the drawer", "c cuts the onion"])
    out = model.train()(frames, batch["input_ids"], batch["attention_mask"], batch["labels"])
    out.loss.backward()
    assert model.pooler.queries.grad is not None and all(p.grad is None for p in model.video.parameters())
    assert not model.video.training  # frozen: kept in eval mode while the narrator trains

    assert saved_prefixes(model.config) == ("pooler.", "xattn.", "video.")
    state = {k: v for k, v in model.state_dict().items() if k.startswith(saved_prefixes(model.config))}
    torch.save({"kind": "narrator", "config": model.config.model_dump(), "state_dict": state}, tmp_path / "n.pt")
    again = load_narrator(str(tmp_path / "n.pt"))
    with torch.no_grad():
        assert torch.allclose(again.visual_tokens(frames), model.eval().visual_tokens(frames), atol=1e-6)
