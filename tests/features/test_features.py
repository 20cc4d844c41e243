"""Encoders and caption de-duplication (Ray-free)."""

import numpy as np

from egoray.features.captions import CaptionOptions, CocaCaptioner, dedupe_captions
from egoray.features.text import TextEncoder, TextEncoderConfig, encoder_label
from egoray.features.vision import ImageEncoder
from egoray.models.clip import ClipModel


def test_text_encoders():
    st = TextEncoder(TextEncoderConfig(model="tiny:sentence", normalize=True))
    emb = st.encode(["The camera wearer cuts an onion", "a cup", "a cup"])
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[1], emb[2])
    clip = TextEncoder(TextEncoderConfig(kind="open_clip", clip=ClipModel(name="tiny-clip"), dtype="float16"))
    e2 = clip.encode(["The person in this video is doing cut onion"] * 3)
    assert e2.shape == (3, 32) and e2.dtype == np.float16
    # what outputs record as the model: the encoder's own name, known before any model is loaded
    assert (st.name, clip.name) == ("tiny:sentence", "tiny-clip:random")
    assert encoder_label(clip.config) == clip.name and encoder_label(st.config) == st.name
    assert encoder_label(TextEncoderConfig(kind="video_text", model="/runs/vt/best")) == "video_text:/runs/vt/best"


def test_image_encoder_is_deterministic_and_streams():
    enc = ImageEncoder(ClipModel(name="tiny-clip", seed=1))
    frames = np.random.default_rng(0).integers(0, 255, size=(10, 64, 64, 3), dtype=np.uint8)
    a = enc.encode(frames)
    b = enc.encode_stream(iter(frames), batch_size=3)
    assert a.shape == (10, 32)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(ImageEncoder(ClipModel(name="tiny-clip", seed=1)).encode(frames), a, atol=1e-6)


def test_coca_captions_with_the_locked_versions():
    coca = CocaCaptioner(ClipModel(name="tiny-coca"), CaptionOptions(seq_len=8, batch_size=2))
    frames = np.random.default_rng(1).integers(0, 255, size=(3, 64, 64, 3), dtype=np.uint8)
    captions = coca.caption(frames, seed=0)
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    assert all("<start_of_text>" not in c and "<end_of_text>" not in c for c in captions)
    assert coca.encode_texts(captions).shape == (3, 64)
    assert coca.encode(frames).shape == (3, 64)


def test_dedupe_keeps_one_per_cluster_in_time_order():
    captions = ["a cup on a table", "a knife", "A cup on a table", "an onion", "a knife", "a cup on a table"]
    rng = np.random.default_rng(0)
    base = {"cup": rng.normal(size=8), "knife": rng.normal(size=8), "onion": rng.normal(size=8)}
    emb = np.stack([base["cup"], base["knife"], base["cup"] + 1e-3, base["onion"], base["knife"], base["cup"]])
    assert dedupe_captions(captions, emb, threshold=0.95) == [0, 1, 3]
    # identical texts merge even if an encoder gave them different vectors
    assert dedupe_captions(["x", "x"], rng.normal(size=(2, 8)), threshold=0.99) == [0]
    assert dedupe_captions([], np.zeros((0, 8))) == []
    assert dedupe_captions(["only"], np.ones((1, 8))) == [0]
