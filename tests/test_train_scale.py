"""Linear probe, fine-tune and token cache at scale: torchrun/DDP sharding equals one process, exact resume,
streamed ImageFolder data, the token-cache path, device selection. Runs on the shipped default model."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mage
from conftest import ROOT, needs_fashion_mnist, run_module
from train import cache as tcache, finetune as ft, linprobe
from train.common import Dist, map_dataset, shard_range
from train.data import build_dataset

pytestmark = needs_fashion_mnist
MODEL = ROOT / "assets" / "default"
FT_SMALL = ["--model", str(MODEL), "--train-limit", "64", "--test-limit", "51", "--epochs", "1", "--threads", "1",
            "--log-every", "1"]


@pytest.fixture(scope="module")
def pipe():
    return mage.MAGEPipeline.from_pretrained(MODEL, device="cpu")


def _weights(d):
    return load_file(str(d / "model.safetensors"))


def _results(d):
    return json.loads((d / "config.json").read_text())["results"]


# ------------------------------------------------------------------------------------- plumbing
@pytest.mark.parametrize("n,world", [(10, 1), (10, 2), (11, 2), (5, 4), (2, 3)])
def test_shard_range_covers_every_item_once(n, world):
    parts = [list(shard_range(n, world, r)) for r in range(world)]
    assert sum(parts, []) == list(range(n))


def test_map_dataset_streams_in_order_with_indices():
    ds = build_dataset("fashion-mnist", "test", 32, limit=23)
    out = map_dataset(ds, lambda x, y, i: {"mean": x.mean((1, 2, 3)), "y": y, "i": i}, batch_size=5, progress=False)
    assert torch.equal(out["i"], torch.arange(23))
    assert torch.equal(out["y"], torch.tensor([ds[i][1] for i in range(23)]))
    assert torch.allclose(out["mean"], torch.stack([ds[i][0].mean() for i in range(23)]))


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Dist("cuda")
    r = __import__("subprocess").run([__import__("sys").executable, "-m", "train.finetune", "--device", "cuda"],
                                     cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "CUDA is not available" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------- fine-tune
def test_finetune_two_processes_match_one_process(tmp_path):
    """Global batch 16 as 2 x 8 (torchrun, gloo) vs 1 x 16, with augmentation on: same parameters."""
    common = [*FT_SMALL, "--augment", "--drop-path", "0", "--emb-dropout", "0"]  # those two use per-rank RNG
    run_module("train.finetune", *common, "--batch-size", "16", "--out", tmp_path / "single")
    run_module("train.finetune", *common, "--batch-size", "8", "--out", tmp_path / "ddp", torchrun=2)
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    assert not torch.equal(a["head.weight"], torch.zeros_like(a["head.weight"]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
    rs, rd = _results(tmp_path / "single"), _results(tmp_path / "ddp")
    assert rd["world_size"] == 2 and rd["global_batch"] == 16 and rd["max_param_diff_across_ranks"] == 0.0
    assert rd["test_images"] == rs["test_images"] == 51  # the sharded evaluation saw every test image once
    assert rd["steps"] == rs["steps"] == 4
    assert abs(rd["test_top1"] - rs["test_top1"]) <= 1 / 51 + 1e-9
    assert (tmp_path / "ddp" / "loss.png").is_file() and (tmp_path / "ddp" / "run_config.json").is_file()


def test_finetune_kill_and_resume_is_exact(tmp_path):
    """Drop path, embedding dropout and augmentation on: the RNG state travels with the checkpoint."""
    common = [*FT_SMALL, "--batch-size", "8", "--augment", "--drop-path", "0.2", "--blr", "5e-3",
              "--save-every", "100"]
    full = ft.main([*common, "--out", str(tmp_path / "full")])
    assert ft.main([*common, "--out", str(tmp_path / "cut"), "--stop-after", "3"]) is None
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    assert [p.name for p in (tmp_path / "cut").glob("checkpoint-*.pt")] == ["checkpoint-00000003.pt"]
    resumed = ft.main([*common, "--out", str(tmp_path / "cut"), "--resume"])
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["history"] == full["history"] and resumed["test_top1"] == full["test_top1"]
    # and the interrupted steps did change something (the comparison is not vacuous)
    first = torch.load(tmp_path / "cut" / "checkpoint-00000008.pt", weights_only=False)["model"]
    assert not torch.equal(first["head.weight"], torch.zeros_like(first["head.weight"]))


def test_finetune_from_token_cache_equals_image_path(pipe, tmp_path):
    """Without augmentation the cached view 0 is the tokenized image: both paths train the same model."""
    ds = build_dataset("fashion-mnist", "train", 32, limit=48)
    c = tcache.build_cache(pipe.vqgan, ds, views=2, batch_size=7, progress=False)
    tcache.save_cache(tmp_path / "tok.safetensors", c, {"classes": ds.classes})
    kw = dict(train_limit=48, test_limit=20, epochs=2, batch_size=16, blr=5e-3, drop_path=0.0, emb_dropout=0.0,
              progress=False)
    m1, r1 = ft.finetune(pipe, **kw)
    m2, r2 = ft.finetune(pipe, token_cache=tmp_path / "tok.safetensors", **kw)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(v1, v2, atol=1e-6, rtol=1e-5, msg=k)
    assert r1["history"][-1]["mean_loss"] < r1["history"][0]["mean_loss"]
    with pytest.raises(ValueError, match="fewer than the global batch"):
        ft.finetune(pipe, train_limit=8, test_limit=8, batch_size=16, progress=False)


# ------------------------------------------------------------------------------------- linear probe / cache
def test_linprobe_two_processes_match_one_process(pipe, tmp_path):
    """torchrun: each rank encodes half of each split (101 test images: uneven shards), rank 0 probes."""
    run_module("train.linprobe", "--model", MODEL, "--train-limit", "200", "--test-limit", "101", "--epochs", "5",
               "--batch-size", "50", "--features-dir", tmp_path / "feats", "--out", tmp_path / "ddp.json",
               "--extract-batch-size", "32", "--threads", "1", torchrun=2)
    ddp = load_file(str(tmp_path / "feats" / "test.safetensors"))
    one, _ = linprobe.extract_features(pipe, "fashion-mnist", "test", 101, batch_size=64, progress=False)
    assert ddp.keys() == one.keys() == {"labels", "mage", "pixels", "random_encoder"}
    assert torch.equal(ddp["labels"], one["labels"]) and torch.equal(ddp["pixels"], one["pixels"])
    for k in ("mage", "random_encoder"):
        torch.testing.assert_close(ddp[k], one[k], atol=1e-5, rtol=1e-5)
    res = json.loads((tmp_path / "ddp.json").read_text())
    assert res["world_size"] == 2 and res["train_images"] == 200 and res["test_images"] == 101
    assert set(res["features"]) == {"mage", "pixels", "random_encoder"}
    assert res["features"]["pixels"]["dim"] == 32 * 32  # grey images: one channel
    assert res["features"]["mage"]["linear_top1"] > 0.3  # trained encoder, 10 classes


def test_linprobe_features_dir_is_reused(pipe, tmp_path, monkeypatch):
    kw = dict(train_limit=64, test_limit=32, epochs=2, baselines=False, progress=False, features_dir=tmp_path)
    first = linprobe.probe_all(pipe, "fashion-mnist", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.safetensors", "train.safetensors"]

    def boom(*a, **k):
        raise AssertionError("features should have come from --features-dir")
    monkeypatch.setattr(linprobe, "extract_features", boom)
    again = linprobe.probe_all(pipe, "fashion-mnist", **kw)
    assert again["features"]["mage"]["linear_top1"] == first["features"]["mage"]["linear_top1"]
    with pytest.raises(AssertionError, match="features-dir"):  # another limit is another key: re-extracted
        linprobe.probe_all(pipe, "fashion-mnist", **{**kw, "train_limit": 65})


def test_token_cache_is_the_same_for_any_batch_size_and_world_size(pipe, tmp_path):
    run_module("train.cache", "--tokenizer", MODEL, "--limit", "21", "--views", "3", "--batch-size", "4",
               "--out", tmp_path / "ddp.safetensors", "--threads", "1", torchrun=2)
    ddp, meta = tcache.load_cache(tmp_path / "ddp.safetensors")
    ds = build_dataset("fashion-mnist", "train", 32, limit=21)
    one = tcache.build_cache(pipe.vqgan, ds, views=3, batch_size=16, progress=False)
    assert ddp["tokens"].shape == (21, 3, pipe.config.num_tokens) and ddp["tokens"].dtype == torch.int16
    assert torch.equal(ddp["tokens"], one["tokens"]) and torch.equal(ddp["labels"], one["labels"])
    assert not torch.equal(one["tokens"][:, 1], one["tokens"][:, 2])  # the augmented views differ
    assert meta["views"] == 3 and len(meta["classes"]) == 10


# ------------------------------------------------------------------------------------- ImageFolder
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/ and test/ splits of 3 classes of Fashion-MNIST written as RGB PNGs of another size (40x40)."""
    from train.data import load_fashion_mnist
    root = tmp_path_factory.mktemp("folder")
    for split, n in (("train", 24), ("test", 9)):
        x, y = load_fashion_mnist(split, 40)
        for c, name in ((0, "tshirt"), (1, "trouser"), (8, "bag")):
            d = root / split / name
            d.mkdir(parents=True)
            for j, i in enumerate(np.flatnonzero(y == c)[:n]):
                Image.fromarray(np.repeat(x[i][..., None], 3, -1)).save(d / f"{j:03d}.png")
    return root


