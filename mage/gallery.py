"""The image gallery shipped with the default model (``assets/gallery``): held-out thumbnails, their
labels and cached MAGE embeddings, searchable with :class:`mage.retrieval.EmbeddingIndex`.

Files in a gallery directory:
  ``gallery.npz``             images uint8 [N,H,W] (grayscale) or [N,H,W,3], labels int64 [N]
  ``gallery.json``            class names, dataset, licence, how the images were chosen
  ``embeddings.safetensors``  float32 [N,D] + metadata: fingerprint of the model that computed them
  ``embeddings-<fp>.safetensors``  the same for other models, written on first use (a cache)

    gallery = load_gallery(pipe)            # recomputes the embeddings if the model changed
    scores, idx = gallery.search(pipe.embed(image), k=8)
    gallery.images[idx[0]], [gallery.class_names[c] for c in gallery.labels[idx[0]]]
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .retrieval import EmbeddingIndex

DEFAULT_GALLERY_DIR = Path(__file__).resolve().parent.parent / "assets" / "gallery"
IMAGES_FILE, INFO_FILE, EMB_FILE = "gallery.npz", "gallery.json", "embeddings.safetensors"
FORMAT_NAME = "mage-studio-gallery"
# what the cached vectors are; changing how they are computed must change this string
EMBEDDING_KIND = "MAGE.embed: mean-pooled encoder output, images bilinearly resized to the model size"


def model_fingerprint(pipe_or_modules) -> str:
    """sha256 over the MAGE and VQGAN state dicts (names, dtypes, shapes, bytes): identifies the weights
    independently of the file they came from."""
    mods = pipe_or_modules
    if hasattr(mods, "model") and hasattr(mods, "vqgan"):
        mods = (mods.model, mods.vqgan)
    h = hashlib.sha256()
    for prefix, module in zip(("", "vqgan."), mods):
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{prefix}{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Gallery:
    images: np.ndarray  # uint8 [N,H,W,3]
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    embeddings: torch.Tensor  # float32 [N,D] (not normalised)
    index: EmbeddingIndex
    fingerprint: str  # of the model the embeddings belong to
    directory: Path
    recomputed: bool = False  # embeddings were recomputed because the cache did not fit the model
    cache_updated: bool = False  # ... and written back to the directory
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def label_name(self, i: int) -> str:
        c = int(self.labels[i])
        return self.class_names[c] if 0 <= c < len(self.class_names) else str(c)

    def search(self, query, k: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine top-k over the gallery: query embeddings [Q,D] or [D] -> (scores, indices) [Q,k]."""
        return self.index.search(query, k)


# ------------------------------------------------------------------------------------------ files
def save_gallery(directory, images: np.ndarray, labels, class_names: list[str], info: dict | None = None) -> Path:
    """Write the thumbnails, labels and description (not the embeddings: see :func:`write_embeddings`)."""
    d = Path(directory)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"gallery images must be uint8 [N,H,W] or [N,H,W,3], got {images.dtype} {images.shape}")
    if images.ndim == 4 and (images == images[..., :1]).all():
        images = images[..., 0]  # grayscale stored once
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(images),):
        raise ValueError(f"need one label per image: {labels.shape} labels for {len(images)} images")
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (IMAGES_FILE + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, images=images, labels=labels)
    os.replace(tmp, d / IMAGES_FILE)
    meta = {"format": FORMAT_NAME, "format_version": 1, "count": int(len(images)),
            "image_size": list(images.shape[1:3]), "class_names": list(class_names), **(info or {})}
    (d / INFO_FILE).write_text(json.dumps(meta, indent=2))
    return d


def cache_name(fingerprint: str) -> str:
    """File for embeddings of a model other than the one the gallery was built with."""
    return f"embeddings-{fingerprint[:16]}.safetensors"


def write_embeddings(directory, embeddings: torch.Tensor, fingerprint: str, name: str = EMB_FILE) -> Path:
    from safetensors.torch import save_file
    d = Path(directory)
    tmp = d / (name + ".tmp")
    save_file({"embeddings": embeddings.detach().float().cpu().contiguous()}, str(tmp),
              metadata={"fingerprint": fingerprint, "embedding": EMBEDDING_KIND})
    os.replace(tmp, d / name)
    return d / name


