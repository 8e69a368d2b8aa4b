"""Metrics against direct computations on hand-made data."""
import numpy as np
import pytest
import scipy.linalg
import torch

from train import metrics as M


def gauss(n, mu, std, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, len(mu))) * np.asarray(std) + np.asarray(mu)


# ------------------------------------------------------------------------------------- Frechet
def test_fd_identical_sets_is_zero():
    x = gauss(500, [0, 1, 2, 3], [1, 2, 0.5, 1], 0)
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert M.frechet_distance(torch.from_numpy(x).float(), x) == pytest.approx(0.0, abs=1e-4)


def test_fd_closed_form_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([2.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()  # 5 + 4 + 1 = 10
    assert expected == pytest.approx(10.0)
    assert M.frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # estimated from samples: close to the population value
    x = gauss(40000, mu1, np.sqrt(v1), 1)
    y = gauss(40000, mu2, np.sqrt(v2), 2)
    assert M.frechet_distance(x, y) == pytest.approx(expected, rel=0.03)


def test_fd_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)  # do not commute
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert M.frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8)


def test_fd_translation_and_singular_covariance():
    x = gauss(1000, [0] * 5, [1] * 5, 4)
    shift = np.array([1.0, 2.0, 0.0, 0.0, -2.0])
    assert M.frechet_distance(x, x + shift) == pytest.approx(9.0, rel=1e-8)
    few = gauss(10, [0] * 32, [1] * 32, 5)  # 10 samples in 32-D: singular covariance
    d = M.frechet_distance(few, gauss(10, [0] * 32, [1] * 32, 6))
    assert np.isfinite(d) and d > 0
    with pytest.raises(ValueError, match="feature sizes"):
        M.frechet_distance(x, few)


def test_fd_few_samples_path_equals_covariance_path():
    rng = np.random.default_rng(14)
    mix = rng.normal(size=(40, 40))
    a = rng.normal(size=(300, 40)) @ mix  # N >= D
    b = rng.normal(size=(25, 40)) @ mix.T + 0.5  # N < D: computed through the 25 x 25 Gram matrix
    c = rng.normal(size=(30, 40))
    for x, y in [(a, b), (b, a), (b, c), (c, b)]:
        full = M.frechet_distance_from_stats(*M.feature_stats(x), *M.feature_stats(y))
        assert M.frechet_distance(x, y) == pytest.approx(full, rel=1e-7)


# ------------------------------------------------------------------------------------- KID
def test_mmd_matches_explicit_double_loop():
    x, y = gauss(7, [0, 0, 0], [1, 1, 1], 7), gauss(5, [1, 0, 0], [1, 1, 1], 8)
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert M.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_same_vs_different_distribution():
    a, b = gauss(600, [0] * 8, [1] * 8, 9), gauss(600, [0] * 8, [1] * 8, 10)
    c = gauss(600, [0.5] * 8, [1] * 8, 11)
    same_mean, same_std = M.kid(a, b, num_subsets=20, subset_size=300)
    diff_mean, diff_std = M.kid(a, c, num_subsets=20, subset_size=300)
    assert abs(same_mean) < 0.02 and same_std > 0
    assert diff_mean > 0.1 and diff_mean > 10 * abs(same_mean)


# ------------------------------------------------------------------------------ precision / recall
def test_precision_recall_identical_disjoint_and_half():
    real = gauss(300, [0, 0], [1, 1], 12)
    assert M.precision_recall(real, real) == (1.0, 1.0)
    far = real + 100.0
    assert M.precision_recall(real, far) == (0.0, 0.0)
    # fake = half the real points, half far away: precision 0.5; the real points far from the
    # retained half are not covered, so recall is high but below 1
    fake = np.concatenate([real[:150], far[150:]])
    p, r = M.precision_recall(real, fake)
    assert p == pytest.approx(0.5, abs=1e-9)
    assert 0.5 <= r < 1.0


def test_knn_radius_is_third_neighbour():
    pts = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # distances from 0: 1, 3, 6, 10 -> 3rd neighbour at 6; from 10: 4, 7, 9 -> 9
    assert M.knn_radii(pts, k=3).tolist() == [6.0, 5.0, 3.0, 5.0, 9.0]


# ------------------------------------------------------------------------------------- k-NN
def test_knn_accuracy_clusters_and_votes():
    rng = np.random.default_rng(13)
    centers = np.eye(4) * 5
    y = np.repeat(np.arange(4), 50)
    x = centers[y] + rng.normal(size=(200, 4)) * 0.3
    yt = np.arange(4).repeat(5)
    xt = centers[yt] + rng.normal(size=(20, 4)) * 0.3
    assert M.knn_accuracy(x, y, xt, yt, k=10) == 1.0
    assert M.knn_accuracy(x, y, xt, yt, k=10, vote="majority") == 1.0
    # query at angle 0: three class-1 neighbours slightly off, two class-0 neighbours exactly on it
    ang = np.array([0.0, 0.0, 0.3, 0.3, 0.3])
    feats = np.stack([np.cos(ang), np.sin(ang)], 1)
    labels = [0, 0, 1, 1, 1]
    q = np.array([[1.0, 0.0]])
    assert M.knn_predict(feats, labels, q, k=5, vote="majority").item() == 1  # 3 votes vs 2
    assert M.knn_predict(feats, labels, q, k=5, vote="weighted", temperature=0.01).item() == 0  # closer wins
    assert M.knn_predict(feats, labels, q, k=2).item() == 0


# ------------------------------------------------------------------------------------- PSNR
def test_psnr_known_values():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)  # mse 0.01 -> 20 dB
    assert M.psnr(a, b) == pytest.approx(20.0)
    c = b.clone()
    c[1] = 0.01  # mse 1e-4 -> 40 dB
    assert M.psnr(a, c, reduce=False).tolist() == pytest.approx([20.0, 40.0])
    assert M.psnr(a, c) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="shapes"):
        M.psnr(a, b[:1])
