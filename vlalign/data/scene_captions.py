"""Scenes of the retrieval world, the captions that describe them, and when a caption describes a scene.

A caption is generated together with its *claim*: the exact facts it states (objects with some of their
attributes, relations between them, the number of objects, the written word). Whether a caption describes an
image is then decided from the scene's attributes, not by a model: :func:`describes` searches for an assignment
of the claimed objects to distinct objects of the scene that satisfies every stated fact. A caption is
ambiguous in a gallery when it describes more than one of its images (:func:`ambiguous_caption_share`).

Relations use the dominant axis of the displacement between object centres (image y grows downwards):
``a`` is *left of* ``b`` when ``|dx| >= |dy|`` and ``a.cx < b.cx``, *above* ``b`` when ``|dy| > |dx|`` and
``a.cy < b.cy``; so exactly one of left of / right of / above / below holds for every ordered pair.
Regions are the cells of a 3 x 3 grid over the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import permutations

import numpy as np

RELATIONS: dict[str, str] = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
_INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "middle", "right")
_REGION_PHRASES = {
    ("top", "left"): "in the top left", ("top", "middle"): "at the top", ("top", "right"): "in the top right",
    ("middle", "left"): "on the left", ("middle", "middle"): "in the centre", ("middle", "right"): "on the right",
    ("bottom", "left"): "in the bottom left", ("bottom", "middle"): "at the bottom",
    ("bottom", "right"): "in the bottom right",
}
_COUNTS = {2: "two", 3: "three"}
_WORD_CLAUSES = (" with the word {w}", " and the text {w}", ", a sign says {w}")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its shape, colour and size names, centre and radius in pixels, rotation in radians."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    angle: float


@dataclass(frozen=True)
class Scene:
    """Everything an image of the retrieval world shows: its objects, the written word (or None), its side."""

    objects: tuple[SceneObject, ...]
    word: str | None
    image_size: int


@dataclass(frozen=True)
class ObjectClaim:
    """What a caption says of one object: its shape always; colour, size and region when stated."""

    shape: str
    colour: str | None = None
    size: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class Claim:
    """The facts a caption states: objects, relations ``(i, name, j)`` = "object i is <name> object j"
    (names are :data:`RELATIONS` keys), the exact object count and the written word, when stated."""

    objects: tuple[ObjectClaim, ...]
    relations: tuple[tuple[int, str, int], ...] = ()
    count: int | None = None
    word: str | None = None


def relation(a: SceneObject, b: SceneObject) -> str:
    """The relation of ``a`` to ``b`` along the dominant axis of their displacement: left, right, above, below."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def region(obj: SceneObject, image_size: int) -> str:
    """The 3 x 3 grid cell of the object's centre, as its caption phrase (e.g. "in the top left")."""
    row = _ROWS[min(2, int(3 * obj.cy / image_size))]
    col = _COLS[min(2, int(3 * obj.cx / image_size))]
    return _REGION_PHRASES[(row, col)]


def _object_matches(claim: ObjectClaim, obj: SceneObject, image_size: int) -> bool:
    return (claim.shape == obj.shape and claim.colour in (None, obj.colour) and claim.size in (None, obj.size)
            and (claim.region is None or claim.region == region(obj, image_size)))


def describes(claim: Claim, scene: Scene) -> bool:
    """Whether every fact of ``claim`` holds in ``scene`` for some assignment of claimed objects to distinct
    scene objects (unstated attributes, relations, count and word are unconstrained)."""
    if claim.count is not None and claim.count != len(scene.objects):
        return False
    if claim.word is not None and claim.word != scene.word:
        return False
    if len(claim.objects) > len(scene.objects):
        return False
    options = [[j for j, obj in enumerate(scene.objects) if _object_matches(c, obj, scene.image_size)]
               for c in claim.objects]
    if any(not o for o in options):
        return False
    for chosen in permutations(range(len(scene.objects)), len(claim.objects)):
        if all(j in o for j, o in zip(chosen, options)) and all(
                relation(scene.objects[chosen[i]], scene.objects[chosen[k]]) == name for i, name, k in claim.relations):
            return True
    return False


def ambiguous_caption_share(claims: Sequence[Sequence[Claim]], scenes: Sequence[Scene]) -> dict[str, float]:
    """Exact share of captions that describe more than one image of the gallery ``scenes``.

    ``claims[i]`` are the claims of image i's captions. Returns the share, the number of ambiguous captions,
    the number of captions, the largest number of images one caption describes, and how many captions fail
    to describe their own image (0 for a consistent generator).
    """
    if len(claims) != len(scenes):
        raise ValueError(f"got claims for {len(claims)} images but {len(scenes)} scenes")
    by_shape: dict[str, set[int]] = {}
    for j, scene in enumerate(scenes):
        for obj in scene.objects:
            by_shape.setdefault(obj.shape, set()).add(j)
    ambiguous = total = largest = own_missing = 0
    for i, image_claims in enumerate(claims):
        for claim in image_claims:
            # Every claimed shape must be present: a cheap exact pre-filter before the full check.
            candidates = set.intersection(*(by_shape.get(c.shape, set()) for c in claim.objects))
            matches = [j for j in candidates if describes(claim, scenes[j])]
            total += 1
            own_missing += i not in matches
            ambiguous += len(matches) > 1
            largest = max(largest, len(matches))
    if total == 0:
        raise ValueError("no captions to measure")
    return {"share": ambiguous / total, "ambiguous": ambiguous, "captions": total, "max_images_per_caption": largest,
            "own_image_missing": own_missing}


# ----------------------------------------------------------------------------------------------- templates

