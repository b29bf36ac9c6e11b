"""Show an explainer sentence while it is written, yet never a word the check has not passed.

The explainer writes ~15 tokens per sentence; on 2 CPU cores that is about a second, and a
buyer who waits for the whole sentence to be checked sees nothing for that second. A
:class:`SentenceStream` shows the sentence as it grows instead, under two rules:

- **whole words only**: the text after the last space may still grow ("Ca" of "Catwalk",
  "navy" of "navy blue"), so it waits;
- **only a prefix the check passes**: the words so far, read by the same
  :class:`~rag.explanation_check.ExplanationChecker` as the finished sentence, claim nothing
  the record contradicts and name no product outside the ranking. A prefix that fails ("#1 is
  a red" for a rust shirt) is not shown; a longer one may pass again ("casual" read as a usage,
  then "casual shoes" as the article type).

What is shown is therefore always true. Only when the finished sentence fails its check after
part of it was shown (a false brand or usage at its end) does the stream take that part back:
:meth:`SentenceStream.finish` answers how many characters to retract before the plain
sentence built from the record (the chat stream then sends a ``revise`` event with the whole
explanation as it now stands).

Example:
    >>> stream = SentenceStream(rank=1, ranked=[shirt], checker=checker)  # doctest: +SKIP
    >>> stream.update(" a navy shirt for")  # doctest: +SKIP
    '#1 (Turtle Men Navy Shirt) is a navy shirt'
    >>> stream.finish("#1 is a navy shirt for men.")  # doctest: +SKIP
    (0, ' for men.')
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.explainer_prompt import expand_references, sentence_start
from rag.explanation_check import ExplanationChecker
from retrieval.catalogue import Product

__all__ = ["SentenceStream"]

_LAST_SPACE = re.compile(r"\s(?=\S*$)")


class SentenceStream:
    """The part of the ``rank``-th sentence that may be shown as it is written; ``lead`` goes before it (a space)."""

    def __init__(self, rank: int, ranked: Sequence[Product], checker: ExplanationChecker, *, lead: str = "") -> None:
        self.rank = rank
        self.ranked = ranked
        self.checker = checker
        self.lead = lead
        self.shown = ""  # what the buyer sees of this sentence so far (with the lead, references expanded)

    def update(self, written: str) -> str:
        """What to show now, given the model's text so far (after the sentence start); '' when nothing new is safe."""
        cut = _LAST_SPACE.search(written)
        words = written[: cut.start()] if cut else ""
        if not words.strip():
            return ""  # not one whole word of the model's yet: the start alone is Tandem's, not an explanation
        raw = sentence_start(self.rank) + words
        if not self.checker.check(raw, self.ranked).ok:
            return ""
        return self._grow(self.lead + expand_references(raw, self.ranked))

    def finish(self, sentence: str) -> tuple[int, str]:
        """``(chars to retract, text to add)`` so that the buyer sees ``sentence`` (checked, or the record's)."""
        text = self.lead + expand_references(sentence, self.ranked)
        if text.startswith(self.shown):
            return 0, self._grow(text)
        retract, self.shown = len(self.shown), text
        return retract, text

    def _grow(self, text: str) -> str:
        if len(text) <= len(self.shown) or not text.startswith(self.shown):
            return ""
        delta, self.shown = text[len(self.shown) :], text
        return delta
