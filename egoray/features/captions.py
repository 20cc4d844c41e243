"""CoCa frame captions and the de-duplication of near-identical captions."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from egoray.config import StrictModel
from egoray.features.vectors import unit_rows
from egoray.features.vision import ImageEncoder, to_tensor
from egoray.models.clip import ClipModel


class CaptionOptions(StrictModel):
    """How CoCa writes a caption (open_clip's ``generate`` options; :mod:`egoray.features.coca_decode`)."""

    generation_type: str = Field("top_p", pattern="^(top_p|top_k|beam_search)$")
    seq_len: int = Field(20, ge=2, description="caption length in tokens at most")
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    num_beams: int = Field(6, ge=1)
    num_beam_groups: int = Field(3, ge=1, description="beam_search: groups of beams (open_clip's default, 3)")
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _beams_fill_groups(self) -> CaptionOptions:
        if self.generation_type == "beam_search" and (self.num_beams < 2 or self.num_beams % self.num_beam_groups):
            raise ValueError(f"beam_search needs num_beams ({self.num_beams}) > 1 and divisible by "
                             f"num_beam_groups ({self.num_beam_groups})")
        return self


class CocaCaptioner(ImageEncoder):
    """A CoCa model: captions, image embeddings and text embeddings from the same weights."""

    def __init__(self, spec: ClipModel, options: CaptionOptions, device: str | None = None) -> None:
        super().__init__(spec, device)
        if not hasattr(self.model, "text_decoder"):
            raise ValueError(f"{spec.name} is not a CoCa model (no text decoder); use a coca_* model")
        self.options = options

    def caption(self, frames: np.ndarray, seed: int = 0) -> list[str]:
        import open_clip
        import torch

        from egoray.features.coca_decode import cut_at_eot, generate

        o = self.options
        out: list[str] = []
        torch.manual_seed(seed)
        context = int(getattr(self.model, "context_length", 77) or 77)
        for i in range(0, len(frames), o.batch_size):
            x = to_tensor(frames[i:i + o.batch_size], self.mean, self.std).to(self.device)
            kwargs = dict(generation_type=o.generation_type, seq_len=o.seq_len, max_seq_len=context,
                          temperature=o.temperature, top_p=o.top_p, top_k=o.top_k)
            if o.generation_type == "beam_search":
                kwargs.update(num_beams=o.num_beams, num_beam_groups=o.num_beam_groups)
            for ids in cut_at_eot(generate(self.model, x, **kwargs)):
                out.append(" ".join(open_clip.decode(torch.tensor(ids)).split()).rstrip(" ."))
        return out

    def encode_texts(self, texts: list[str], normalize: bool = True) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.no_grad():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return self.model.encode_text(tokens, normalize=normalize).float().cpu().numpy()


def dedupe_captions(captions: list[str], embeddings: np.ndarray, threshold: float = 0.9) -> list[int]:
    """Indices of the captions kept: one per cluster of near-identical captions, in time order.

    Clusters: agglomerative (average linkage) on cosine distance of the caption text embeddings,
    merged while the distance is below ``1 - threshold``; identical texts always share a cluster.
    The earliest caption of each cluster is kept.
    """
    n = len(captions)
    if n <= 1:
        return list(range(n))
    from sklearn.cluster import AgglomerativeClustering

    emb = unit_rows(np.asarray(embeddings, dtype=np.float64))
    # identical texts → identical vectors, whatever the encoder
    first_of_text: dict[str, int] = {}
    for i, c in enumerate(captions):
        first_of_text.setdefault(c.strip().lower(), i)
        emb[i] = emb[first_of_text[c.strip().lower()]]
    labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                     distance_threshold=max(1e-9, 1.0 - threshold)).fit_predict(emb)
    kept: dict[int, int] = {}
    for i, label in enumerate(labels):
        kept.setdefault(int(label), i)
    return sorted(kept.values())
