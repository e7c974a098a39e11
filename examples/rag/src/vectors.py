"""The passages and their embeddings, in memory, searched by cosine similarity (plain Python, no numpy)."""

import math


class VectorIndex:
    def __init__(self):
        self._entries = []  # (passage, vector, norm)

    def __len__(self):
        return len(self._entries)

    def add(self, passages, vectors):
        for passage, vector in zip(passages, vectors, strict=True):
            self._entries.append((passage, vector, math.sqrt(sum(x * x for x in vector))))

    def clear(self):
        self._entries.clear()

    def nearest(self, vector, k):
        """The k passages most similar to `vector`, best first: [{"text", "score"}]."""
        norm = math.sqrt(sum(x * x for x in vector))
        scored = [(cosine(vector, norm, other, other_norm), passage)
                  for passage, other, other_norm in self._entries]
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return [{"text": passage, "score": round(score, 4)} for score, passage in scored[:k]]


def cosine(a, a_norm, b, b_norm):
    if not a_norm or not b_norm:
        return 0.0
    return sum(x * y for x, y in zip(a, b)) / (a_norm * b_norm)
