"""EmbeddingIndex (exact torch / approximate FAISS), pca_2d, and the shipped gallery + its builder."""
import os
import sys

import numpy as np
import pytest
import torch

import mage
from mage.gallery import (EMB_FILE, EMBEDDING_KIND, cache_name, load_gallery, model_fingerprint,
                          read_embeddings, save_gallery)
from mage.retrieval import EmbeddingIndex, pca_2d
from conftest import ROOT
from test_engine import random_small_pipe, small_pipe


def clustered(n=600, d=16, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    lab = torch.randint(0, k, (n,), generator=g)
    return centers[lab] + torch.randn(n, d, generator=g), lab


def brute_force(x, q, k):
    xn, qn = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    s = qn @ xn.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


# ------------------------------------------------------------------------------------ exact index
def test_exact_search_matches_brute_force():
    x, lab = clustered()
    q = x[:7] + 0.3 * torch.randn(7, 16, generator=torch.Generator().manual_seed(1))
    index = EmbeddingIndex(x, labels=lab)
    assert index.backend == "torch" and len(index) == 600 and index.dim == 16
    scores, idx = index.search(q, k=10)
    ref_s, ref_i = brute_force(x.double().numpy(), q.double().numpy(), 10)
    assert scores.shape == idx.shape == (7, 10) and idx.dtype == torch.long
    np.testing.assert_allclose(scores.numpy(), ref_s, atol=1e-5)
    assert (np.sort(idx.numpy(), 1) == np.sort(ref_i, 1)).all()
    assert (scores[:, 1:] <= scores[:, :1]).all()
    assert (idx[:, 0] == torch.arange(7)).all()  # each query's own row is its nearest neighbour
    # cosine: rescaling rows changes nothing
    s2, i2 = EmbeddingIndex(x * (torch.rand(600, 1) * 50 + 0.1)).search(q * 7, k=10)
    torch.testing.assert_close(s2, scores, atol=1e-5, rtol=0)
    assert torch.equal(i2.sort(1).values, idx.sort(1).values)
    # neighbours mostly share the label of their cluster
    assert (torch.from_numpy(index.labels)[idx] == lab[:7, None]).float().mean() > 0.9


def test_single_query_and_k_larger_than_index():
    x, _ = clustered(n=5)
    s, i = EmbeddingIndex(x).search(x[2], k=50)
    assert s.shape == (1, 5) and sorted(i[0].tolist()) == [0, 1, 2, 3, 4] and i[0, 0] == 2
    assert s[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_add_equals_building_at_once():
    x, lab = clustered()
    names = [f"img{i}" for i in range(600)]
    whole = EmbeddingIndex(x, labels=lab, names=names)
    parts = EmbeddingIndex(x[:100], labels=lab[:100], names=names[:100])
    parts.add(x[100:450], labels=lab[100:450], names=names[100:450]).add(x[450:], lab[450:], names[450:])
    torch.testing.assert_close(parts.vectors, whole.vectors)
    assert (parts.labels == whole.labels).all() and parts.names == whole.names
    assert torch.equal(parts.search(x[:20], 5)[1], whole.search(x[:20], 5)[1])
    empty = EmbeddingIndex(torch.zeros(0, 16))
    empty.add(x[:3], labels=[1, 2, 3])
    assert len(empty) == 3 and empty.labels.tolist() == [1, 2, 3]


def test_index_errors():
    x, lab = clustered(n=20)
    index = EmbeddingIndex(x, labels=lab)
    with pytest.raises(ValueError, match="query has dimension 8, the index has 16"):
        index.search(torch.zeros(2, 8), 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(x[0], 0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        index.search(torch.full((16,), float("nan")), 3)
    with pytest.raises(ValueError, match="pass labels for the new rows too"):
        index.add(x[:2])
    with pytest.raises(ValueError, match="labels must be 2 integers"):
        index.add(x[:2], labels=[1.5, 2.5])
    with pytest.raises(ValueError, match="embeddings have dimension 4, the index has 16"):
        index.add(torch.zeros(2, 4), labels=[0, 1])
    assert len(index) == 20  # failed adds changed nothing
    with pytest.raises(ValueError, match="index is empty"):
        EmbeddingIndex(torch.zeros(0, 4)).search(torch.ones(4), 1)
    with pytest.raises(ValueError, match="unknown backend 'annoy'"):
        EmbeddingIndex(x, backend="annoy")
    with pytest.raises(ValueError, match=r"embeddings must be \[N, D\] or \[D\]"):
        EmbeddingIndex(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="got 3 names for 20 embeddings"):
        EmbeddingIndex(x, names=["a", "b", "c"])


# ------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_load_round_trip(tmp_path, suffix):
    x, lab = clustered(n=50)
    names = [f"näme {i}" for i in range(50)]
    a = EmbeddingIndex(x, labels=lab, names=names)
    path = a.save(tmp_path / f"index{suffix}")
    assert path.exists() and path.suffix == suffix
    b = EmbeddingIndex.load(path)
    assert torch.equal(a.vectors, b.vectors) and (a.labels == b.labels).all() and a.names == b.names
    assert torch.equal(a.search(x[:5], 4)[1], b.search(x[:5], 4)[1])
    c = EmbeddingIndex.load(EmbeddingIndex(x).save(tmp_path / f"plain{suffix}"))
    assert c.labels is None and c.names is None and len(c) == 50


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_never_unpickles(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.npz", "wb") as f:
        np.savez(f, embeddings=np.array([Exploit(marker)], dtype=object))
    with pytest.raises(ValueError, match="cannot read embedding index .*evil.npz"):
        EmbeddingIndex.load(tmp_path / "evil.npz")
    assert not marker.exists()
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="cannot read embedding index"):
        EmbeddingIndex.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="must end in .npz or .safetensors"):
        EmbeddingIndex(torch.ones(2, 2)).save(tmp_path / "index.pkl")
    with pytest.raises(FileNotFoundError, match="index file not found"):
        EmbeddingIndex.load(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------------ faiss
def test_faiss_backend_approximates_exact_search():
    faiss = pytest.importorskip("faiss")
    faiss.omp_set_num_threads(1)
    x, _ = clustered(n=3000, d=32, k=20, seed=2)
    q = x[::100] + 0.5 * torch.randn(30, 32, generator=torch.Generator().manual_seed(3))
    exact = EmbeddingIndex(x, backend="torch").search(q, 10)
    approx_index = EmbeddingIndex(x, backend="faiss")
    assert approx_index.backend == "faiss"
    s, i = approx_index.search(q, 10)
    assert s.shape == i.shape == (30, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i.tolist(), exact[1].tolist())])
    assert recall >= 0.95
    torch.testing.assert_close(s[:, 0], exact[0][:, 0], atol=1e-4, rtol=0)
    # "auto" switches to faiss above the threshold; rows added later are found
    auto = EmbeddingIndex(x[:50], backend="auto", threshold=100)
    assert auto.backend == "torch"
    auto.add(x[50:200])
    assert auto.backend == "faiss"
    assert auto.search(x[150], 1)[1].item() == 150


def test_faiss_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(ImportError, match="backend='faiss' needs the optional package faiss-cpu"):
        EmbeddingIndex(torch.randn(10, 4), backend="faiss")
    auto = EmbeddingIndex(torch.randn(300, 4), backend="auto", threshold=100)
    assert auto.backend == "torch" and auto.search(torch.randn(4), 3)[0].shape == (1, 3)


# ------------------------------------------------------------------------------------ PCA map
def test_pca_2d_finds_the_main_directions():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 12, generator=g))[0]
    coef = torch.randn(400, 12, generator=g) * torch.tensor([5.0, 2.0] + [0.1] * 10)
    x = coef @ basis.T + 3.0  # offset: PCA must centre
    pts, q = pca_2d(x, normalize=False)
    assert pts.shape == (400, 2) and pts.dtype == torch.float32 and q is None
    for j in range(2):
        r = np.corrcoef(pts[:, j].numpy(), coef[:, j].numpy())[0, 1]
        assert abs(r) > 0.99
    assert pts[:, 0].var() > pts[:, 1].var() > 10 * coef[:, 2].var()
    pts2, q = pca_2d(x, x[:5] * 1.0, normalize=False)
    assert torch.equal(pts, pts2)
    torch.testing.assert_close(q, pts[:5])  # queries land where the same rows do
    # normalised variant: invariant to row scaling
    a, _ = pca_2d(x)
    b, _ = pca_2d(x * torch.rand(400, 1, generator=g).add(0.5))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="query has dimension 3, embeddings have 12"):
        pca_2d(x, torch.zeros(1, 3))


