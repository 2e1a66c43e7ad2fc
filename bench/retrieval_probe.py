"""Does the tiny language model learn to look? One-hop retrieval from the bundled backbone, in a plain loop.

The paradigm comparison has every model near its question-only baseline. This isolates the first thing each
paradigm needs: answering an attribute question by attending to the one visual token it names. A `direct` model is
trained from `model.backbone` on attribute questions whose text matches a pattern (default: one fixed question,
"What colour is the circle?", so no question word has to be carried to the answer position first), then answers
held-out rows twice: about their own image and about another row's image (`other_image`). The difference is what the
model takes from the image; the bundled tower's linear probe (lare/assets/.../README.md) says what is there to take.

    python bench/retrieval_probe.py                                 # the fixed question and the whole family
    python bench/retrieval_probe.py --pattern 'What shape is the .* object\\?' --steps 2000
    python bench/retrieval_probe.py --family grounding --pattern 'Where is the .*\\?' --freeze-vision  # box answers

Prints a table and writes bench/results/retrieval_probe.json.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from lare.processor import parse_box

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = {"fixed question": r"What colour is the circle\?", "whole attribute family": r".*"}


def examples(pattern: str, split: str, seed: int, n: int, family: str = "attribute"):
    from lare.pretrain import _example
    from pipelines.sources.refocus import generate

    out, i = [], 0
    while len(out) < n:
        sample = generate(split, i, seed=seed, families=(family,))
        i += 1
        if re.fullmatch(pattern, sample["question"]):
            out.append(_example(sample, f"{split}-{i}"))
    return out


def probe(pattern: str, args) -> dict:
    from lare.batch import build_batch
    from lare.config import load_config
    from lare.model import LaReModel

    from lare.pretrain import about_other_images, answer_accuracy
    from lare.train.parallel import freeze

    cfg = load_config(None, [f"model.backbone={args.backbone}", "method.paradigm=direct", f"train.seed={args.seed}",
                             f"train.freeze_vision={args.freeze_vision}"])
    torch.manual_seed(args.seed)
    model = LaReModel.build(cfg).train()
    freeze(model, cfg)
    train = examples(pattern, "train", args.seed + 5, args.train_rows, args.family)
    test = examples(pattern, "test", args.seed + 6, args.test_rows, args.family)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    t0, losses = time.time(), []
    for step in range(args.steps):
        idx = torch.randint(len(train), (args.batch_size,), generator=g).tolist()
        loss = model(build_batch([train[i] for i in idx], model.processor, cfg), mode="loss").loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    boxes = all(parse_box(ex.answer) for ex in test)  # box answers ("Where is ...?"): scored by where they point
    score = box_answers if boxes else (lambda m, exs: 100 * answer_accuracy(m, exs))
    own, other = score(model, test), score(model, about_other_images(test))
    return {"pattern": pattern, "family": args.family, "steps": args.steps, "rows": len(test),
            "answers": "boxes" if boxes else len({ex.answer for ex in test}),
            "metric": "box centre in the gold box's token cell %" if boxes else "acc %",
            "acc": own, "other_image_acc": other, "looks": own - other,
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "train_s": round(time.time() - t0)}


@torch.no_grad()
def box_answers(model, exs, batch_size: int = 32) -> float:
    """% of box answers whose centre falls in the token cell of the gold box's centre (the cell a crop or a refocus
    would have to pick; IoU is no guide for objects smaller than a cell)."""
    from lare.batch import build_batch

    grid = model.processor.token_pixels
    hits = 0
    for i in range(0, len(exs), batch_size):
        chunk = exs[i:i + batch_size]
        gen = model(build_batch(chunk, model.processor, model.cfg, prompt_only=True), mode="generate")
        for ex, answer in zip(chunk, gen.answers):
            got, gold = parse_box(answer, corners=True), parse_box(ex.answer)
            if got is None:
                continue
            cells = [ex.image.size[0] / grid, ex.image.size[1] / grid]
            cell = lambda b: tuple(int((b[k] + b[k + 2]) / 2 * cells[k]) for k in (0, 1))
            hits += cell(got) == cell(gold)
    return 100 * hits / len(exs)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tiny-qwen3-vl-pretrained")
    ap.add_argument("--pattern", action="append", help="question regex (repeatable; default: the two of PATTERNS)")
    ap.add_argument("--family", default="attribute", help="refocus family the questions come from (grounding: box answers)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--train-rows", type=int, default=2000, help="distinct training rows (batches are drawn from them)")
    ap.add_argument("--test-rows", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--freeze-vision", action="store_true", help="keep the pretrained vision tower fixed")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval_probe.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    patterns = args.pattern or list(PATTERNS.values())
    results = [probe(p, args) for p in patterns]
    print(f"{'questions':<40}{'answers':>8}{'acc %':>8}{'other image %':>15}{'looks':>8}{'loss':>7}")
    for r in results:
        print(f"{r['pattern']:<40}{r['answers']:>8}{r['acc']:>8.1f}{r['other_image_acc']:>15.1f}{r['looks']:>8.1f}"
              f"{r['final_loss']:>7.2f}")
    report = {"backbone": args.backbone, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
              "freeze_vision": args.freeze_vision,
              "train_rows": args.train_rows,
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
