"""Write a few Fashion-MNIST test images (one per class, 32x32 PNG) to assets/examples/ for the app.

    python -m app.make_examples [--out assets/examples] [--count 8]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from train.data import FASHION_CLASSES, load_fashion_mnist

OUT = Path(__file__).resolve().parent.parent / "assets" / "examples"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--count", type=int, default=8, help="number of images (one per class, classes in order)")
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args(argv)
    x, y = load_fashion_mnist("test", args.size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for c in range(min(args.count, len(FASHION_CLASSES))):
        i = int((y == c).nonzero()[0][0])  # first test image of class c
        name = FASHION_CLASSES[c].lower().replace("/", "-").replace(" ", "-")
        path = out / f"{c:02d}_{name}.png"
        Image.fromarray(x[i]).save(path, optimize=True)
        print(f"{path}  (test image {i}, {FASHION_CLASSES[c]})")


if __name__ == "__main__":
    main()