# ------------------------------------------------------------------------------------ gallery
@pytest.fixture(scope="module")
def fashion():
    from train.data import load_fashion_mnist
    try:
        return load_fashion_mnist("test")
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def built(tmp_path_factory, fashion):
    """A 50-image gallery built through the CLI for a random model of the default architecture."""
    from train.build_gallery import main
    pipe = random_small_pipe(5)
    d = tmp_path_factory.mktemp("gal")
    model_dir = mage.save_native(d / "model", pipe.model, pipe.vqgan, meta={"class_names": pipe.class_names})
    assert main(["--model", str(model_dir), "--n", "50", "--out", str(d / "gallery"), "--batch-size", "16"]) == 0
    return pipe, d / "gallery"


def test_builder_selects_first_images_of_each_class(built, fashion):
    _, out = built
    x, y = fashion
    g = load_gallery(built[0], out)
    expected = np.sort(np.concatenate([np.flatnonzero(y == c)[:5] for c in range(10)]))
    assert g.info["dataset_indices"] == expected.tolist()
    assert g.images.shape == (50, 32, 32, 3) and g.images.dtype == np.uint8
    assert (g.images == x[expected][..., None]).all()
    assert (g.labels == y[expected]).all() and np.bincount(g.labels).tolist() == [5] * 10
    assert g.class_names[9] == "Ankle boot" and g.label_name(0) == g.class_names[g.labels[0]]
    assert "Fashion-MNIST test" in g.info["dataset"]


