"""One call from images and questions to answers, the token account and where each latent step looked:
`model.answer(images, questions)`. What the API server, the MLflow model and a notebook all use.

The refocus map of a latent step is the attention over the merged visual tokens of the image, a grid of
`rows x cols` cells that covers the whole image (Qwen's resize keeps the aspect ratio): cell (r, c) is the box
[c / cols, r / rows, (c + 1) / cols, (r + 1) / rows] in image coordinates from 0 to 1.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from lare.batch import Example, TraceError, build_batch


@dataclass
class RefocusStep:
    step: int                          # 1-based latent step
    grid: tuple[int, int]              # (rows, cols) of merged visual tokens
    weights: list[list[float]]         # [rows][cols], sums to 1
    regions: list[list[float]]         # the strongest cells as [x0, y0, x1, y1] in 0..1 of the image, strongest first


@dataclass
class Answer:
    answer: str                        # the final answer (what follows "Answer:")
    text: str                          # everything the model generated after the prompt
    tokens: dict[str, int]             # the token account (lare.model.TOKEN_KEYS)
    latency_s: float                   # this sample's share of its batch's generation time
    refocus: list[RefocusStep] = field(default_factory=list)  # lare: one per latent step
    boxes: list[list[float]] = field(default_factory=list)    # the boxes it wrote (text_cot, crop; crop re-encoded each)

    def to_dict(self) -> dict:
        return asdict(self)


def load_image(image, where: str = "image") -> Image.Image:
    """A PIL image, a path, or encoded bytes as an RGB image; anything else is a TraceError naming `where`."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        try:
            image = Path(image).expanduser().read_bytes()
        except OSError as e:
            raise TraceError(f"{where}: cannot read {str(image)!r}: {e}") from None
    if not isinstance(image, (bytes, bytearray, memoryview)) or len(image) == 0:
        raise TraceError(f"{where}: expected a PIL image, a path or image bytes, got {type(image).__name__}")
    try:
        pil = Image.open(io.BytesIO(bytes(image)))
        pil.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise TraceError(f"{where}: not a readable image ({e})") from None
    return pil.convert("RGB")


def top_regions(weights: torch.Tensor, k: int) -> list[list[float]]:
    """The k strongest cells of a [rows, cols] map as boxes in image coordinates (0..1)."""
    rows, cols = weights.shape
    order = torch.argsort(weights.flatten(), descending=True)[:k].tolist()
    return [[(i % cols) / cols, (i // cols) / rows, (i % cols + 1) / cols, (i // cols + 1) / rows] for i in order]


@torch.no_grad()
def answer(model, images: Sequence, questions: Sequence[str], choices: Sequence[Sequence[str]] | None = None,
           max_new_tokens: int | None = None, return_refocus: bool = True, regions_per_step: int = 3,
           batch_size: int = 8) -> list[Answer]:
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    if choices is not None and len(choices) != len(questions):
        raise ValueError(f"{len(choices)} choice lists but {len(questions)} questions")
    examples = []
    for i, (image, question) in enumerate(zip(images, questions)):
        if not isinstance(question, str) or not question.strip():
            raise TraceError(f"question {i}: empty")
        options = [str(c) for c in (choices[i] if choices is not None else [])]
        examples.append(Example(str(i), load_image(image, f"image {i}"), question.strip(), options, "", []))

    was_training = model.training
    model.eval()
    out: list[Answer] = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            batch = build_batch(chunk, model.processor, model.cfg, prompt_only=True).to(model.device)
            t0 = time.perf_counter()
            gen = model(batch, mode="generate", max_new_tokens=max_new_tokens)
            latency = (time.perf_counter() - t0) / len(chunk)
            for b in range(len(chunk)):
                steps = []
                maps = gen.refocus[b]
                if return_refocus and maps is not None:  # [steps, rows, cols]
                    steps = [RefocusStep(t + 1, (int(m.shape[0]), int(m.shape[1])), m.float().tolist(),
                                         top_regions(m.float(), regions_per_step)) for t, m in enumerate(maps)]
                out.append(Answer(gen.answers[b], gen.texts[b], {k: int(v) for k, v in gen.tokens[b].items()},
                                  latency, steps, [list(map(float, box)) for box in gen.boxes[b]]))
    finally:
        model.train(was_training)
    return out
