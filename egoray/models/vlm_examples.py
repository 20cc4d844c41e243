"""Clip windows and the choice of in-context examples: a narration's clip (a point narration
widened to EILEV's clip length, kept inside its video) and EILEV's selection of examples from a
pool of labelled clips — the same for narration and training."""

from __future__ import annotations

from typing import Any

import numpy as np


def point_window(t_start: float, t_end: float, length: float) -> tuple[float, float]:
    """A narration's clip: its own interval, or — narrated at a point (under 0.5 s) — ``length``
    seconds centred on it, shifted to start at 0 at the latest (EILEV's 8 s clips; the end is
    kept inside the video where its length is known, :func:`fit_window`)."""
    if t_end - t_start >= 0.5:
        return t_start, t_end
    start = max(0.0, (t_start + t_end) / 2 - length / 2)
    return start, start + length


def fit_window(t_start: float, t_end: float, duration: float | None) -> tuple[float, float]:
    """The window moved back inside a video of ``duration`` seconds, its length kept where it fits."""
    if duration is None or t_end <= duration:
        return t_start, t_end
    return max(0.0, duration - (t_end - t_start)), duration


UNLABELLED = ("", "[other]")  # Ego4D's catch-all verb is no label to match on


def _label(value: Any) -> str:
    return "" if value is None else str(value)


class ExamplePool:
    """EILEV's choice of in-context examples from a pool of labelled clips (indexed once).

    ``verb_noun``: candidates sharing the query's verb (but not its noun) and candidates sharing
    its noun (but not its verb) are two buckets; ``floor(need * ratio)`` come from the verb bucket
    and the rest from the noun bucket, one bucket refilling the other when it runs dry; any
    shortfall is drawn at random from the pool without the query's own action; the order is
    shuffled. ``[other]`` and empty labels match nothing. ``random``: any other clip.
    """

    def __init__(self, pool: list[dict[str, Any]]) -> None:
        self.pool = pool
        self.by_verb: dict[str, list[int]] = {}
        self.by_noun: dict[str, list[int]] = {}
        for i, p in enumerate(pool):
            verb, noun = _label(p.get("verb")), _label(p.get("noun"))
            if verb not in UNLABELLED:
                self.by_verb.setdefault(verb, []).append(i)
            if noun:
                self.by_noun.setdefault(noun, []).append(i)

    @staticmethod
    def _key(item: dict[str, Any]) -> Any:
        return item["id"] if item.get("id") is not None else (item.get("video_uid"), item.get("t_start"),
                                                              item.get("t_end"))

    def choose(self, query: dict[str, Any], k: int, strategy: str, ratio: float, rng: np.random.Generator
               ) -> list[int]:
        """Indices of up to ``k`` pool clips for ``query`` (never the query's own clip)."""
        own = self._key(query)
        pool = self.pool
        if k == 0:
            return []

        def draw(n: int, ok: Any) -> list[int]:  # a random order of the whole pool, the first n that qualify
            found: list[int] = []
            for i in rng.permutation(len(pool)).tolist():
                if len(found) == n:
                    break
                if ok(i):
                    found.append(i)
            return found

        if strategy == "random":
            return draw(k, lambda i: self._key(pool[i]) != own)
        qv, qn = _label(query.get("verb")), _label(query.get("noun"))
        verbs = [i for i in self.by_verb.get(qv, []) if _label(pool[i].get("noun")) != qn
                 and self._key(pool[i]) != own] if qv not in UNLABELLED else []
        nouns = [i for i in self.by_noun.get(qn, []) if _label(pool[i].get("verb")) != qv
                 and self._key(pool[i]) != own] if qn else []
        chosen: list[int] = []
        need = k
        while need > 0 and (verbs or nouns):
            n_verb = int(need * ratio) if verbs and nouns else (need if verbs else 0)
            for bucket, n in ((verbs, n_verb), (nouns, need - n_verb)):
                picks = set(rng.permutation(len(bucket))[:n].tolist())
                chosen += [bucket[j] for j in sorted(picks)]
                bucket[:] = [x for j, x in enumerate(bucket) if j not in picks]
            need = k - len(chosen)
        if need > 0:
            taken = set(chosen)
            labelled = bool(qv or qn)
            chosen += draw(need, lambda i: i not in taken and self._key(pool[i]) != own and not (
                labelled and _label(pool[i].get("verb")) == qv and _label(pool[i].get("noun")) == qn))
        return [chosen[j] for j in rng.permutation(len(chosen))]


def choose_examples(query: dict[str, Any], pool: list[dict[str, Any]], k: int, strategy: str, ratio: float,
                    rng: np.random.Generator) -> list[int]:
    """:meth:`ExamplePool.choose` over a pool indexed for this one query."""
    return ExamplePool(pool).choose(query, k, strategy, ratio, rng)