def test_gallery_uses_the_cache_for_the_same_model(built):
    pipe, out = built
    calls = []
    g = load_gallery(pipe, out, progress=lambda d, t: calls.append((d, t)))
    assert not g.recomputed and calls == []
    assert g.fingerprint == model_fingerprint(pipe)
    fresh = pipe.embed(torch.from_numpy(g.images).permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(g.embeddings, fresh, atol=1e-5, rtol=1e-5)
    s, i = g.search(g.embeddings[:4], k=3)
    assert i[:, 0].tolist() == [0, 1, 2, 3] and torch.allclose(s[:, 0], torch.ones(4), atol=1e-5)


def test_gallery_recomputes_for_another_model_and_updates_the_cache(built, tmp_path):
    import shutil
    _, out = built
    d = tmp_path / "copy"
    shutil.copytree(out, d)
    other = random_small_pipe(6)
    assert model_fingerprint(other) != model_fingerprint(built[0])
    calls = []
    g = load_gallery(other, d, progress=lambda done, total: calls.append((done, total)), batch_size=16)
    assert g.recomputed and g.cache_updated
    assert calls == [(16, 50), (32, 50), (48, 50), (50, 50)]
    emb, meta = read_embeddings(d, cache_name(g.fingerprint))
    assert meta["fingerprint"] == model_fingerprint(other) and meta["embedding"] == EMBEDDING_KIND
    torch.testing.assert_close(emb, g.embeddings)
    assert read_embeddings(d)[1]["fingerprint"] == model_fingerprint(built[0])  # shipped file untouched
    again = load_gallery(other, d, progress=lambda *a: pytest.fail("should use the cache"))
    assert not again.recomputed and torch.equal(again.embeddings, g.embeddings)
    assert not load_gallery(built[0], d, progress=lambda *a: pytest.fail("should use the shipped file")).recomputed
    # broken files are recomputed, not an error
    (d / cache_name(g.fingerprint)).write_bytes(b"broken")
    (d / EMB_FILE).write_bytes(b"broken")
    assert load_gallery(other, d, progress=lambda *a: None).recomputed
    assert load_gallery(built[0], d, progress=lambda *a: None).recomputed


def test_gallery_in_read_only_place_still_loads(built, tmp_path, monkeypatch):
    import shutil
    import mage.gallery as mg
    d = tmp_path / "ro"
    shutil.copytree(built[1], d)

    def deny(*a, **k):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(mg, "write_embeddings", deny)
    with pytest.warns(UserWarning, match="recomputed but not cached"):
        g = load_gallery(random_small_pipe(7), d, progress=lambda *a: None)
    assert g.recomputed and not g.cache_updated and g.embeddings.shape == (50, 128)


def test_gallery_for_a_model_with_another_resolution(tmp_path, tiny_pipe):
    """The official tiny model works on 256x256: thumbnails are resized before embedding."""
    imgs = (np.random.default_rng(0).random((4, 32, 32, 3)) * 255).astype(np.uint8)
    save_gallery(tmp_path, imgs, [0, 1, 2, 3], ["a", "b", "c", "d"])
    g = load_gallery(tiny_pipe, tmp_path, progress=lambda *a: None)
    assert g.recomputed and g.embeddings.shape == (4, 64) and g.images.shape == (4, 32, 32, 3)
    up = torch.nn.functional.interpolate(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, size=256,
                                         mode="bilinear", align_corners=False)
    torch.testing.assert_close(g.embeddings, tiny_pipe.embed(up), atol=1e-5, rtol=1e-5)


def test_gallery_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no gallery in .*build one with"):
        load_gallery(small_pipe(), tmp_path / "nothing")
    with pytest.raises(ValueError, match="need one label per image"):
        save_gallery(tmp_path, np.zeros((3, 8, 8), np.uint8), [1, 2], ["x"])
    with pytest.raises(ValueError, match="gallery images must be uint8"):
        save_gallery(tmp_path, np.zeros((3, 8, 8), np.float32), [1, 2, 3], ["x"])


SHIPPED = ROOT / "assets" / "gallery"


@pytest.mark.skipif(not (SHIPPED / "gallery.npz").is_file(), reason="no gallery shipped yet")
def test_shipped_gallery_fits_the_shipped_model():
    size = sum(p.stat().st_size for p in SHIPPED.iterdir() if p.name in ("gallery.npz", "gallery.json", EMB_FILE))
    assert size < 5e6
    assert read_embeddings(SHIPPED)[1].get("fingerprint") == model_fingerprint(small_pipe()), \
        "assets/gallery/embeddings.safetensors is stale: rerun train/build_gallery.py"
    g = load_gallery(small_pipe(), progress=lambda *a: pytest.fail("shipped embeddings are stale: rerun "
                                                                   "train/build_gallery.py"))
    assert len(g) >= 1000 and len(g.class_names) == 10 and not g.recomputed
