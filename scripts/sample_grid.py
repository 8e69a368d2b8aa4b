"""Write a grid of samples from a model: one row per class (guidance 2, seed = class), last row
unconditional. Used for the README figure: python scripts/sample_grid.py assets/default docs/default_samples.png"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mage import MAGEPipeline  # noqa: E402
from mage.image import to_pil  # noqa: E402


def main(model="default", out="docs/default_samples.png", n=10, scale=3):
    pipe = MAGEPipeline.from_pretrained(model, device="cpu")
    rows = [pipe.generate(n=n, steps=12, seed=c, class_label=c, guidance_scale=2.0).images
            for c in range(pipe.config.num_classes)]
    rows.append(pipe.generate(n=n, steps=12, seed=99).images)
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
    img = to_pil(grid[None])[0]
    img.resize((img.width * scale, img.height * scale), 0).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
