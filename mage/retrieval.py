"""Nearest-neighbour search over MAGE embeddings (cosine similarity) and a 2-D PCA map.

    index = EmbeddingIndex(gallery_embeddings, labels=labels)   # exact (torch) for small galleries
    scores, idx = index.search(pipe.embed(images), k=8)          # [Q,k] cosine similarities / rows

Galleries above ``FAISS_THRESHOLD`` vectors (or ``backend="faiss"``) use an approximate FAISS HNSW
index behind the same API. ``faiss-cpu`` is optional: "auto" falls back to exact torch search when it
is not installed. Files are ``.npz`` or ``.safetensors``; nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

FAISS_THRESHOLD = 200_000  # "auto" switches to the approximate index above this many vectors
BACKENDS = ("auto", "torch", "faiss")


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("backend='faiss' needs the optional package faiss-cpu "
                          "(pip install faiss-cpu); use backend='torch' or 'auto' for exact search") from None
    return faiss


def _faiss_available() -> bool:
    try:
        _import_faiss()
        return True
    except ImportError:
        return False


def _as_matrix(x, what: str) -> torch.Tensor:
    """np array / tensor [N,D] or [D] -> float32 CPU tensor [N,D], finite."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            raise ValueError(f"{what} must be numeric, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not torch.is_tensor(x):
        raise ValueError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
    x = x.detach().float().cpu()
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise ValueError(f"{what} must be [N, D] or [D], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit rows; rows already of unit length are left bit-identical (so save/load round-trips)."""
    n = x.norm(dim=1, keepdim=True)
    return torch.where((n - 1).abs() <= 1e-6, x, x / n.clamp_min(1e-12))


class EmbeddingIndex:
    """Cosine-similarity top-k search over L2-normalised embeddings.

    Args:
        embeddings: [N, D] array/tensor (rows are normalised here; N may be 0).
        labels: optional integer label per row; names: optional string per row.
        backend: "torch" (exact matmul + topk), "faiss" (approximate HNSW, needs faiss-cpu) or "auto"
            (faiss above ``threshold`` vectors when installed, else torch).
    """

    def __init__(self, embeddings, labels=None, names=None, backend: str = "auto",
                 threshold: int = FAISS_THRESHOLD, hnsw_m: int = 32, ef_search: int = 128):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if backend == "faiss":
            _import_faiss()
        self.requested, self.threshold = backend, int(threshold)
        self.hnsw_m, self.ef_search = int(hnsw_m), int(ef_search)
        self.vectors = _normalize(_as_matrix(embeddings, "embeddings"))
        n = len(self.vectors)
        self.labels = None if labels is None else self._check_labels(labels, n)
        self.names = None if names is None else self._check_names(names, n)
        self._faiss = None
        self._sync_backend(self.vectors)

    # ------------------------------------------------------------------ bookkeeping
    @staticmethod
    def _check_labels(labels, n: int) -> np.ndarray:
        arr = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
        if arr.ndim != 1 or len(arr) != n or (arr.size and arr.dtype.kind not in "iub"):
            raise ValueError(f"labels must be {n} integers, got shape {arr.shape} dtype {arr.dtype}")
        return arr.astype(np.int64)

    @staticmethod
    def _check_names(names, n: int) -> list[str]:
        names = [str(s) for s in names]
        if len(names) != n:
            raise ValueError(f"got {len(names)} names for {n} embeddings")
        return names

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def backend(self) -> str:
        """The backend in use now: "torch" or "faiss"."""
        return "faiss" if self._faiss is not None else "torch"

    def _want_faiss(self) -> bool:
        if self.requested == "faiss":
            return True
        return self.requested == "auto" and len(self) > self.threshold and _faiss_available()

    def _sync_backend(self, new_rows: torch.Tensor) -> None:
        """Create / extend the FAISS index when it is (now) wanted."""
        if not self._want_faiss():
            return
        faiss = _import_faiss()
        if self._faiss is None:
            self._faiss = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            new_rows = self.vectors  # (re)build from everything
        if len(new_rows):
            self._faiss.add(np.ascontiguousarray(new_rows.numpy(), dtype=np.float32))

    def add(self, embeddings, labels=None, names=None) -> "EmbeddingIndex":
        """Append rows (labels/names must be given iff the index already has them, unless it is empty)."""
        new = _normalize(_as_matrix(embeddings, "embeddings"))
        if len(self) and new.shape[1] != self.dim:
            raise ValueError(f"embeddings have dimension {new.shape[1]}, the index has {self.dim}")
        m, empty = len(new), len(self) == 0
        updates = {}
        for attr, value, check in (("labels", labels, self._check_labels), ("names", names, self._check_names)):
            old = getattr(self, attr)
            if value is None and old is not None:
                raise ValueError(f"this index stores {attr}: pass {attr} for the new rows too")
            if value is not None and old is None and not empty:
                raise ValueError(f"this index has no {attr}; cannot add {attr} for only some rows")
            if value is not None:
                value = check(value, m)
                updates[attr] = value if old is None else (
                    np.concatenate([old, value]) if attr == "labels" else old + value)
        for attr, value in updates.items():
            setattr(self, attr, value)
        self.vectors = new if empty else torch.cat([self.vectors, new])
        self._sync_backend(new)
        return self

    # ------------------------------------------------------------------ search
    def search(self, query, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """query [Q,D] or [D] -> (cosine scores [Q,k'] float, row indices [Q,k'] long), best first,
        with k' = min(k, len(index))."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(self) == 0:
            raise ValueError("the index is empty: add embeddings before searching")
        q = _normalize(_as_matrix(query, "query embeddings"))
        if q.shape[1] != self.dim:
            raise ValueError(f"query has dimension {q.shape[1]}, the index has {self.dim} "
                             "(embeddings from a different model?)")
        k = min(int(k), len(self))
        if self._faiss is not None:
            self._faiss.hnsw.efSearch = max(self.ef_search, k)
            d, i = self._faiss.search(np.ascontiguousarray(q.numpy()), k)
            return torch.from_numpy(d).float(), torch.from_numpy(i).long()
        scores, idx = [], []
        step = max(1, (1 << 24) // len(self))  # bound the [q, N] score matrix to ~64 MB
        for s in range(0, len(q), step):
            v, i = torch.topk(q[s: s + step] @ self.vectors.T, k, dim=1)
            scores.append(v)
            idx.append(i)
        return torch.cat(scores), torch.cat(idx)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """``.npz`` or ``.safetensors`` with the normalised embeddings, labels and names."""
        path = Path(path)
        if path.suffix == ".npz":
            arrays = {"embeddings": self.vectors.numpy()}
            if self.labels is not None:
                arrays["labels"] = self.labels
            if self.names is not None:
                arrays["names"] = np.array(self.names, dtype=np.str_)
            with open(path, "wb") as f:  # a file object stops numpy from appending ".npz"
                np.savez(f, **arrays)
        elif path.suffix == ".safetensors":
            from safetensors.torch import save_file
            tensors = {"embeddings": self.vectors.contiguous()}
            if self.labels is not None:
                tensors["labels"] = torch.from_numpy(self.labels)
            meta = {"names": json.dumps(self.names)} if self.names is not None else None
            save_file(tensors, str(path), metadata=meta)
        else:
            raise ValueError(f"index files must end in .npz or .safetensors, got {path.name!r}")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", **kw) -> "EmbeddingIndex":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"index file not found: {path}")
        if path.suffix not in (".npz", ".safetensors"):
            raise ValueError(f"index files must end in .npz or .safetensors, got {path.name!r}")
        names = labels = None
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    emb = z["embeddings"]
                    labels = z["labels"] if "labels" in z.files else None
                    names = z["names"].tolist() if "names" in z.files else None
            else:
                from safetensors import safe_open
                with safe_open(str(path), "pt") as f:
                    emb = f.get_tensor("embeddings")
                    labels = f.get_tensor("labels") if "labels" in f.keys() else None
                    names = json.loads((f.metadata() or {}).get("names", "null"))
        except Exception as e:  # numpy / zipfile / safetensors each raise their own types
            raise ValueError(f"cannot read embedding index {path}: {type(e).__name__}: {e}") from None
        return cls(emb, labels=labels, names=names, backend=backend, **kw)


def pca_2d(embeddings, query=None, normalize: bool = True):
    """Project embeddings [N,D] (and optionally ``query`` [Q,D]) onto the gallery's first two principal
    components. Returns (points [N,2], query_points [Q,2] or None), float32.

    Rows are L2-normalised first (the geometry cosine search sees) unless ``normalize=False``. The
    result is deterministic: each axis is oriented so its largest loading is positive.
    """
    x = _as_matrix(embeddings, "embeddings").double()
    if normalize:
        x = _normalize(x)
    mean = x.mean(0, keepdim=True)
    cov = (x - mean).T @ (x - mean)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    comps = vecs[:, -2:].flip(1) if x.shape[1] >= 2 else torch.cat([vecs, torch.zeros_like(vecs)], 1)
    sign = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)

    def project(a):
        return ((a - mean) @ comps).float()

    q = None
    if query is not None:
        q = _as_matrix(query, "query embeddings").double()
        if q.shape[1] != x.shape[1]:
            raise ValueError(f"query has dimension {q.shape[1]}, embeddings have {x.shape[1]}")
        q = project(_normalize(q) if normalize else q)
    return project(x), q
