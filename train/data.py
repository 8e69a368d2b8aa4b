"""Datasets: the built-in Fashion-MNIST (Debian package ``dataset-fashion-mnist``, MIT licence) and
any ImageFolder-style directory (``root/<class>/<image>``). Images come out as float [3,S,S] in [0,1]
(no mean/std normalisation, as the MAGE tokenizer expects). No torchvision dependency."""
from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FASHION_DIRS = [os.environ.get("FASHION_MNIST_DIR", ""), "/usr/share/datasets/fashion-mnist"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def _fashion_dir() -> Path:
    for d in FASHION_DIRS:
        if d and (Path(d) / "train-images-idx3-ubyte.gz").is_file():
            return Path(d)
    raise FileNotFoundError("Fashion-MNIST not found. Install it with `apt-get install dataset-fashion-mnist` "
                            "(Debian) or set FASHION_MNIST_DIR to a folder with the four *-ubyte.gz files.")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train", size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N,size,size] zero-padded from 28x28 (or resized if size<28), int64 labels [N])."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    d = _fashion_dir()
    prefix = "train" if split == "train" else "t10k"
    x = _read_idx(d / f"{prefix}-images-idx3-ubyte.gz")
    y = _read_idx(d / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if size >= 28:
        p0 = (size - 28) // 2
        out = np.zeros((x.shape[0], size, size), np.uint8)
        out[:, p0: p0 + 28, p0: p0 + 28] = x
    else:
        t = torch.from_numpy(x).float()[:, None]
        out = F.interpolate(t, size=(size, size), mode="area").round().clamp(0, 255).byte()[:, 0].numpy()
    return out, y


def augment(x: torch.Tensor, scale=(0.6, 1.0), flip: bool = True, generator=None) -> torch.Tensor:
    """Random-resized-crop (area ``scale``, aspect 3/4..4/3) + horizontal flip on one [C,S,S] image."""
    C, H, W = x.shape
    area = H * W * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=generator).item())
    logr = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(1, generator=generator).item()
    w = int(round(min(W, math.sqrt(area * math.exp(logr)))))
    h = int(round(min(H, math.sqrt(area / math.exp(logr)))))
    i = int(torch.randint(0, H - h + 1, (1,), generator=generator))
    j = int(torch.randint(0, W - w + 1, (1,), generator=generator))
    crop = x[:, i: i + h, j: j + w][None]
    out = F.interpolate(crop, size=(H, W), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
    if flip and torch.rand(1, generator=generator).item() < 0.5:
        out = out.flip(-1)
    return out


def crop_scale(img_size: int) -> tuple[float, float]:
    """Random-resized-crop area range: gentle for tiny images, the usual (0.2, 1) from 65 px up."""
    return (0.6, 1.0) if img_size <= 64 else (0.2, 1.0)


def augment_batch(x: torch.Tensor, seeds, scale) -> torch.Tensor:
    """:func:`augment` of each image of [B,C,S,S], image i drawing from a generator seeded with seeds[i]."""
    return torch.stack([augment(img, scale, True, torch.Generator().manual_seed(int(s))) for img, s in zip(x, seeds)])


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 images [N,H,W] or [N,H,W,3] + labels -> (float [3,H,W], label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = False, classes=None):
        self.images, self.labels, self.augment = images, labels, augment
        self.classes = list(classes or [])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        a = torch.from_numpy(np.ascontiguousarray(self.images[i])).float() / 255.0
        x = a[None].expand(3, -1, -1).clone() if a.dim() == 2 else a.permute(2, 0, 1).contiguous()
        if self.augment:
            x = augment(x)
        return x, int(self.labels[i])


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/*.png`` (ImageNet layout); images resized (shorter side) + centre-cropped to ``size``."""

    def __init__(self, root: str | os.PathLike, size: int, augment: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.samples = [(p, ci) for ci, c in enumerate(self.classes) for p in sorted((root / c).rglob("*"))
                        if p.suffix.lower() in IMG_EXT]
        if not self.samples:
            raise ValueError(f"no images under {root} (expected root/<class>/<image>)")
        self.size, self.augment = size, augment

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from mage.image import fit_image
        p, c = self.samples[i]
        img, _ = fit_image(Image.open(p), self.size, "center-crop")
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
        if self.augment:
            x = augment(x, scale=(0.2, 1.0))
        return x, c


def split_root(root: str | os.PathLike, split: str) -> Path:
    """The folder of ``split`` in an ImageNet-style tree: ``root/<split>`` (for "test" also ``root/val``);
    given ``.../train`` itself, its sibling. "train" falls back to ``root``; a held-out split never does
    (evaluating on training images by accident would be worse than an error)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    names = [split] + (["val", "validation"] if split == "test" else [])
    for base in (root, root.parent if root.name == "train" else None):
        for n in names:
            if base is not None and (base / n).is_dir():
                return base / n
    if split == "train":
        return root
    raise ValueError(f"no '{split}' split for {root}: expected {root}/{names[0]}/<class>/<image>"
                     + (" (or val/)" if split == "test" else ""))


def build_dataset(name: str, split: str = "train", size: int = 32, augment: bool = False, limit: int | None = None):
    """``fashion-mnist`` (built-in) or a path to an ImageFolder directory (``split`` subfolder if present)."""
    if name in ("fashion-mnist", "fashion_mnist"):
        x, y = load_fashion_mnist(split, size)
        if limit:
            x, y = x[:limit], y[:limit]
        return ArrayDataset(x, y, augment, FASHION_CLASSES)
    ds = ImageFolder(split_root(name, split), size, augment)
    if limit and limit < len(ds.samples):  # a fixed spread over all classes, not the first classes only
        keep = torch.randperm(len(ds.samples), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        ds.samples = [ds.samples[i] for i in keep.tolist()]
    return ds
