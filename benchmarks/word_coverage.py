"""How much of the object does a typographic word cover? ``python -m benchmarks.word_coverage [--n 1200] [--seed 7200]``

A measurement of the mini world's typographic test split (README, "Does the shipped MiniCLIP read the way CLIP
reads?"): the object's mask is what the shape painter changed while rendering the clean image, the word's mask what
differs between the typographic image and the clean image of the same scene (ink and backing box); it prints the
quantiles of the object's visible fraction and the share of objects mostly covered.
"""

from __future__ import annotations

import argparse

import numpy as np

import vlalign.data.mini_world as mini_world


def visible_fractions(n: int, seed: int) -> np.ndarray:
    """Per typographic test image ``0 .. n-1`` of ``seed``: the fraction of the object's pixels the word leaves
    visible."""
    masks: list[np.ndarray] = []
    painter = mini_world.paint_shape

    def recording_painter(img, *args, **kwargs):
        out = painter(img, *args, **kwargs)
        masks.append(np.any(np.abs(out.astype(np.float32) - np.asarray(img, np.float32)) > 1, -1))
        return out

    world = mini_world.MiniWorld()
    mini_world.paint_shape = recording_painter
    try:
        clean = world.sample("clean", n, seed)
    finally:
        mini_world.paint_shape = painter
    typographic = world.sample("typographic", n, seed)  # the same scenes with a word written
    word = (clean.images != typographic.images).any(1).numpy()
    return np.array([(obj & ~w).sum() / max(obj.sum(), 1) for obj, w in zip(masks, word)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1200, help="typographic test images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7200, help="their seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n: expected a number of images >= 1, got {args.n}")
    if args.seed < 0:
        parser.error(f"--seed: expected a seed >= 0, got {args.seed}")
    visible = visible_fractions(args.n, args.seed)
    quantiles = np.quantile(visible, [0.1, 0.25, 0.5, 0.75]).round(3)
    print("visible fraction of the object, quantiles 10/25/50/75%:", quantiles)
    for threshold in (0.1, 0.25, 0.5):
        print(f"share of objects with < {threshold:.0%} visible: {np.mean(visible < threshold):.3f}")


if __name__ == "__main__":
    main()
