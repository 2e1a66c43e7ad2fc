"""Pretraining the tiny backbone so that it sees: stage A of jobs/pretrain.py.

Stage A teaches the vision tower what is where, with dense labels from the scene generator: for every merged
visual token, the shape and the colour of the object that covers most of the token's cell (or background), and the
token's own row and column, and the box of the object the token belongs to (so that where a token sits, and
where exactly its object is, stay readable in what the language model receives: the
grounding of stage B and the boxes text_cot writes and crop predicts are read from it). The
scenes are drawn fresh at every step from (seed, step, index), so a resumed run sees the same data and no data
set is stored. Stage B (grounding of the whole model) is a plain run of the training job on the `grounding`
family of the refocus source; see jobs/pretrain.py.

Shapes: B scenes, G x G merged tokens per scene (7 x 7 for Qwen3-VL at 224 px), D vision output width.
"""

from __future__ import annotations

import dataclasses

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from lare.boxes import box_iou, ordered_corners
from pipelines.sources.refocus import COLOUR_NAMES, SHAPES, Scene, draw_object, render, tight_box

BACKGROUND_SHAPE, BACKGROUND_COLOUR = len(SHAPES), len(COLOUR_NAMES)
# A token is labelled with an object when the object puts at least this share of its own pixels in the token's
# cell (an object of <= 28 px spans at most 2 x 2 cells of 32 px, so its main cell always qualifies).
MIN_OBJECT_SHARE = 0.25
MAX_GRID = 16  # position heads: rows and columns of up to a 16 x 16 merged-token grid (the tower's position table)
POSITION_WEIGHT = 0.5  # position is easy (the tower adds absolute embeddings); it must not crowd out shape
# The box of a token's object, as an L1 loss on normalised corners: a cell is 0.14 wide, so the tower must say where
# the object sits inside its cell, which a box that text_cot writes or crop predicts needs and row/column do not give.
BOX_WEIGHT = 4.0


@dataclass
class StageA:
    steps: int = 5000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    hard_fraction: float = 0.3   # scenes drawn like the hard split (12-18 objects of 8-18 px)
    seed: int = 0
    init_from: str = ""          # a backbone folder (e.g. an earlier bundle) whose tower and probe heads start here
    log_every: int = 50
    checkpoint_every: int = 500


def draw_scene(rng: np.random.Generator, size: int = 224, hard: bool = False) -> Scene:
    """A random scene of the refocus benchmark's kind, without a question."""
    for _ in range(100):
        scene = Scene(rng, size, hard)
        try:
            scene.fill(scene.n_objects(), lambda *_: True)
            return scene
        except Exception:  # the layout did not fit: draw again from the same RNG
            continue
    raise RuntimeError("no scene layout found")


def object_index_map(scene: Scene) -> np.ndarray:
    """[size, size] int: 1 + the index of the object drawn at each pixel, 0 for background (objects never overlap)."""
    im = Image.new("L", (scene.size, scene.size), 0)
    draw = ImageDraw.Draw(im)
    for i, obj in enumerate(scene.objects, start=1):
        draw_object(draw, obj, i)
    return np.asarray(im, dtype=np.int64)


