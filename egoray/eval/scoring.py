"""``egoray score``: metrics of any system's outputs read from files, printed as one JSON object.

Text files are JSON (``{id: text}``, ``{id: [texts]}`` or a list of ``{"id", "text"|"caption"}``
records) or Parquet (an id column and a text column; a list column or repeated ids give several
references). Matrices are ``.npy`` (or ``.npz``, first array); relevancy may also be a pickle.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.data.raw import InputError, parse_json

ID_COLS = ("id", "caption_id", "window_id", "video_uid", "video_id", "narration_id", "image_id")
TEXT_COLS = ("text", "caption", "captions", "summary", "narration", "references")


def read_texts(url: str) -> dict[str, list[str]]:
    """id → texts from a JSON or Parquet file."""
    if url.endswith(".json"):
        data = parse_json(storage.read_bytes(url), url)
        if isinstance(data, dict):
            pairs = list(data.items())
        elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
            pairs = [(r.get("id", r.get("image_id")), r.get("text", r.get("caption"))) for r in data]
            if any(k is None or v is None for k, v in pairs):
                raise InputError(f"{url}: list records need an id (or image_id) and a text (or caption)")
        else:
            raise InputError(f"{url}: expected {{id: text}}, {{id: [texts]}} or a list of {{id, text}} records")
    else:
        try:
            table = storage.read_parquet(url)
        except storage.StorageError as e:
            raise InputError(f"{url}: {e}") from None
        id_col = next((c for c in ID_COLS if c in table.column_names), None)
        text_col = next((c for c in TEXT_COLS if c in table.column_names), None)
        if id_col is None or text_col is None:
            raise InputError(f"{url}: needs an id column ({', '.join(ID_COLS)}) and a text column "
                             f"({', '.join(TEXT_COLS)}); found {table.column_names}")
        pairs = list(zip(table[id_col].cast(pa.string()).to_pylist(), table[text_col].to_pylist(), strict=True))
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        texts = value if isinstance(value, list) else [value]
        out.setdefault(str(key), []).extend("" if t is None else str(t) for t in texts)
    return out


def read_matrix(url: str) -> np.ndarray:
    data = storage.read_bytes(url)
    try:
        if url.endswith(".npz"):
            archive = np.load(io.BytesIO(data))
            matrix = archive[archive.files[0]]
        else:
            matrix = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise InputError(f"{url}: not a .npy/.npz array ({type(e).__name__}: {e})") from None
    if matrix.ndim != 2:
        raise InputError(f"{url}: expected a 2-D array; got shape {matrix.shape}")
    return matrix


def score_captions_files(pred: str, ref: str, tokenizer: str = "ptb") -> dict[str, Any]:
    from egoray.eval.captioning import score_captions

    preds = {k: (v[0] if v else "") for k, v in read_texts(pred).items()}
    return score_captions(preds, read_texts(ref), tokenizer)


def score_retrieval_files(sim: str, relevancy: str | None = None) -> dict[str, Any]:
    """Recall@k / median rank both ways; with a relevancy, also EK-100 MIR mAP and nDCG.

    ``sim`` is [videos, texts] when a relevancy is given (the EK-100 layout); without one it must
    be square and the diagonal holds the pairs.
    """
    from egoray.eval.relevancy import load_relevancy
    from egoray.eval.retrieval import mir_metrics, retrieval_metrics

    s = read_matrix(sim)
    if not np.isfinite(s).all():
        raise InputError(f"{sim}: holds NaN or infinite values")
    if relevancy is None:
        out = {f"v2t_{k}": v for k, v in retrieval_metrics(s).items()}
        out.update({f"t2v_{k}": v for k, v in retrieval_metrics(s.T).items()})
        return {"queries": s.shape[0], **out}
    rel = load_relevancy(relevancy)
    if rel.shape != s.shape:
        raise InputError(f"relevancy {rel.shape} and similarity {s.shape} must have one shape")
    exact = rel == 1
    out: dict[str, Any] = {"videos": s.shape[0], "texts": s.shape[1]}
    if exact.any(axis=1).all():
        out.update({f"v2t_{k}": v for k, v in retrieval_metrics(s, exact).items()})
    if exact.any(axis=0).all():
        out.update({f"t2v_{k}": v for k, v in retrieval_metrics(s.T, exact.T).items()})
    out.update(mir_metrics(s, rel))
    return out


def score_gap_files(a: str, b: str, plot: str | None = None, method: str = "svd") -> dict[str, Any]:
    from egoray.eval.gap import modality_gap, plot_gap

    ea, eb = read_matrix(a), read_matrix(b)
    if ea.shape != eb.shape:
        raise InputError(f"{a} {ea.shape} and {b} {eb.shape}: paired embeddings need one shape")
    out = modality_gap(ea, eb)
    if plot:
        storage.write_bytes(plot, plot_gap(ea, eb, method, ("a", "b")))
        out["plot"] = plot
    return out
