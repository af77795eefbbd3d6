"""A GloVe-format word-vector file whose topic words cluster around topic directions.

Format as glove.6B.50d.txt: one ``word v1 ... vn`` line per word, space separated, no header,
values with 5 decimals. A topic word's vector is ``topic_scale * direction[topic] + noise``; every
other word (neutral title words, glue tokens, distractors) is noise only, so the mean vector of a
title reveals its topic while single words stay noisy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cdanet.simulate.vocab import SYLLABLES


def pseudo_words(rng: np.random.Generator, n: int, exclude: set[str]) -> list[str]:
    """``n`` distinct invented lowercase words (2-4 syllables) not in ``exclude``, in random order."""
    out: dict[str, None] = {}
    syll = np.array(SYLLABLES)
    while len(out) < n:
        m = (n - len(out)) * 2 + 16
        parts = syll[rng.integers(0, len(syll), (m, 4))]
        length = rng.integers(2, 5, m)
        for row, k in zip(parts.tolist(), length.tolist(), strict=True):
            word = "".join(row[:k])
            if len(word) >= 3 and word not in exclude:
                out.setdefault(word, None)
    return list(out)[:n]


def build_vectors(rng: np.random.Generator, topic_words: Mapping[int, Sequence[str]], other_words: Sequence[str],
                  n_topics: int, dim: int, topic_scale: float = 2.5, noise_sd: float = 0.45) -> tuple[list[str], np.ndarray]:
    """(words, vectors [n_words, dim] float64): topic words first (by topic), then ``other_words``.

    Raises ``ValueError`` if a word is listed twice (one word must have exactly one vector).
    """
    words = [w for k in range(n_topics) for w in topic_words.get(k, ())] + list(other_words)
    if len(set(words)) != len(words):
        dupes = sorted({w for w in words if words.count(w) > 1})
        raise ValueError(f"GloVe vocabulary lists words twice: {dupes[:10]}")
    direction = rng.normal(size=(n_topics, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    vectors = rng.normal(0.0, noise_sd, (len(words), dim))
    row = 0
    for k in range(n_topics):
        n = len(topic_words.get(k, ()))
        vectors[row:row + n] += topic_scale * direction[k]
        row += n
    return words, vectors


def format_lines(words: Sequence[str], vectors: np.ndarray) -> list[str]:
    """``word v1 ... vn`` lines with 5 decimals."""
    fmt = " ".join(["%.5f"] * vectors.shape[1])
    return [f"{w} {fmt % tuple(v)}" for w, v in zip(words, vectors.tolist(), strict=True)]