def token_labels(scene: Scene, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(shape [G*G], colour [G*G], main token of each object [N], box [G*G, 4]) in the row-major order of the
    merged tokens; box is the owning object's tight box, normalised (NaN on background).

    A token is labelled with the object that has the most pixels in its cell (if that is at least MIN_OBJECT_SHARE
    of the object). An object's main token is the token labelled with it where it has the most pixels; -1 when a
    larger neighbour wins every cell it touches (the per-object probe skips those)."""
    index = object_index_map(scene)
    n, cell = len(scene.objects), scene.size // grid
    cells = index[: grid * cell, : grid * cell].reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([np.bincount(c, minlength=n + 1) for c in cells])[:, 1:]            # [G*G, N] pixels per object
    totals = counts.sum(0).clip(min=1)
    best = counts.argmax(1)
    share = counts[np.arange(len(best)), best] / totals[best]
    owner = np.where((counts.max(1) > 0) & (share >= MIN_OBJECT_SHARE), best, -1)          # [G*G]
    shape = np.array([SHAPES.index(scene.objects[o]["shape"]) if o >= 0 else BACKGROUND_SHAPE for o in owner])
    colour = np.array([COLOUR_NAMES.index(scene.objects[o]["colour"]) if o >= 0 else BACKGROUND_COLOUR for o in owner])
    owned = np.where(owner[:, None] == np.arange(n)[None, :], counts, -1)                  # [G*G, N]
    main = np.where(owned.max(0) > 0, owned.argmax(0), -1)
    tight = np.array([tight_box(o) for o in scene.objects], dtype=np.float32).reshape(-1, 4) / scene.size  # [N, 4]
    box = np.where(owner[:, None] >= 0, tight[owner.clip(min=0)] if n else np.nan, np.nan).astype(np.float32)
    return shape, colour, main, box


class VisionProbe(nn.Module):
    """Linear read-outs of shape, colour, row, column and the object's box from each merged visual token: the dense
    training heads
    of stage A, and afterwards the probe that measures what a (frozen) vision tower knows."""

    def __init__(self, width: int):
        super().__init__()
        self.shape = nn.Linear(width, len(SHAPES) + 1)
        self.colour = nn.Linear(width, len(COLOUR_NAMES) + 1)
        self.row = nn.Linear(width, MAX_GRID)
        self.col = nn.Linear(width, MAX_GRID)
        self.box = nn.Linear(width, 4)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """tokens [B, G*G, D] -> logits of shape, colour, row, column, each [B, G*G, classes], and box [B, G*G, 4]."""
        return self.shape(tokens), self.colour(tokens), self.row(tokens), self.col(tokens), self.box(tokens)


def grid_positions(grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row [G*G], column [G*G]) of the merged tokens in row-major order."""
    index = torch.arange(grid * grid)
    return index // grid, index % grid


def scene_batch(processor, seed: int, step: int, batch_size: int, hard_fraction: float, grid: int):
    """Pixels and labels of batch `step`: deterministic in (seed, step)."""
    rng = np.random.default_rng([seed, 7, step])
    scenes = [draw_scene(rng, hard=bool(rng.random() < hard_fraction)) for _ in range(batch_size)]
    inputs = processor.image_processor(images=[render(s) for s in scenes], return_tensors="pt")
    labels = [token_labels(s, grid) for s in scenes]
    shape = torch.as_tensor(np.stack([lab[0] for lab in labels]))
    colour = torch.as_tensor(np.stack([lab[1] for lab in labels]))
    mains = [torch.as_tensor(lab[2]) for lab in labels]
    boxes = torch.as_tensor(np.stack([lab[3] for lab in labels]))                       # [B, G*G, 4], NaN on background
    return inputs["pixel_values"], inputs["image_grid_thw"], shape, colour, boxes, mains, scenes


def visual_tokens(vlm, pixel_values, grid_thw) -> torch.Tensor:
    """[B, G*G, D] merged visual tokens of same-size images."""
    out = vlm.model.get_image_features(pixel_values, grid_thw).pooler_output
    return torch.stack(list(out))


def grid_of(grid_thw: torch.Tensor, merge: int = 2) -> int:
    h, w = (int(v) // merge for v in grid_thw[0, 1:])
    if h != w:
        raise ValueError(f"stage A renders square images; got a {h}x{w} token grid")
    return h


def stage_a_loss(vlm, probe: VisionProbe, pixel_values, grid_thw, shape, colour, boxes):
    tokens = visual_tokens(vlm, pixel_values, grid_thw)
    shape_logits, colour_logits, row_logits, col_logits, box_pred = probe(tokens)
    row, col = (p.expand(len(tokens), -1) for p in grid_positions(grid_of(grid_thw)))
    loss_shape = F.cross_entropy(shape_logits.flatten(0, 1), shape.flatten())
    loss_colour = F.cross_entropy(colour_logits.flatten(0, 1), colour.flatten())
    loss_position = 0.5 * (F.cross_entropy(row_logits.flatten(0, 1), row.flatten())
                           + F.cross_entropy(col_logits.flatten(0, 1), col.flatten()))
    owned = ~boxes.isnan().any(-1)                                                          # [B, G*G]
    loss_box = F.l1_loss(box_pred[owned], boxes[owned]) if owned.any() else box_pred.sum() * 0
    loss = loss_shape + loss_colour + POSITION_WEIGHT * loss_position + BOX_WEIGHT * loss_box
    return loss, {"shape_ce": loss_shape.item(), "colour_ce": loss_colour.item(), "position_ce": loss_position.item(),
                  "box_l1": loss_box.item()}


@torch.no_grad()
def probe_accuracy(vlm, probe: VisionProbe, processor, *, seed: int, scenes: int = 256, hard_fraction: float = 0.3,
                   batch_size: int = 32) -> dict[str, float]:
    """Per-object shape and colour accuracy and box IoU at each object's main token, on held-out scenes (a seed
    stage A never trains on), and per-token accuracy including background."""
    vlm.eval()
    right = {"shape": 0, "colour": 0, "token_shape": 0, "position": 0, "box_iou": 0.0}
    objects = tokens_seen = 0
    grid = None
    for step in range(math.ceil(scenes / batch_size)):
        px, thw, shape, colour, boxes, mains, _ = scene_batch(processor, seed, step, batch_size, hard_fraction, grid or 7)
        if grid is None:
            grid = grid_of(thw)
        logits_shape, logits_colour, logits_row, logits_col, box_pred = probe(visual_tokens(vlm, px, thw))
        pred_shape, pred_colour = logits_shape.argmax(-1), logits_colour.argmax(-1)
        row, col = grid_positions(grid)
        right["token_shape"] += int((pred_shape == shape).sum())
        right["position"] += int(((logits_row.argmax(-1) == row) & (logits_col.argmax(-1) == col)).sum())
        tokens_seen += shape.numel()
        for b, main in enumerate(mains):
            main = main[main >= 0]  # objects that own a token (a few are covered by a larger neighbour's cells)
            right["shape"] += int((pred_shape[b, main] == shape[b, main]).sum())
            right["colour"] += int((pred_colour[b, main] == colour[b, main]).sum())
            right["box_iou"] += sum(box_iou(ordered_corners(p), g) for p, g in zip(box_pred[b, main].tolist(), boxes[b, main].tolist()))
            objects += len(main)
    vlm.train()
    return {"probe_shape_acc": right["shape"] / objects, "probe_colour_acc": right["colour"] / objects,
            "probe_token_shape_acc": right["token_shape"] / tokens_seen,
            "probe_token_position_acc": right["position"] / tokens_seen, "probe_box_iou": right["box_iou"] / objects,
            "probe_objects": objects}


def learning_rate(cfg: StageA, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def run_stage_a(vlm, processor, cfg: StageA, *, start_step: int = 0, probe: VisionProbe | None = None,
                optimizer: torch.optim.Optimizer | None = None, on_log=None, on_checkpoint=None) -> VisionProbe:
    """The stage-A loop: a plain PyTorch loop over generated batches. Only the vision tower (and the probe) learn.
    on_log(step, metrics) and on_checkpoint(step, probe, optimizer) are where Ray and MLflow plug in."""
    visual = vlm.model.visual
    probe = probe or VisionProbe(vlm.config.vision_config.out_hidden_size)
    params = list(visual.parameters()) + list(probe.parameters())
    optimizer = optimizer or torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    grid = None
    fresh = lambda: {"shape_ce": 0.0, "colour_ce": 0.0, "position_ce": 0.0, "box_l1": 0.0, "n": 0}  # noqa: E731
    t0, window = time.perf_counter(), fresh()
    for step in range(start_step, cfg.steps):
        px, thw, shape, colour, boxes, _, _ = scene_batch(processor, cfg.seed, step, cfg.batch_size, cfg.hard_fraction,
                                                          grid or 7)
        if grid is None:
            grid = grid_of(thw)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        loss, terms = stage_a_loss(vlm, probe, px, thw, shape, colour, boxes)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for k, v in terms.items():
            window[k] += v
        window["n"] += 1
        done = step + 1
        if on_log and (done % cfg.log_every == 0 or done == cfg.steps):
            n = window.pop("n")
            metrics = {k: v / n for k, v in window.items()}
            metrics.update(lr=learning_rate(cfg, step), scenes_per_s=n * cfg.batch_size / (time.perf_counter() - t0))
            on_log(done, metrics)
            t0, window = time.perf_counter(), fresh()
        if on_checkpoint and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            on_checkpoint(done, probe, optimizer)
    return probe


# ---------------------------------------------------------------------------------------------
# Ray at the edges: stage A as a one-worker Ray Train run (checkpoints, resume, MLflow from rank 0).


def save_stage_a(path, vlm, probe: VisionProbe, optimizer, step: int) -> None:
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {f"visual.{k}": v.detach().contiguous() for k, v in vlm.model.visual.state_dict().items()}
    state.update({f"probe.{k}": v.detach().contiguous() for k, v in probe.state_dict().items()})
    save_file(state, path / "stage_a.safetensors")
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    (path / "position.json").write_text(json.dumps({"step": step}))


def load_stage_a(path, vlm, probe: VisionProbe, optimizer=None) -> int:
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    state = load_file(path / "stage_a.safetensors")
    vlm.model.visual.load_state_dict({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")})
    probe.load_state_dict({k[len("probe."):]: v for k, v in state.items() if k.startswith("probe.")})
    if optimizer is not None and (path / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return json.loads((path / "position.json").read_text())["step"]


def warm_start(vlm, probe: VisionProbe, folder) -> None:
    """A warm restart from an earlier stage A: the vision tower of the backbone in `folder` and the probe heads it
    has (an older probe may lack the position or box heads). The language model and the tokenizer stay the preset's."""
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(folder)
    weights = {}
    for f in sorted(folder.glob("model*.safetensors")):
        weights.update(load_file(f))
    tower = {k.split("visual.", 1)[1]: v for k, v in weights.items() if ".visual." in f".{k}"}
    vlm.model.visual.load_state_dict(tower)  # strict: the same tower architecture, or an error that says what differs
    if (folder / "probe.safetensors").is_file():
        heads = load_file(folder / "probe.safetensors")
        probe.load_state_dict({k[len("probe."):]: v for k, v in heads.items() if k.startswith("probe.")}, strict=False)


def stage_a_per_worker(loop_config: dict) -> None:
    """Ray Train worker: build the tiny backbone, run (or resume) stage A, save the backbone with a trained tower."""
    import dataclasses
    import shutil
    import tempfile
    from pathlib import Path

    import ray.train

    from lare.backbone import load_backbone
    from lare.config import Config

    cfg = Config.from_dict(loop_config["config"])
    stage = StageA(**loop_config["stage_a"])
    torch.set_num_threads(max(1, cfg.train.cpus_per_worker))
    torch.manual_seed(stage.seed)
    vlm, processor = load_backbone(cfg.model)
    probe = VisionProbe(vlm.config.vision_config.out_hidden_size)
    if stage.init_from:
        warm_start(vlm, probe, Path(stage.init_from))
    optimizer = torch.optim.AdamW(list(vlm.model.visual.parameters()) + list(probe.parameters()), lr=stage.lr,
                                  betas=(0.9, 0.95), weight_decay=0.0)
    start = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            start = load_stage_a(d, vlm, probe, optimizer)
    logger = None
    if loop_config.get("mlflow_run_id"):
        from lare.tracking import RunLogger

        logger = RunLogger(loop_config["mlflow_uri"], loop_config["mlflow_run_id"], resumed=restored is not None)

    def on_log(step, metrics):
        if logger:
            logger.metrics(step, {f"stage_a/{k}": v for k, v in metrics.items()})
        print(f"stage A step {step}/{stage.steps} shape_ce {metrics['shape_ce']:.3f} colour_ce {metrics['colour_ce']:.3f} "
              f"box_l1 {metrics['box_l1']:.3f} "
              f"({metrics['scenes_per_s']:.0f} scenes/s)", flush=True)

    def on_checkpoint(step, probe, optimizer):
        tmp = Path(tempfile.mkdtemp(prefix="lare-stage-a-"))
        save_stage_a(tmp, vlm, probe, optimizer, step)
        ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                         checkpoint_dir_name=f"step_{step:07d}")
        shutil.rmtree(tmp, ignore_errors=True)

    probe = run_stage_a(vlm, processor, stage, start_step=start, probe=probe, optimizer=optimizer,
                        on_log=on_log, on_checkpoint=on_checkpoint)
    probes = probe_accuracy(vlm, probe, processor, seed=loop_config["probe_seed"])
    out = Path(loop_config["out"])
    vlm.save_pretrained(out)
    processor.save_pretrained(out)
    save_stage_a(out / "probe", vlm, probe, optimizer, stage.steps)
    (out / "probe" / "stage_a.json").write_text(__import__("json").dumps(
        {"stage_a": dataclasses.asdict(stage), **probes}, indent=1))
    if logger:
        logger.metrics(stage.steps, {f"stage_a/{k}": v for k, v in probes.items()})
        logger.close()
    ray.train.report({"step": stage.steps, **probes})


# ---------------------------------------------------------------------------------------------
# Probes of a finished backbone (the model card's numbers; tests re-measure the shape probe).


def vision_probes(model_dir, probe_dir, *, seed: int, scenes: int = 512) -> dict[str, float]:
    """Stage A's linear probe on the vision tower of `model_dir` (after stage B), on held-out scenes."""
    from pathlib import Path

    from lare.backbone import load_backbone
    from lare.config import load_config

    cfg = load_config(None, [f"model.backbone={model_dir}"])
    vlm, processor = load_backbone(cfg.model)
    probe = VisionProbe(vlm.config.vision_config.out_hidden_size)
    probe_file = Path(probe_dir) / ("stage_a.safetensors" if (Path(probe_dir) / "stage_a.safetensors").is_file()
                                    else "probe.safetensors")
    from safetensors.torch import load_file

    state = load_file(probe_file)
    probe.load_state_dict({k[len("probe."):]: v for k, v in state.items() if k.startswith("probe.")})
    return probe_accuracy(vlm, probe, processor, seed=seed, scenes=scenes)


@torch.no_grad()
def grounding_probes(model_dir, *, seed: int, rows: int = 192, batch_size: int = 32) -> dict[str, float]:
    """The grounding answers of a trained direct model (stage B's export, or a bundled backbone) on fresh scenes:
    "What is at <box>?" accuracy, "Where is ...?" mean IoU and share with IoU >= 0.5, "List the objects ..."
    exact-match rate, and one-hop lookups about the row's own image and about another's."""
    from lare.batch import build_batch
    from lare.model import LaReModel
    from lare.processor import parse_box
    from lare.answers import answers_match
    from pipelines.sources.refocus import generate

    from pathlib import Path

    from lare.config import load_config

    if (Path(model_dir) / "lare_config.json").is_file():  # stage B's export
        model = LaReModel.from_pretrained(model_dir)
    else:  # a bundled backbone: answered as a direct model, which adds nothing to it
        model = LaReModel.build(load_config(None, [f"model.backbone={model_dir}", "method.paradigm=direct"]))
    model.eval()
    cfg = model.cfg
    examples = [_example(generate("test", i, seed=seed, families=("grounding",)), f"probe-{i}") for i in range(rows)]
    by_kind: dict[str, list[float]] = {"what_is_at": [], "where_is_iou": [], "list_quarter": []}
    for i in range(0, rows, batch_size):
        chunk = examples[i:i + batch_size]
        gen = model(build_batch(chunk, model.processor, cfg, prompt_only=True), mode="generate")
        for ex, answer in zip(chunk, gen.answers):
            kind = ex.meta["grounding"]
            if kind == "where_is":
                box = parse_box(answer)
                by_kind["where_is_iou"].append(box_iou(box, parse_box(ex.answer)) if box else 0.0)
            else:
                by_kind[kind].append(float(answers_match(answer, ex.answer)))
    ious = by_kind["where_is_iou"]
    lookups = [_example(generate("test", i, seed=seed, families=("attribute",)), f"lookup-{i}") for i in range(rows)]
    return {"grounding_what_is_at_acc": float(np.mean(by_kind["what_is_at"])),
            "grounding_where_is_mean_iou": float(np.mean(ious)),
            "grounding_where_is_iou50": float(np.mean([v >= 0.5 for v in ious])),
            "grounding_list_exact": float(np.mean(by_kind["list_quarter"])), "grounding_rows": rows,
            # one-hop lookups ("What colour is the circle?"), and the same questions about another row's image:
            # the difference is what the language model reads from the image
            "lookup_acc": answer_accuracy(model, lookups, batch_size),
            "lookup_other_image_acc": answer_accuracy(model, about_other_images(lookups), batch_size)}


def about_other_images(examples: list) -> list:
    """The same questions, each about the next example's image: what a model still gets right came from the question."""
    return [dataclasses.replace(ex, image=examples[(i + 1) % len(examples)].image) for i, ex in enumerate(examples)]


@torch.no_grad()
def answer_accuracy(model, examples, batch_size: int = 32) -> float:
    """Share of examples (0-1) whose greedy answer matches the gold one."""
    from lare.answers import answers_match
    from lare.batch import build_batch

    right = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        gen = model(build_batch(chunk, model.processor, model.cfg, prompt_only=True), mode="generate")
        right += sum(answers_match(a, ex.answer) for a, ex in zip(gen.answers, chunk))
    return right / len(examples)


def _example(sample: dict, sample_id: str):
    """A generated sample as a model Example: the pipeline's own finish (boxes normalised, image encoded, record
    validated), without the Parquet round trip."""
    from lare.batch import example_from_record
    from pipelines.build import resolve_options
    from pipelines.process import finish

    record = finish(sample, source="refocus", source_id=sample_id, split="test", opts=resolve_options("refocus", {}))
    return example_from_record(record, max_steps=3)


# The shapes of a stage A record that names none: the set before the rectangle replaced the hexagon (2026-12-04).
LEGACY_SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")


def _other_shapes(entry: dict) -> str:
    """'' when a stage A record trained on today's shapes, else what differed (a warm restart changes the set)."""
    theirs = tuple(entry.get("shapes") or LEGACY_SHAPES)
    gone, new = [s for s in theirs if s not in SHAPES], [s for s in SHAPES if s not in theirs]
    return f"; scenes with a {', '.join(gone)} where the {', '.join(new)} is now" if gone or new else ""


def model_card(summary: dict) -> str:
    a, b = summary.get("stage_a", {}), summary.get("stage_b", {})
    pa, pb = a.get("probes", {}), b.get("probes", {})
    stage = summary.get("bundled", "b")
    pct = lambda v: f"{100 * v:.1f} %" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
    iou = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
    what = ("stage A only: the vision tower is pretrained, the language model keeps its random initialisation"
            if stage == "a" else "both stages")
    r = a.get("restart_of") or {}
    chain, link = [], r  # each warm restart names the stage A it started from, back to the one from random weights
    while link:
        chain.append(link)
        link = link.get("restart_of") or {}
    trained = lambda e: (f"vision tower + linear probe, batch {e.get('batch_size')}, lr {e.get('lr', 2e-3):g}"  # noqa: E731
                         if e.get("steps") else "carried over unchanged (0 steps, the probes re-measured)")
    earlier = "".join(
        f"| A, earlier ({'warm restart from the row above' if i < len(chain) - 1 else 'from random weights'}; shape probe "
        f"{pct(e.get('probes', e).get('probe_shape_acc'))}{_other_shapes(e)}) | {trained(e)} | {e.get('steps')} | "
        f"{e.get('wall_s')} s |\n"
        for i, e in reversed(list(enumerate(chain))))
    families = " and ".join(f"`{f.strip()}`" for f in str(b.get("families", "grounding")).split(","))
    stage_b_row = (f"| B | language model (vision tower fixed), paradigm `direct` on the {families} famil"
                   f"{'ies' if ' and ' in families else 'y'} "
                   f"({b.get('rows')} rows; `{b.get('config')}`) | {b.get('steps')} | {b.get('wall_s')} s |"
                   if b else "| B | not run for this copy | - | - |")
    # every command back to random weights, oldest first (each restart recorded the commands of the bundle it began from)
    commands = [c for e in reversed(chain) for c in e.get("commands", [])] + summary.get("commands", [])
    commands = list(dict.fromkeys(commands))
    a_what = ("the row above, carried over unchanged (0 steps: its tower and probe heads, the probes re-measured)"
              if r and not a.get("steps") else
              f"vision tower + linear probe, dense per-token shape, colour, row, column and object-box labels, batch "
              f"{a.get('batch_size')}, lr {a.get('lr', 2e-3):g}{', warm restart from the row above' if r else ''}")
    why_a = "" if stage == "b" else (
        " Stage B ran and did not teach the language model grounding at its budget, so it is not in this copy; its "
        "numbers are below, as measured (chance for \"What is at <box>?\" is 1 in 48 colour-shape pairs, 2.1 %)."
        if b else " Stage B has not been run on this copy's vision tower.")
    return f"""# tiny-qwen3-vl-pretrained

The bundled tiny backbone of LaRe: the `tiny-qwen3-vl` preset (Qwen3VLForConditionalGeneration, LM 2 layers x 64,
head dim 32, interleaved M-RoPE theta 50; vision tower 2 blocks x 64 with absolute positions; byte-level BPE
tokenizer trained offline on the generator's text, digits one by one as Qwen's) pretrained on generated scenes by `jobs/pretrain.py`, so that the paradigm comparison starts from a model
that sees. Nothing here was downloaded. Load it with `model.backbone=tiny-qwen3-vl-pretrained`.

**This copy holds {what}.**{why_a}

Reproduce: {'run, in order, the commands this copy was built by' if r else f'`python jobs/pretrain.py --bundle --bundle-from {stage}`'} (data seed {summary.get('seed', 0)}; probes on
scenes of seed + 1000, never trained on). This copy was built by: {'; '.join(f'`{c}`' for c in commands)}.
Wall times were measured on a shared 2-core CPU machine (other jobs were running).

| stage | what | steps | wall time |
|---|---|---|---|
{earlier}| A | {a_what} | {a.get('steps')} | {a.get('wall_s')} s |
{stage_b_row}

Probes on held-out scenes (70 % like the train split, 30 % like the hard split; per object at its main token):

| probe | after stage A | after stage B |
|---|---|---|
| per-object shape accuracy (stage A's linear probe) | {pct(pa.get('probe_shape_acc'))} | {pct(pb.get('probe_shape_acc'))} |
| per-object colour accuracy | {pct(pa.get('probe_colour_acc'))} | {pct(pb.get('probe_colour_acc'))} |
| per-token shape accuracy, background included | {pct(pa.get('probe_token_shape_acc'))} | {pct(pb.get('probe_token_shape_acc'))} |
| per-token row and column both right | {pct(pa.get('probe_token_position_acc'))} | {pct(pb.get('probe_token_position_acc'))} |
| per-object box IoU, read linearly from its main token | {iou(pa.get('probe_box_iou'))} | {iou(pb.get('probe_box_iou'))} |
| "What is at <box>?" answer accuracy | - | {pct(pb.get('grounding_what_is_at_acc'))} |
| "Where is the ...?" mean box IoU | - | {iou(pb.get('grounding_where_is_mean_iou'))} |
| "Where is the ...?" IoU >= 0.5 | - | {pct(pb.get('grounding_where_is_iou50'))} |
| "List the objects in the ... quarter." exact | - | {pct(pb.get('grounding_list_exact'))} |
| one-hop lookups ("What colour is the circle?"), own image | - | {pct(pb.get('lookup_acc'))} |
| the same lookups about another scene's image (what the question alone gives) | - | {pct(pb.get('lookup_other_image_acc'))} |

Files: `model.safetensors` and `config.json` (the backbone), the processor's files, `probe.safetensors` (stage A's
linear heads, for re-measuring the probe), `pretrain.json` (everything above, machine-readable).
"""
