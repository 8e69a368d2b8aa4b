"""Sample-quality and representation metrics on feature vectors (numpy or torch, [N, D]); computed with torch
(float64 where it matters), so torch.set_num_threads applies.

- ``frechet_distance``: FD between Gaussians fitted to two feature sets (the "FID" formula; with our own
  feature extractors the numbers are NOT comparable with published ImageNet FIDs).
- ``kid``: Kernel Inception Distance formula (unbiased MMD^2, cubic polynomial kernel), mean and std over
  random subsets.
- ``precision_recall``: k-NN manifold precision/recall (Kynkaanniemi et al., 2019), k=3.
- ``knn_accuracy``: k-NN classification (cosine similarity, k=10).
- ``psnr``: peak signal-to-noise ratio of images in [0, 1].
"""
from __future__ import annotations

import numpy as np
import torch


def _t64(x) -> torch.Tensor:
    """Features as a float64 CPU tensor [N, D] (torch, not numpy: torch honours torch.set_num_threads)."""
    x = x.detach().cpu().double() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, np.float64))
    if x.dim() != 2:
        raise ValueError(f"features must be a 2-D array [N, D], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    return x


def _t32(x) -> torch.Tensor:
    x = torch.as_tensor(x).float() if not isinstance(x, torch.Tensor) else x.detach().float().cpu()
    if x.dim() != 2:
        raise ValueError(f"features must be a 2-D array [N, D], got shape {tuple(x.shape)}")
    return x


def _as64(x) -> torch.Tensor:
    return x.detach().cpu().double() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, np.float64))


