"""Copy the headline numbers of <model>/metrics.json (train.evaluate) into the model's config meta and
regenerate its model card, so the Model tab, `mage-studio info` and the Hub card show them."""
import json
import sys
from pathlib import Path

import mage
from mage.hub import write_model_card


def summary(m: dict) -> dict:
    cls = m["generation"]["feature_spaces"]["classifier"]["rows"]
    eff = m["generation"]["feature_spaces"].get("efficientnet_lite0", {}).get("rows", {})
    rep = m["representation"]["features"]
    out = {
        "tokenizer test PSNR (dB)": round(m["tokenizer"]["psnr_db"], 2),
        "tokenizer codebook usage": round(m["tokenizer"]["codebook_usage"], 3),
        "FD classifier space, class-cond (floor / tokenizer / random tokens)":
            f"{cls['mage_class_cond']['fd']:.1f} ({cls['real_train']['fd']:.2f} / {cls['tokenizer_recon']['fd']:.1f} / {cls['random_tokens']['fd']:.1f})",
        "FD classifier space, unconditional": round(cls["mage"]["fd"], 1),
        "class-conditional accuracy (guidance %.1f)" % m["class_conditional"]["guidance_scale"]:
            round(m["class_conditional"]["mean"], 3),
        "linear probe top-1 (pixels / random encoder)":
            f"{rep['mage']['linear_top1']:.3f} ({rep['pixels']['linear_top1']:.3f} / {rep['random_encoder']['linear_top1']:.3f})",
        "kNN-10 top-1 (pixels / random encoder)":
            f"{rep['mage']['knn10_top1']:.3f} ({rep['pixels']['knn10_top1']:.3f} / {rep['random_encoder']['knn10_top1']:.3f})",
        "note": "Fashion-MNIST 32x32, own feature extractors: not comparable with ImageNet FID",
    }
    if eff:
        out["FD EfficientNet-Lite0, class-cond (floor / random tokens)"] = \
            f"{eff['mage_class_cond']['fd']:.1f} ({eff['real_train']['fd']:.1f} / {eff['random_tokens']['fd']:.1f})"
    return out


def main(model_dir: str):
    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text())
    cfg["meta"]["metrics"] = summary(json.loads((d / "metrics.json").read_text()))
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    write_model_card(d, cfg["meta"], mage.MAGEConfig.from_dict(cfg["model"]))
    print(json.dumps(cfg["meta"]["metrics"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "assets/default")  # python -m train.summarize [dir]
