import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
COMPAT = Path(os.environ.get("MAGE_COMPAT_DIR", ROOT.parent / "shared" / "compat"))
if not COMPAT.is_dir():  # CI keeps a copy of the compat data inside the repository
    COMPAT = ROOT / "tests" / "data" / "compat"


def load_vec(name):
    return torch.load(COMPAT / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def compat_dir():
    return COMPAT


@pytest.fixture(scope="session")
def tiny():
    """The official tiny checkpoint loaded into our classes: (MAGE, VQGAN)."""
    import mage
    return mage.load_official(COMPAT / "tiny_mage_checkpoint.pth")


@pytest.fixture(scope="session")
def tiny_pipe(tiny):
    import mage
    return mage.MAGEPipeline(*tiny, meta={"source": "compat tiny"}, device="cpu")