def test_probe_and_finetune_stream_an_image_folder(pipe, image_folder, tmp_path):
    res = linprobe.probe_all(pipe, str(image_folder), train_limit=None, test_limit=None, epochs=10, progress=False,
                             probe_batch_size=16)
    assert res["num_classes"] == 3 and res["train_images"] == 72 and res["test_images"] == 27
    assert res["features"]["pixels"]["dim"] == 3 * 32 * 32  # RGB folder images: three channels
    assert res["features"]["mage"]["linear_top1"] > 0.6  # trouser / bag / t-shirt are easy
    model, r = ft.finetune(pipe, str(image_folder), train_limit=None, test_limit=None, epochs=2, batch_size=8,
                           blr=5e-3, augment=True, progress=False, out=tmp_path / "ft")
    assert r["class_names"] == ["bag", "trouser", "tshirt"] and r["test_images"] == 27 and r["num_classes"] == 3
    assert model.head.out_features == 3 and set(r["per_class_top1"]) == {0, 1, 2}
    assert (tmp_path / "ft" / "model.safetensors").is_file()


def test_image_folder_limit_spreads_over_classes(image_folder):
    ds = build_dataset(str(image_folder), "train", 32, limit=12)
    assert len(ds) == 12 and len({c for _, c in ds.samples}) == 3
    assert ds.samples == sorted(ds.samples)  # stays in folder order


def test_split_folders_follow_the_imagenet_layout(tmp_path):
    from train.data import split_root
    for d in ("inet/train/a", "inet/val/a", "flat/a"):
        (tmp_path / d).mkdir(parents=True)
    assert split_root(tmp_path / "inet", "train") == tmp_path / "inet" / "train"
    assert split_root(tmp_path / "inet", "test") == tmp_path / "inet" / "val"  # ImageNet calls it val
    assert split_root(tmp_path / "inet" / "train", "test") == tmp_path / "inet" / "val"  # given .../train
    assert split_root(tmp_path / "flat", "train") == tmp_path / "flat"
    with pytest.raises(ValueError, match="no 'test' split"):  # never evaluate on training images silently
        split_root(tmp_path / "flat", "test")
    with pytest.raises(FileNotFoundError):
        split_root(tmp_path / "missing", "train")
