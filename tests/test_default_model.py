"""The embedded default model (assets/default) behaves as measured when it was shipped."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import mage
from conftest import ROOT

ASSETS = ROOT / "assets"


@pytest.fixture(scope="module")
def pipe():
    return mage.MAGEPipeline.from_pretrained("default", device="cpu")


def test_default_model_card_and_size(pipe):
    c = pipe.config
    assert (c.img_size, c.grid_size, c.codebook_size, c.num_classes) == (32, 8, 512, 10)
    assert pipe.class_names[7] == "Sneaker"
    for key in ("dataset", "license", "reproduce", "training", "hardware"):
        assert pipe.meta.get(key), key
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total <= 30 * 2**20, f"assets/ is {total / 2**20:.1f} MiB (limit 30)"


def test_tokenizer_reconstructs_shipped_test_images(pipe):
    files = sorted((ASSETS / "examples").glob("*.png"))
    assert len(files) >= 8
    x = torch.cat([mage.image.to_tensor(Image.open(f)) for f in files])
    rec = pipe.decode(pipe.encode(x))
    from train.metrics import psnr as psnr_fn
    psnr = psnr_fn(rec, x, reduce=False)
    # measured when shipped: 18.0-26.6 dB, mean 22.4 dB (a random tokenizer gives ~6 dB)
    assert psnr.min() > 16.5 and psnr.mean() > 20.0, psnr


@pytest.mark.parametrize("label", ["Trouser", "Bag"])
def test_class_conditional_samples_are_recognised(pipe, label):
    from train.classifier import load_classifier
    clf, info = load_classifier()
    assert info["test_accuracy"] > 0.9
    res = pipe.generate(n=8, steps=12, seed=0, class_label=label, guidance_scale=2.0)
    with torch.no_grad():
        pred = clf.eval()(res.images).argmax(-1)
    hits = int((pred == pipe.class_names.index(label)).sum())
    assert hits >= 6, f"only {hits}/8 samples of {label!r} classified as such"  # measured: 8/8


def test_shipped_metrics_recorded(pipe):
    """metrics.json (train.evaluate) is the source of the model card's numbers, and says what we claim."""
    from train.summarize import summary
    m = json.loads((ASSETS / "default" / "metrics.json").read_text())
    assert pipe.meta["metrics"] == summary(m)
    rows = m["generation"]["feature_spaces"]["classifier"]["rows"]
    assert rows["real_train"]["fd"] < rows["mage_class_cond"]["fd"] < rows["mage"]["fd"] < rows["random_tokens"]["fd"]
    rep = m["representation"]["features"]
    assert rep["mage"]["linear_top1"] > rep["random_encoder"]["linear_top1"]
    assert m["class_conditional"]["mean"] > 0.5
