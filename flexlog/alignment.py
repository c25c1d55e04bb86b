"""Map templates a detector has never seen to their closest known relative, by text.

When a system is upgraded, a log message gains, loses or changes a word and its template gets
a new key. A count-vector voter would put it in the "unseen" column; if the new template's text
is known (an ``EventId,EventTemplate`` table, or a log parser), it can instead be counted as the
known template it is most similar to. The same mapping lets a bundle trained on one parser's
keys (e.g. HDFS ``E5``) score raw logs parsed anew.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from flexlog.data.records import LogSequence

_PARAM = re.compile(r"<[A-Z*_]+>|\d+")


def _clean(template: str) -> str:
    return _PARAM.sub(" ", template).lower()


class TemplateAligner:
    """Nearest known template by cosine similarity of word and character n-gram TF-IDF.

    Parameters
    ----------
    known : mapping of event key to template text (the training templates).
    threshold : minimum cosine similarity for a match; below it the key stays unseen.
    """

    def __init__(self, known: Mapping[str, str], threshold: float = 0.5):
        if not known:
            raise ValueError("TemplateAligner needs at least one known template")
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.keys = list(known)
        self.threshold = threshold
        self._vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
        self._known = normalize(self._vec.fit_transform([_clean(known[k]) for k in self.keys]))
        self._known_set = set(self.keys)

    def match(self, templates: Mapping[str, str]) -> dict[str, tuple[str | None, float]]:
        """For each (key, text): the best known key (None below the threshold) and its score.
        A key that is already known maps to itself."""
        out: dict[str, tuple[str | None, float]] = {}
        new = [k for k in templates if k not in self._known_set]
        for k in templates:
            if k in self._known_set:
                out[k] = (k, 1.0)
        if new:
            sims = (
                normalize(self._vec.transform([_clean(templates[k]) for k in new])) @ self._known.T
            )
            sims = sims.toarray()
            best = sims.argmax(axis=1)
            for i, k in enumerate(new):
                score = float(sims[i, best[i]])
                out[k] = (self.keys[best[i]] if score >= self.threshold else None, score)
        return out

    def mapping(self, templates: Mapping[str, str]) -> dict[str, str]:
        """Only the keys that change: new key → known key."""
        return {k: m for k, (m, _) in self.match(templates).items() if m is not None and m != k}


def align_sequences(
    sequences: Iterable[LogSequence], mapping: Mapping[str, str]
) -> list[LogSequence]:
    """Rewrite events through ``mapping`` (keys not in it are kept as they are), keeping each
    sequence's label and group."""
    if not mapping:
        return list(sequences)
    get = mapping.get
    return [dataclasses.replace(s, events=tuple(get(ev, ev) for ev in s.events)) for s in sequences]
