"""Embeddings of fixed inputs in fixed batches: class prompts and image sets.

Frozen quantities (prompt embeddings, reference features) are computed here once, in fixed batches: images in
consecutive batches of a fixed size, so that an image's value never depends on how a caller grouped the images (on
some CPUs a float does); a class list's prompts as one batch, so a sub-list embedded on its own may differ in the
last bits (see :func:`class_text_embeddings`).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import torch

from vlalign.models.base import ContrastiveModel
from vlalign.models.vocabulary import check_known_words


def template_problem(template: object) -> str | None:
    """Why ``template`` is not a class prompt template, or None when it is one: a string with exactly one plain
    ``{}`` (where the class name goes) and no other replacement field (``{}`` twice, ``{x}``, ``{!z}`` would fail
    or misplace the name when formatted); literal braces are written ``{{`` and ``}}``."""
    expected = "must contain exactly one '{}' (where the class name goes) and no other '{...}' field"
    if not isinstance(template, str):
        return f"{expected}, got {template!r}"
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        return f"{expected} (write a literal brace as '{{{{' or '}}}}'), got {template!r}: {exc}"
    if fields != [("", "", None)]:
        return f"{expected}, got {template!r}"
    return None


@torch.no_grad()
def class_text_embeddings(model: ContrastiveModel, classnames: Sequence[str],
                          templates: Sequence[str] = ("a photo of a {}",), allow_unknown_words: bool = False,
                          allow_option: str | None = None) -> torch.Tensor:
    """One normalized embedding per class: the mean over ``templates`` of the prompt embeddings -> ``[K, D]``.

    All prompts of the class list run as one batch, so the result is fixed for a given list; a sub-list embedded
    on its own may differ in the last bits (measured: up to 7.5e-8), since the batch (and a text tower's padding)
    changes. Compute a task's class embeddings once, for its whole class list.

    Class names or template words the model's vocabulary lacks raise
    :class:`~vlalign.models.vocabulary.UnknownWordsError` (a warning with ``allow_unknown_words``); its message
    names ``allow_option``, the caller's option that allows them, if it has one.
    """
    for template in templates:
        problem = template_problem(template)
        if problem is not None:
            raise ValueError(f"prompt template {problem}")
    if len(classnames) == 0:
        raise ValueError("class list is empty")
    if len(set(classnames)) != len(classnames):
        raise ValueError(f"class list has duplicates: {sorted({c for c in classnames if list(classnames).count(c) > 1})}")
    prompts = [t.format(c) for c in classnames for t in templates]
    check_known_words(model, prompts, "class prompts", allow=allow_unknown_words, allow_option=allow_option)
    emb = model.encode_text(prompts).view(len(classnames), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


@torch.no_grad()
def image_embeddings(model: ContrastiveModel, images: Any, batch_size: int = 256,
                     dtype: torch.dtype = torch.float32, normalize: bool = True) -> torch.Tensor:
    """Image embeddings on the CPU, computed in consecutive batches of ``batch_size``.

    ``images`` is a uint8 ``[N, 3, H, W]`` tensor, float pixels in [0, 1], or anything with such a tensor as its
    ``images`` attribute (an ``ImageSet``, a ``PreferenceSet``).
    """
    pixels = getattr(images, "images", images)
    device = model.device
    out = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start: start + batch_size]
        batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch
        out.append(model.encode_image(batch.to(device), normalize=normalize).to(dtype).cpu())
    if not out:
        return torch.empty(0, model.embed_dim, dtype=dtype)
    return torch.cat(out)
