"""Refuse texts a word-level text tower cannot read.

MiniCLIP's tokenizer maps every word outside its vocabulary to the same ``<unk>`` token, so "a photo of a dog"
and "a photo of a cat" become one prompt and a zero-shot accuracy over them is meaningless, yet nothing fails.
:func:`check_known_words` turns that into an error naming the words, or a warning when the caller allows it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from vlalign.models.base import ContrastiveModel


class UnknownWordsError(ValueError):
    """Texts hold words the model's vocabulary does not know."""


class UnknownWordsWarning(UserWarning):
    """Texts hold unknown words and the caller allowed them (``--allow-unknown-words``)."""


def _listing(words: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(w) for w in words[:limit])
    return shown + (f" and {len(words) - limit} more" if len(words) > limit else "")


def check_known_words(model: ContrastiveModel, texts: Sequence[str], what: str = "texts",
                      allow: bool = False, allow_option: str | None = None) -> list[str]:
    """The words of ``texts`` that ``model`` cannot represent; raise :class:`UnknownWordsError` if any, or warn
    (:class:`UnknownWordsWarning`) when ``allow`` is set. ``what`` names the texts in the message.

    ``allow_option`` is the command-line option that allows them (``--allow-unknown-words``), named in the error
    only when the caller has one: a command without it (``vlalign train``) must not point at an option it lacks.
    """
    unknown = model.unknown_words(list(texts))
    if not unknown:
        return []
    size = model.vocabulary_size()
    known = f"its vocabulary of {size} words" if size is not None else "its vocabulary"
    message = (f"{what}: {len(unknown)} word(s) unknown to the model ({known}): {_listing(unknown)}; they all read "
               f"as the same <unk> token, so prompts that differ only in them are identical")
    if allow:
        warnings.warn(message, UnknownWordsWarning, stacklevel=2)
        return unknown
    remedy = f", or allow them with {allow_option}" if allow_option else ", or change the texts to use known words"
    raise UnknownWordsError(f"{message}. Use a model that knows these words (e.g. a transformers CLIP){remedy}")