def _a(word: str) -> str:
    """The indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def _np(obj: SceneObject, colour: bool = True, size: bool = True) -> str:
    words = ([obj.size] if size else []) + ([obj.colour] if colour else []) + [obj.shape]
    return " ".join([_a(words[0]), *words])


def _oc(obj: SceneObject, colour: bool = True, size: bool = True, where: str | None = None) -> ObjectClaim:
    return ObjectClaim(obj.shape, obj.colour if colour else None, obj.size if size else None, where)


def _relation_chain(objs: Sequence[SceneObject], colour: bool, size: bool) -> tuple[str, list[ObjectClaim], list]:
    """"A rel B" for two objects; "A rel B, and C rel the B" for three."""
    text = f"{_np(objs[0], colour, size)} {RELATIONS[relation(objs[0], objs[1])]} {_np(objs[1], colour, size)}"
    relations = [(0, relation(objs[0], objs[1]), 1)]
    if len(objs) == 3:
        text += f", and {_np(objs[2], colour, size)} {RELATIONS[relation(objs[2], objs[1])]} the {objs[1].shape}"
        relations.append((2, relation(objs[2], objs[1]), 1))
    return text, [_oc(o, colour, size) for o in objs], relations


def _listing(parts: Sequence[str]) -> str:
    return ", ".join(parts[:-1]) + f" and {parts[-1]}"


def _t_relations(scene: Scene, objs: Sequence[SceneObject], rng: np.random.Generator) -> tuple[str, Claim]:
    text, claimed, relations = _relation_chain(objs, True, True)
    return text, Claim(tuple(claimed), tuple(relations))


def _t_there_is(scene: Scene, objs: Sequence[SceneObject], rng: np.random.Generator) -> tuple[str, Claim]:
    text, claimed, relations = _relation_chain(objs, True, True)
    return f"there is {text}", Claim(tuple(claimed), tuple(relations))


def _t_colours(scene: Scene, objs: Sequence[SceneObject], rng: np.random.Generator) -> tuple[str, Claim]:
    text, claimed, relations = _relation_chain(objs, True, False)
    return text, Claim(tuple(claimed), tuple(relations))


def _t_count(scene: Scene, objs: Sequence[SceneObject], rng: np.random.Generator) -> tuple[str, Claim]:
    rel = relation(objs[0], objs[1])
    text = (f"{_COUNTS[len(objs)]} shapes: {_listing([_np(o, size=False) for o in objs])}, "
            f"the {objs[0].shape} is {RELATIONS[rel]} the {objs[1].shape}")
    return text, Claim(tuple(_oc(o, size=False) for o in objs), ((0, rel, 1),), count=len(objs))


def _t_regions(scene: Scene, objs: Sequence[SceneObject], rng: np.random.Generator) -> tuple[str, Claim]:
    places = [region(o, scene.image_size) for o in objs]
    text = _listing([f"{_np(o)} {p}" for o, p in zip(objs, places)])
    return text, Claim(tuple(_oc(o, where=p) for o, p in zip(objs, places)))


def _t_inventory(scene: Scene, objs: Sequence[SceneObject], rng: np.random.Generator) -> tuple[str, Claim]:
    text = f"{_COUNTS[len(objs)]} shapes, {_listing([_np(o) for o in objs])}"
    return text, Claim(tuple(_oc(o) for o in objs), count=len(objs))


Template = Callable[[Scene, Sequence[SceneObject], np.random.Generator], tuple[str, Claim]]
TEMPLATES: dict[str, Template] = {
    "relations": _t_relations, "there_is": _t_there_is, "colours": _t_colours, "count": _t_count,
    "regions": _t_regions, "inventory": _t_inventory,
}


def scene_captions(scene: Scene, rng: np.random.Generator, n: int) -> tuple[list[str], list[Claim]]:
    """``n`` captions of ``scene`` from ``n`` different templates (random choice and object order), with the
    word clause appended to each when the scene shows a word."""
    if not 1 <= n <= len(TEMPLATES):
        raise ValueError(f"captions per image must be in [1, {len(TEMPLATES)}] (the number of templates), got {n}")
    names = list(TEMPLATES)
    texts, claims = [], []
    for t in rng.permutation(len(names))[:n]:
        order = rng.permutation(len(scene.objects))
        text, claim = TEMPLATES[names[int(t)]](scene, [scene.objects[int(k)] for k in order], rng)
        if scene.word is not None:
            text += _WORD_CLAUSES[int(rng.integers(len(_WORD_CLAUSES)))].format(w=scene.word)
            claim = Claim(claim.objects, claim.relations, claim.count, scene.word)
        texts.append(text)
        claims.append(claim)
    return texts, claims


def caption_words() -> set[str]:
    """Every fixed word the templates and clauses can produce (attribute values not included)."""
    from vlalign.models.tokenizer import split_words

    fixed = [*RELATIONS.values(), *_REGION_PHRASES.values(), *_COUNTS.values(), *_WORD_CLAUSES,
             "there is shapes the is and small large", "a an"]
    return {w for text in fixed for w in split_words(text.replace("{w}", ""))}


def longest_caption_words(image_size: int = 64) -> int:
    """The most words any caption can have: every template on a three-object scene whose relations and regions
    have the longest phrases ("to the left of", "in the top left"), with the longest word clause."""
    from vlalign.models.tokenizer import split_words

    s = image_size
    objects = tuple(SceneObject(shape, "red", "small", x * s, y * s, 1.0, 0.0)
                    for shape, x, y in (("star", 0.05, 0.05), ("heart", 0.95, 0.1), ("ring", 0.05, 0.95)))
    scene = Scene(objects, None, image_size)
    longest_clause = max(len(split_words(c.format(w="x"))) for c in _WORD_CLAUSES)
    longest = max(len(split_words(t(scene, objects, np.random.default_rng(0))[0])) for t in TEMPLATES.values())
    return longest + longest_clause
