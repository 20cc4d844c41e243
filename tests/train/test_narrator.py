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
    model = _narrator(lm_and_tokenizer).eval()
    batch = model.tokenize(["c opens the drawer", "c cuts the onion into pieces"])
    frames = torch.randn(2, 4, 16)
    ours = model(frames, batch["input_ids"], batch["attention_mask"]).logits
    ref = lm.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(ours, ref)
    # in training the frozen LM keeps its dropout, as LaViLa's GPT-2 does (it is in train mode)
    model.train()
    assert model.lm.training and all(b.training for b in model.xattn)
    assert not torch.equal(model(frames, batch["input_ids"], batch["attention_mask"]).logits, ref)
    model.eval()
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

    tower_config = VideoTextConfig(temporal="space_time", num_frames=3)
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
    patches = (64 // towers.video.visual.patch_size) ** 2
    assert tokens.shape == (2, 1 + 3 * patches, model.video.width)  # LaViLa's: one class token, every patch
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


def test_pooler_is_lavilas_multi_query_attention_pool():
    """LaViLa's ``img_attn_pool`` (``coca.CrossAttention(dim, context_dim, dim_head, heads,
    norm_context=True)``) and ``img_attn_pool_norm``, written out from its code: bias-free
    LayerNorms (gain, zero beta) on the queries and the context, ``to_q`` to heads × dim_head,
    ``to_kv`` to one key/value head of dim_head, ``q * dim_head**-0.5``, the row max subtracted
    before the softmax, ``to_out`` and no residual, then a bias-free LayerNorm."""
    import torch.nn.functional as F

    from egoray.models.narrator_blocks import AttentionPooler

    torch.manual_seed(3)
    heads, dim_head, width, video_dim = 3, 8, 12, 10
    pooler = AttentionPooler(video_dim, width, num_queries=5, heads=heads, dim_head=dim_head)
    with torch.no_grad():
        for p in (pooler.ln_q.weight, pooler.ln_kv.weight, pooler.ln_out.weight):
            p.uniform_(0.5, 1.5)  # gains away from 1, so that a missing norm shows
    assert [n for n, _ in pooler.named_parameters() if "bias" in n] == []
    assert pooler.to_kv.weight.shape == (2 * dim_head, video_dim)  # multi-query: one K/V head
    context = torch.randn(2, 7, video_dim)

    def layer_norm(x, gamma):
        return F.layer_norm(x, x.shape[-1:], gamma, torch.zeros_like(gamma))

    queries = pooler.queries.unsqueeze(0).expand(2, -1, -1)
    x = layer_norm(queries, pooler.ln_q.weight)
    c = layer_norm(context, pooler.ln_kv.weight)
    q = (x @ pooler.to_q.weight.T).view(2, 5, heads, dim_head).permute(0, 2, 1, 3) * dim_head**-0.5
    k, v = (c @ pooler.to_kv.weight.T).chunk(2, dim=-1)
    sim = torch.einsum("bhid,bjd->bhij", q, k)
    attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
    out = torch.einsum("bhij,bjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(2, 5, heads * dim_head)
    expected = layer_norm(out @ pooler.to_out.weight.T, pooler.ln_out.weight)
    assert torch.allclose(pooler(context), expected, atol=1e-6)
    assert pooler.queries.std().item() == pytest.approx(width**-0.5, rel=0.5)  # normal(std=width**-0.5)


def test_gated_block_is_lavilas_gpt2_cross_attention_block(lm_and_tokenizer):
    """LaViLa's ``GPT2Block`` before its self-attention (``gpt2_gated.py``): ``ln_cross_attn``,
    GPT-2's own cross-attention (``GPT2Attention(is_cross_attention=True)``: q from the text,
    k/v from the visual tokens, no mask), ``tanh(alpha_cattn)``, residual; ``ln_2_crossattention``,
    ``GPT2MLP(squared_relu=True)``, ``tanh(alpha_dense)``, residual. The reference is
    transformers' GPT2Attention (the class LaViLa's file copies) with our weights, and the MLP
    written out; with dropout the training draws differ, in eval they are the same numbers."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    lm, _ = lm_and_tokenizer
    model = _narrator(lm_and_tokenizer)
    block = model.xattn[0]
    cfg = copy.deepcopy(lm.config)
    cfg._attn_implementation = "eager"
    assert {m.p for m in block.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}  # GPT-2's attn/resid_pdrop
    assert block.ff.fc.weight.shape == (4 * cfg.n_embd, cfg.n_embd)
    # GPT-2's init of new weights: N(0, 0.02), zero biases, c_proj N(0, 0.02 / sqrt(2 * n_layer))
    assert block.attn.q.weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert block.ff.proj.weight.std().item() == pytest.approx(0.02 / (2 * cfg.n_layer) ** 0.5, rel=0.15)
    assert float(block.attn.q.bias.abs().sum()) == 0 and float(block.attn_gate) == float(block.ff_gate) == 0
    torch.manual_seed(4)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = GPT2Attention(cfg, is_cross_attention=True, layer_idx=0).eval()
    with torch.no_grad():  # Conv1D holds [in, out]: Linear's weight transposed
        ref.q_attn.weight.copy_(block.attn.q.weight.T)
        ref.q_attn.bias.copy_(block.attn.q.bias)
        ref.c_attn.weight.copy_(block.attn.kv.weight.T)
        ref.c_attn.bias.copy_(block.attn.kv.bias)
        ref.c_proj.weight.copy_(block.attn.proj.weight.T)
        ref.c_proj.bias.copy_(block.attn.proj.bias)
    x, visual = torch.randn(2, 6, cfg.n_embd), torch.randn(2, 5, cfg.n_embd)
    block.eval()
    h = x + torch.tanh(block.attn_gate) * ref(block.ln(x), encoder_hidden_states=visual)[0]
    ff = block.ff
    mlp = torch.pow(torch.relu(block.ln_ff(h) @ ff.fc.weight.T + ff.fc.bias), 2) @ ff.proj.weight.T + ff.proj.bias
    expected = h + torch.tanh(block.ff_gate) * mlp
    assert torch.allclose(block(x, visual), expected, atol=1e-5)
    block.train()
    assert not torch.allclose(block(x, visual), expected, atol=1e-5)
