"""Shared test helpers: tiny configs and synthetic trace records (real PNG bytes, real boxes)."""

import io
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)

BACKBONES = ["tiny-qwen2.5-vl", "tiny-qwen3-vl"]


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def record(rid="r0", width=224, height=224, question="What colour is the star?", answer="red",
           steps=None, choices=None, seed=0, **extra):
    rec = dict(id=rid, source="test", split="train", image=png_bytes(width, height, seed), width=width, height=height,
               question=question, choices=choices or [], answer=answer, meta="{}",
               steps=steps if steps is not None else [{"text": "Find the star.", "bbox": [0.1, 0.1, 0.3, 0.3]}])
    rec.update(extra)
    return rec


@pytest.fixture
def records():
    """Three traces: different image sizes and aspect ratios, 1-3 steps, a step without a box, options."""
    return [
        record("a", 224, 224),
        record("b", 150, 100, question="Is the square larger than the triangle?", answer="yes", choices=["yes", "no"],
               steps=[{"text": "Find the square.", "bbox": [0.5, 0.1, 0.9, 0.5]},
                      {"text": "Find the triangle.", "bbox": None},
                      {"text": "Compare their sizes.", "bbox": [0.0, 0.0, 1.0, 1.0]}], seed=1),
        record("c", 90, 200, question="How many blue shapes are in the top-left quarter?", answer="2",
               steps=[{"text": "Look at the top-left quarter.", "bbox": [0.0, 0.0, 0.5, 0.5]},
                      {"text": "Count the blue shapes.", "bbox": [0.05, 0.1, 0.45, 0.4]}], seed=2),
    ]


def tiny_config(backbone="tiny-qwen2.5-vl", paradigm="lare", *overrides):
    from lare.config import load_config

    return load_config(None, [f"model.backbone={backbone}", f"method.paradigm={paradigm}", *overrides])
