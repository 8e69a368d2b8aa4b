"""Linear probe, k-NN, fine-tuning, feature extractors, the Fashion-MNIST classifier and the quality report.

Uses the shipped model (assets/default) when it exists, otherwise a randomly initialised model of the
same architecture; assertions that need a trained model are applied only to the shipped one."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mage
from mage import MAGEConfig, VQGANConfig
from train import linprobe
from train.finetune import build_classifier, finetune, param_groups

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "assets" / "default"
CLASSIFIER = ROOT / "assets" / "fmnist_classifier"
HOPPER = Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if (SHIPPED / "config.json").is_file():
        return SHIPPED
    cfg = MAGEConfig(img_size=32, embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=128, decoder_depth=2,
                     decoder_num_heads=4, num_classes=10,
                     vqgan=VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, n_embed=512))
    torch.manual_seed(0)
    from train.data import FASHION_CLASSES
    d = tmp_path_factory.mktemp("random_model")
    mage.save_native(d, mage.MAGE(cfg), mage.VQGAN(cfg.vqgan), meta={"class_names": FASHION_CLASSES})
    return d


@pytest.fixture(scope="module")
def pipe(model_dir):
    return mage.MAGEPipeline.from_pretrained(str(model_dir), device="cpu")


def trained(model_dir):
    return Path(model_dir) == SHIPPED


# ------------------------------------------------------------------------------------- linear probe
def test_linear_probe_learns_separable_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 32, generator=g) * 3
    y = torch.arange(1000) % 5
    x = centers[y] + torch.randn(1000, 32, generator=g)
    res = linprobe.linear_probe(x[:800], y[:800], x[800:], y[800:], epochs=10, progress=False)
    assert res["top1"] > 0.97
    y_rand = torch.randint(0, 5, (1000,), generator=g)
    res = linprobe.linear_probe(x[:800], y_rand[:800], x[800:], y_rand[800:], epochs=10, progress=False)
    assert res["top1"] < 0.35  # chance is 0.2


def test_pixel_features_and_cosine_schedule():
    grey = torch.rand(4, 1, 8, 8).expand(-1, 3, -1, -1)
    assert linprobe.pixel_features(grey).shape == (4, 64)
    assert linprobe.pixel_features(torch.rand(4, 3, 8, 8)).shape == (4, 192)
    lrs = [linprobe.cosine_lr(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.01


def test_probe_all_on_fashion_mnist(pipe, model_dir):
    res = linprobe.probe_all(pipe, "fashion-mnist", train_limit=300, test_limit=150, epochs=5, progress=False)
    f = res["features"]
    assert set(f) == {"mage", "pixels", "random_encoder"}
    assert f["mage"]["dim"] == pipe.config.embed_dim and f["pixels"]["dim"] == 32 * 32
    assert f["pixels"]["linear_top1"] > 0.5 and f["pixels"]["knn10_top1"] > 0.5  # chance 0.1
    assert f["mage"]["knn10_top1"] > 0.2  # even random token features carry class information
    # the baseline encoder is a different network than the model under test
    feats_model = linprobe.mage_features(pipe.model, torch.randint(0, 512, (2, pipe.config.num_tokens)), progress=False)
    rnd = linprobe.random_encoder_like(pipe.model)
    assert not torch.allclose(feats_model, linprobe.mage_features(rnd, torch.randint(0, 512, (2, pipe.config.num_tokens)),
                                                                  progress=False))
    if trained(model_dir):
        assert f["mage"]["linear_top1"] > f["random_encoder"]["linear_top1"]


# ------------------------------------------------------------------------------------- fine-tuning
def test_layer_decay_groups(pipe):
    model = build_classifier(pipe.model, 10, drop_path=0.1)
    depth = len(model.blocks)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    names = [n for grp in groups for n in grp["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # every parameter exactly once
    assert not any(n.startswith(("decoder", "mlm_layer")) for n in names)
    scale = {n: grp["lr_scale"] for grp in groups for n in grp["names"]}
    wd = {n: grp["weight_decay"] for grp in groups for n in grp["names"]}
    assert scale["token_emb.word_embeddings.weight"] == pytest.approx(0.5 ** (depth + 1))
    assert scale["blocks.0.attn.qkv.weight"] == pytest.approx(0.5 ** depth)
    assert scale[f"blocks.{depth - 1}.mlp.fc2.weight"] == pytest.approx(0.5)
    assert scale["head.weight"] == 1.0 and scale["fc_norm.weight"] == 1.0
    assert wd["blocks.0.attn.qkv.weight"] == 0.05 and wd["blocks.0.attn.qkv.bias"] == 0.0
    assert wd["token_emb.position_embeddings.weight"] == 0.0 and wd["head.weight"] == 0.05
    # drop path grows with depth and the pre-trained weights were copied
    assert model.blocks[-1].drop_path.p == pytest.approx(0.1) and model.blocks[0].drop_path.p == 0.0
    assert torch.equal(model.blocks[0].attn.qkv.weight, pipe.model.blocks[0].attn.qkv.weight)
    assert model.blocks[0].attn.qkv.weight.data_ptr() != pipe.model.blocks[0].attn.qkv.weight.data_ptr()


def test_finetune_beats_chance_on_a_tiny_subset(pipe):
    before = pipe.model.blocks[0].attn.qkv.weight.clone()
    model, res = finetune(pipe, "fashion-mnist", train_limit=256, test_limit=200, epochs=3, batch_size=32,
                          blr=1e-2, layer_decay=0.75, progress=False)
    assert res["chance"] == pytest.approx(0.1)
    assert res["test_top1"] > 0.2, res  # 5 standard deviations above chance on 200 images
    assert res["history"][-1]["mean_loss"] < res["history"][0]["mean_loss"] - 0.05
    assert torch.equal(pipe.model.blocks[0].attn.qkv.weight, before)  # the pipeline's model is untouched
    assert not torch.equal(model.blocks[0].attn.qkv.weight, before)


# ------------------------------------------------------------------------------------- classifier / features
@pytest.mark.skipif(not (CLASSIFIER / "config.json").is_file(), reason="classifier not trained yet")
def test_shipped_classifier_accuracy_and_features():
    from train.data import load_fashion_mnist
    from train.features import ClassifierFeatures
    clf = ClassifierFeatures(CLASSIFIER)
    assert (CLASSIFIER / "model.safetensors").stat().st_size < 1_000_000
    x, y = load_fashion_mnist("test", 32)
    imgs = torch.from_numpy(x[:600]).float().div(255)[:, None].expand(-1, 3, -1, -1)
    acc = (clf.predict(imgs) == torch.from_numpy(y[:600])).float().mean().item()
    assert acc > 0.85
    assert clf.test_accuracy > 0.85
    f = clf(imgs[:8])
    assert f.shape == (8, clf.dim) and torch.isfinite(f).all()
    with pytest.raises(ValueError, match="expected an image tensor"):
        clf(torch.rand(2, 1, 32, 32))


def test_classifier_training_round_trip(tmp_path):
    from train.classifier import load_classifier, save_classifier, train
    model, info = train(epochs=1, limit=512, batch_size=64, widths=(8, 8, 16, 16), progress=False, test_limit=500)
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["train_images"] == 512
    save_classifier(tmp_path, model, info)
    loaded, cfg = load_classifier(tmp_path)
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x)) and cfg["test_accuracy"] == info["test_accuracy"]
    with pytest.raises(FileNotFoundError, match="train one"):
        load_classifier(tmp_path / "missing")


def test_efficientnet_lite0_recognises_a_photo():
    from train.features import EfficientNetLite0Features, efficientnet_status
    ok, msg = efficientnet_status()
    if not ok:
        pytest.skip(msg)
    from PIL import Image
    img = np.asarray(Image.open(HOPPER).convert("RGB").resize((224, 224)), dtype=np.float32) / 255
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None]
    ex = EfficientNetLite0Features()
    assert ex.logits(x).argmax(1).item() == 652  # ImageNet "military uniform" (Grace Hopper in uniform)
    f = ex(torch.cat([x, x.flip(3)]))
    assert f.shape == (2, 1280) and (f >= 0).all()  # pooled ReLU6 activations
    assert torch.nn.functional.cosine_similarity(f[0], f[1], dim=0) > 0.8


# ------------------------------------------------------------------------------------- quality report
def test_evaluate_quick_writes_report(model_dir, tmp_path):
    from train import evaluate
    out = tmp_path / "metrics.json"
    evaluate.main(["--model", str(model_dir), "--out", str(out), "--quick", "--n-gen", "20", "--classifier", str(CLASSIFIER)])
    res = json.loads(out.read_text())
    md = out.with_suffix(".md").read_text()
    assert "NOT comparable" in md and "## Representation" in md
    t = res["tokenizer"]
    assert 0 < t["codes_used"] <= t["codebook_size"] and t["psnr_db"] > 5
    rep = res["representation"]["features"]
    assert rep["pixels"]["linear_top1"] > 0.5
    from train.features import efficientnet_status
    if efficientnet_status()[0]:
        eff = res["generation"]["feature_spaces"]["efficientnet_lite0"]
        assert eff["dim"] == 1280 and eff["rows"]["mage"]["n"] == 8  # quick mode caps this space at 8 images
        assert np.isfinite(eff["rows"]["real_train"]["fd"])
    if (CLASSIFIER / "config.json").is_file():
        rows = res["generation"]["feature_spaces"]["classifier"]["rows"]
        # the floor (real train images) is far closer to the test set than decoded random tokens
        assert rows["real_train"]["fd"] < 0.5 * rows["random_tokens"]["fd"]
        assert rows["real_train"]["fd_position"] == 0.0 and rows["random_tokens"]["fd_position"] == 1.0
        # decoded random tokens cover little of the real manifold (precision alone can be fooled by collapse)
        assert rows["real_train"]["recall"] > rows["random_tokens"]["recall"]
        cc = res["class_conditional"]
        assert len(cc["per_class"]) == 10 and 0 <= cc["mean"] <= 1
        if trained(model_dir):
            assert rows["mage"]["fd"] < rows["random_tokens"]["fd"]
            assert cc["mean"] > 0.3


def test_cli_rejects_bad_input(tmp_path, capsys):
    from train import evaluate, finetune as ft
    with pytest.raises(SystemExit):
        linprobe.main(["--epochs", "0"])
    with pytest.raises(SystemExit):
        ft.main(["--layer-decay", "1.5"])
    with pytest.raises(SystemExit):
        evaluate.main(["--model", "/tmp", "--out", str(tmp_path / "m.json"), "--n-gen", "2"])
    assert "too small" in capsys.readouterr().err
    with pytest.raises(mage.CheckpointError, match="not a MAGE Studio model directory"):
        evaluate.evaluate(str(tmp_path), quick=True)


def test_official_checkpoint_encoder_features_and_finetune_head(tiny):
    """The official-format tiny checkpoint works as a probe / fine-tune backbone."""
    model, _ = tiny
    N = model.config.num_tokens
    toks = torch.randint(0, model.config.codebook_size, (3, N), generator=torch.Generator().manual_seed(0))
    f = linprobe.mage_features(model, toks, progress=False)
    assert f.shape == (3, model.config.embed_dim) and torch.isfinite(f).all()
    clf = build_classifier(model, num_classes=7, drop_path=0.0).eval()
    with torch.no_grad():
        logits = clf(toks)
    assert logits.shape == (3, 7)
    assert len({g["lr_scale"] for g in param_groups(clf)}) == model.config.depth + 2