# ------------------------------------------------------------------------------------- Frechet
def feature_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], covariance [D,D]) in float64; needs at least 2 samples."""
    f = _t64(feats)
    if f.shape[0] < 2:
        raise ValueError("need at least 2 feature vectors to estimate a covariance")
    mu = f.mean(0)
    xc = f - mu
    return mu, xc.T @ xc / (f.shape[0] - 1)


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _sum_sqrt_eig(sym: torch.Tensor) -> float:
    return torch.linalg.eigvalsh((sym + sym.T) / 2).clamp_min(0).sqrt().sum().item()


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as the sum of sqrt-eigenvalues of the symmetric PSD matrix
    S1^(1/2) S2 S1^(1/2) (same eigenvalues as S1 S2), which is real by construction: no imaginary
    parts to discard, and no failure on singular covariances (fewer samples than dimensions)."""
    mu1, mu2 = _as64(mu1).reshape(-1), _as64(mu2).reshape(-1)
    s1, s2 = _as64(sigma1), _as64(sigma2)
    s1, s2 = s1.reshape(1, 1) if s1.dim() == 0 else s1, s2.reshape(1, 1) if s2.dim() == 0 else s2
    if mu1.shape != mu2.shape or s1.shape != s2.shape or tuple(s1.shape) != (mu1.numel(), mu1.numel()):
        raise ValueError(f"mismatched statistics: means {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                         f"covariances {tuple(s1.shape)}/{tuple(s2.shape)}")
    r1 = _sqrt_psd(s1)
    tr_covmean = _sum_sqrt_eig(r1 @ s2 @ r1)
    d = ((mu1 - mu2) ** 2).sum().item() + s1.trace().item() + s2.trace().item() - 2 * tr_covmean
    return max(d, 0.0)


def frechet_distance(feats1, feats2) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N1,D], [N2,D].

    When a set has fewer samples than dimensions, tr((S1 S2)^(1/2)) comes from the small N x N matrix
    Xc S_other Xc^T / (N-1) (Xc = centred features of that set), which has the same non-zero eigenvalues
    as S_other^(1/2) S S_other^(1/2): exact, and much faster for wide features (e.g. 1280-d)."""
    f1, f2 = _t64(feats1), _t64(feats2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sizes differ: {f1.shape[1]} vs {f2.shape[1]}")
    (mu1, s1), (mu2, s2) = feature_stats(f1), feature_stats(f2)
    if min(f1.shape[0], f2.shape[0]) >= f1.shape[1]:
        return frechet_distance_from_stats(mu1, s1, mu2, s2)
    small, other_cov = (f2 - mu2, s1) if f2.shape[0] <= f1.shape[0] else (f1 - mu1, s2)
    tr_covmean = _sum_sqrt_eig(small @ other_cov @ small.T / (small.shape[0] - 1))
    d = ((mu1 - mu2) ** 2).sum().item() + s1.trace().item() + s2.trace().item() - 2 * tr_covmean
    return max(d, 0.0)


# ------------------------------------------------------------------------------------- KID
def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / D + 1)^3 (diagonals of K_xx, K_yy excluded)."""
    x, y = _t64(x), _t64(y)
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return ((kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (n * (n - 1))
            - 2 * kxy.mean()).item()


def kid(feats1, feats2, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance formula: (mean, std) of unbiased MMD^2 over ``num_subsets`` random
    subsets of ``min(subset_size, N1, N2)`` samples drawn without replacement from each set."""
    f1, f2 = _t64(feats1), _t64(feats2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sizes differ: {f1.shape[1]} vs {f2.shape[1]}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    g = torch.Generator().manual_seed(seed)
    vals = torch.tensor([mmd2_unbiased(f1[torch.randperm(f1.shape[0], generator=g)[:m]],
                                       f2[torch.randperm(f2.shape[0], generator=g)[:m]]) for _ in range(num_subsets)])
    return vals.mean().item(), vals.std(unbiased=False).item()


# ------------------------------------------------------------------------------ precision / recall
def knn_radii(feats: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if feats.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples for the k-NN radius, got {feats.shape[0]}")
    out = []
    for i in range(0, feats.shape[0], chunk):
        d = torch.cdist(feats[i: i + chunk], feats)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st smallest is the point itself (0)
    return torch.cat(out)


def _coverage(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of ``query`` points inside at least one ball (ref_i, radii_i)."""
    inside = []
    for i in range(0, query.shape[0], chunk):
        d = torch.cdist(query[i: i + chunk], ref)
        inside.append((d <= radii[None]).any(1))
    return torch.cat(inside).float().mean().item()


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019): precision = fraction of fake samples inside
    the real manifold (union of k-NN balls around real samples), recall = fraction of real samples
    inside the fake manifold."""
    r, f = _t32(real).double(), _t32(fake).double()
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature sizes differ: {r.shape[1]} vs {f.shape[1]}")
    precision = _coverage(f, r, knn_radii(r, k))
    recall = _coverage(r, f, knn_radii(f, k))
    return precision, recall


# ------------------------------------------------------------------------------------- k-NN
def knn_predict(train_f, train_y, test_f, k: int = 10, vote: str = "weighted", temperature: float = 0.07,
                num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels of ``test_f`` from the ``k`` most cosine-similar training features.

    vote="majority": one vote per neighbour (ties go to the class whose neighbours are more similar);
    vote="weighted": each neighbour votes exp(similarity / temperature) (as in DINO's k-NN eval)."""
    if vote not in ("majority", "weighted"):
        raise ValueError("vote must be 'majority' or 'weighted'")
    tr = torch.nn.functional.normalize(_t32(train_f), dim=1)
    te = torch.nn.functional.normalize(_t32(test_f), dim=1)
    ytr = torch.as_tensor(train_y).long().view(-1)
    if ytr.numel() != tr.shape[0]:
        raise ValueError(f"{tr.shape[0]} training features but {ytr.numel()} labels")
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"feature sizes differ: {tr.shape[1]} vs {te.shape[1]}")
    k = min(k, tr.shape[0])
    C = int(num_classes or int(ytr.max()) + 1)
    preds = []
    for i in range(0, te.shape[0], chunk):
        sim, idx = (te[i: i + chunk] @ tr.T).topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], C)
        if vote == "weighted":
            votes.scatter_add_(1, ytr[idx], (sim / temperature).exp())
        else:
            votes.scatter_add_(1, ytr[idx], 1.0 + 1e-3 * sim)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train_f, train_y, test_f, test_y, k: int = 10, vote: str = "weighted", **kw) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``(test_f, test_y)``."""
    pred = knn_predict(train_f, train_y, test_f, k=k, vote=vote, **kw)
    y = torch.as_tensor(test_y).long().view(-1)
    if y.numel() != pred.numel():
        raise ValueError(f"{pred.numel()} test features but {y.numel()} labels")
    return (pred == y).float().mean().item()


# ------------------------------------------------------------------------------------- PSNR
def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, reduce: bool = True):
    """PSNR in dB between image batches [B,...] (values in [0, data_range]); per image mean over
    pixels, then averaged over the batch (``reduce=False`` returns the per-image values)."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    v = 10 * torch.log10(data_range ** 2 / mse)
    return v.mean().item() if reduce else v
