"""Helpers the tests share (not fixtures): tiny configs and synthetic trace records with real PNG bytes and
real boxes. A module of its own, since several conftest.py files would shadow each other as `conftest`."""

import io

import numpy as np
from PIL import Image

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


def tiny_config(backbone="tiny-qwen2.5-vl", paradigm="lare", *overrides):
    from lare.config import load_config

    return load_config(None, [f"model.backbone={backbone}", f"method.paradigm={paradigm}", *overrides])


class FailOnce:
    """A fault drill for jobs/train.py (a step hook, lare.train.plan): the last worker exits once, at `step`, but
    only after Ray Train registered the last checkpoint. Ray's controller collects reports every few seconds; a
    worker killed before that falls back to the one before (correct, but not the resume a test means to exercise)."""

    def __init__(self, step: int, marker, timeout_s: float = 120.0):
        self.step, self.marker, self.timeout_s = step, str(marker), timeout_s

    def __call__(self, event) -> None:
        import os
        import time
        from pathlib import Path

        from lare.storage import read_text

        if event.step != self.step or event.rank != event.world - 1 or Path(self.marker).exists():
            return
        deadline = time.monotonic() + self.timeout_s
        while event.last_checkpoint_step >= 0 and time.monotonic() < deadline:
            snapshot = read_text(f"{event.plan.experiment_uri}/checkpoint_manager_snapshot.json") or ""
            if f'"step_{event.last_checkpoint_step:07d}"' in snapshot:
                break
            time.sleep(0.5)
        Path(self.marker).touch()  # once: the restarted worker goes on
        os._exit(1)


def free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