def read_embeddings(directory, name: str = EMB_FILE) -> tuple[torch.Tensor | None, dict]:
    """(embeddings, metadata), or (None, {}) when the file is missing or unreadable."""
    path = Path(directory) / name
    if not path.is_file():
        return None, {}
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("embeddings").float(), dict(f.metadata() or {})
    except Exception:  # a broken cache is simply recomputed
        return None, {}


def read_gallery(directory) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images uint8 [N,H,W,3], labels int64 [N], info dict) with clear errors."""
    d = Path(directory)
    if not (d / IMAGES_FILE).is_file() or not (d / INFO_FILE).is_file():
        raise FileNotFoundError(f"no gallery in {d} (needs {IMAGES_FILE} and {INFO_FILE}); build one with "
                                "`python -m train.build_gallery --model assets/default --out assets/gallery`")
    try:
        info = json.loads((d / INFO_FILE).read_text())
        with np.load(d / IMAGES_FILE, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"].astype(np.int64)
    except Exception as e:
        raise ValueError(f"cannot read the gallery in {d}: {type(e).__name__}: {e}") from None
    if info.get("format") != FORMAT_NAME:
        raise ValueError(f"{d / INFO_FILE} is not a {FORMAT_NAME} file (format={info.get('format')!r})")
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.dtype != np.uint8 or images.ndim != 4 or len(labels) != len(images):
        raise ValueError(f"malformed gallery in {d}: images {images.dtype} {images.shape}, {len(labels)} labels")
    return images, labels, info


# ------------------------------------------------------------------------------------ embeddings
def compute_embeddings(pipe, images: np.ndarray, batch_size: int = 256,
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """uint8 [N,H,W,3] -> pipe.embed features [N,D]; images are resized to the model resolution.
    Without ``progress`` a tqdm bar is shown."""
    n, s = len(images), pipe.config.img_size
    bar = None
    if progress is None:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc="gallery embeddings", unit="img", leave=False)
    out = []
    for i in range(0, n, batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i: i + batch_size])).permute(0, 3, 1, 2).float() / 255
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
        out.append(pipe.embed(x, batch_size=batch_size))
        done = min(i + batch_size, n)
        if bar is not None:
            bar.update(done - bar.n)
        else:
            progress(done, n)
    if bar is not None:
        bar.close()
    return torch.cat(out) if out else torch.zeros(0, pipe.config.embed_dim)


def load_gallery(pipe, gallery_dir=None, progress: Callable[[int, int], None] | None = None,
                 backend: str = "auto", batch_size: int = 256) -> Gallery:
    """Load a gallery for ``pipe``. Stored embeddings are used when they were computed with the same
    weights (fingerprint): the gallery's own ``embeddings.safetensors`` or a per-model cache file.
    Otherwise they are recomputed (``progress(done, total)`` is called, else a tqdm bar is shown) and,
    if the directory is writable, cached as ``embeddings-<fingerprint>.safetensors`` (the shipped
    file is never overwritten, so switching models does not thrash it)."""
    d = Path(gallery_dir) if gallery_dir is not None else DEFAULT_GALLERY_DIR
    images, labels, info = read_gallery(d)
    fp = model_fingerprint(pipe)

    def fits(emb, meta):
        return (emb is not None and meta.get("fingerprint") == fp and meta.get("embedding") == EMBEDDING_KIND
                and tuple(emb.shape) == (len(images), pipe.config.embed_dim))

    emb = None
    for name in (EMB_FILE, cache_name(fp)):
        emb, meta = read_embeddings(d, name)
        if fits(emb, meta):
            break
        emb = None
    recomputed = updated = False
    if emb is None:
        emb, recomputed = compute_embeddings(pipe, images, batch_size, progress), True
        try:
            write_embeddings(d, emb, fp, cache_name(fp))
            updated = True
        except OSError as e:
            warnings.warn(f"gallery embeddings recomputed but not cached ({d} is not writable: {e})")
    index = EmbeddingIndex(emb, labels=labels, backend=backend)
    return Gallery(images=images, labels=labels, class_names=list(info.get("class_names", [])), embeddings=emb,
                   index=index, fingerprint=fp, directory=d, recomputed=recomputed, cache_updated=updated,
                   info=info)
