"""The video–text towers (tiny open_clip ViT, offline) and the clip decoding stage, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from egoray.models.video_text import VideoTextConfig, VideoTextModel


@pytest.fixture(scope="module")
def space_time() -> VideoTextModel:
    return VideoTextModel(VideoTextConfig(temporal="space_time", num_frames=3)).eval()


def _clips(n: int = 2, frames: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, frames, 64, 64, 3), dtype=np.uint8)


def test_untrained_space_time_tower_on_one_frame_is_clips_image_embedding(space_time):
    """As LaViLa inflates CLIP (temporal attention zero-initialised): one frame through the
    video tower is that frame through CLIP's image tower, projected by CLIP's projection."""
    from egoray.models.clip import load_open_clip

    clip, _, _ = load_open_clip(space_time.config.vision)
    x = space_time.preprocess(_clips(2, 1))
    with torch.no_grad():
        video = space_time.encode_video(x)
        image = torch.nn.functional.normalize(clip.visual(x[:, 0]), dim=-1)
    assert video.shape == (2, 32)
    assert torch.allclose(video, image, atol=1e-4)


def test_frame_order_matters_to_the_space_time_tower_and_not_to_the_average(space_time):
    """With a time embedding, a clip's embedding depends on its frames' order (attention alone
    is order-blind: the time embedding says which frame is which)."""
    model = VideoTextModel(VideoTextConfig(temporal="space_time", num_frames=3)).eval()
    torch.nn.init.normal_(model.video.visual.temporal_embed, std=0.5)
    x = model.preprocess(_clips(1))
    with torch.no_grad():
        forward, backward = model.encode_video(x), model.encode_video(x.flip(1))
    assert not torch.allclose(forward, backward, atol=1e-4)
    averaged = VideoTextModel(VideoTextConfig(temporal="average", num_frames=3)).eval()
    with torch.no_grad():
        assert torch.allclose(averaged.encode_video(x), averaged.encode_video(x.flip(1)), atol=1e-5)
        frames = torch.stack([averaged.video.visual(x[:, i]) @ averaged.video.proj for i in range(3)], 1).mean(1)
        assert torch.allclose(averaged.encode_video(x), torch.nn.functional.normalize(frames, dim=-1), atol=1e-5)


def test_both_towers_train_with_gradient_checkpointing():
    model = VideoTextModel(VideoTextConfig(temporal="space_time", num_frames=3))
    model.set_gradient_checkpointing(True)
    v, t, scale, _ = model(model.preprocess(_clips()), model.tokenize(["opens the door", "cuts an onion"]))
    (v @ t.T * scale).sum().backward()
    time_qkv = model.video.visual.blocks[0].timeattn.qkv.weight
    assert time_qkv.grad is not None and time_qkv.grad.abs().sum() > 0
    assert model.text.clip.token_embedding.weight.grad is not None
    assert torch.allclose(v.norm(dim=-1), torch.ones(2), atol=1e-5)  # norm_embed


def test_a_new_joint_space_gets_new_projections_as_lavila():
    """embed_dim other than CLIP's: LaViLa's image_projection [vision width, E] and
    text_projection [text width, E], normal(std = width ** -0.5); CLIP's otherwise."""
    model = VideoTextModel(VideoTextConfig(num_frames=2, embed_dim=16))
    assert model.video.proj.shape == (64, 16) and model.text.clip.text_projection.shape == (64, 16)
    assert model.video.proj.std().item() == pytest.approx(64**-0.5, rel=0.2)
    v, t, _, _ = model(model.preprocess(_clips(2, 2)), model.tokenize(["opens", "cuts"]))
    assert v.shape == t.shape == (2, 16)


def test_transformers_text_tower(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    from egoray.models.tiny import build_tokenizer

    DistilBertModel(DistilBertConfig(vocab_size=800, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    model = VideoTextModel(VideoTextConfig(temporal="average", num_frames=2, text=str(tmp_path), embed_dim=16,
                                           context_length=12))
    tokens = model.tokenize(["opens the door", "cuts"])
    assert tokens["input_ids"].shape == (2, 12)
    v, t, _, _ = model(model.preprocess(_clips(2, 2)), tokens)
    assert v.shape == t.shape == (2, 16)


def test_decode_clips_reads_windows_and_rejects_missing_videos(synth_videos):
    from egoray.stages.base import REASON
    from egoray.stages.clips import DecodeClips
    from egoray.stages.video import from_npy

    videos = {p.stem: str(p) for p in (synth_videos / "videos").glob("*.mp4")}
    uid = sorted(videos)[0]
    batch = pa.table({"id": ["a", "b", "c"], "video_uid": [uid, "missing", uid], "t_start": [1.0, 0.0, 3.0],
                      "t_end": [2.0, 1.0, 3.0], "verb": ["open", None, None], "noun": ["door", None, None]})
    out = DecodeClips(videos, num_frames=4, size=32, offset=0.5)(batch)
    assert out[REASON].to_pylist() == [None, "no_video", None]
    clip = from_npy(out["frames"][0].as_py())
    assert clip.shape == (4, 32, 32, 3) and clip.dtype == np.uint8
    assert out["frames"][1].as_py() is None
    assert out["verb_code"][0].as_py() >= 0 and out["verb_code"][2].as_py() == -1
