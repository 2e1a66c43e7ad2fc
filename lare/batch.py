"""Trace records -> validated examples -> padded batches laid out for each paradigm.

Every sequence has three parts, so one forward serves every paradigm:

    [left pad | prefix: prompt (+ <|lare_start|>) | K latent slots | suffix: the supervised text | right pad]

- direct:   suffix = "Answer: {answer}<|im_end|>"
- text_cot: suffix = every step as text with its box written as (x1,y1),(x2,y2) on the 0..1000 grid, then the answer
- crop:     like text_cot, and after each box the re-encoded crop of that box: <|vision_start|> crop tokens <|vision_end|>
- latent / lare at curriculum stage s: the first min(s, n) steps become c latent slots each; the final stage
  replaces every step by K slots. suffix = <|lare_end|> + the remaining steps + the answer.

The prefix is left-padded so every sample's latent slots sit in the same columns (one batched step each);
a sample with fewer slots than the batch's widest leaves its trailing slots inert (attention mask 0).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, fields

import torch
from PIL import Image, UnidentifiedImageError

from lare.boxes import BoxError, box_token_mask, check_box, crop_box
from lare.config import LATENT_PARADIGMS, Config
from lare.processor import LaReProcessor

IGNORE = -100


class TraceError(ValueError):
    """A trace record the model cannot use; the message names the record and the field."""


@dataclass
class Step:
    text: str
    box: list[float] | None


@dataclass
class Example:
    id: str
    image: Image.Image
    question: str
    choices: list[str]
    answer: str
    steps: list[Step]
    meta: dict = field(default_factory=dict)


def _load_image(rec: dict, where: str) -> Image.Image:
    data, uri = rec.get("image"), rec.get("image_uri")
    if isinstance(data, Image.Image):
        return data.convert("RGB")
    if data is None and uri:
        from lare.storage import read_bytes

        try:
            data = read_bytes(str(uri))
        except (OSError, ValueError) as e:
            raise TraceError(f"{where}: field 'image_uri': cannot read {uri!r}: {e}") from None
    if data is None or len(data) == 0:
        raise TraceError(f"{where}: field 'image': no image (neither image bytes nor image_uri)")
    try:
        image = Image.open(io.BytesIO(bytes(data)))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise TraceError(f"{where}: field 'image': not a readable image ({e})") from None
    return image.convert("RGB")


def example_from_record(rec: dict, max_steps: int, source: str = "") -> Example:
    """Validate one trace record (lare-method.md §4); errors name the source, the record id and the field."""
    rid = rec.get("id") or "?"
    where = f"{source + ': ' if source else ''}record {rid}"
    image = _load_image(rec, where)
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise TraceError(f"{where}: field 'question' is empty")
    answer = rec.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise TraceError(f"{where}: field 'answer' is empty")
    choices = [str(c) for c in (rec.get("choices") or [])]
    raw_steps = rec.get("steps") or []
    if len(raw_steps) > max_steps:
        raise TraceError(f"{where}: field 'steps' has {len(raw_steps)} steps, more than the configured maximum "
                         f"data.max_steps={max_steps}")
    steps = []
    for i, st in enumerate(raw_steps):
        text = (st or {}).get("text")
        if not isinstance(text, str) or not text.strip():
            raise TraceError(f"{where}: field 'steps[{i}].text' is empty")
        box = st.get("bbox")
        if box is not None:
            try:
                box = check_box(box, f"{where}: field 'steps[{i}].bbox'")
            except BoxError as e:
                raise TraceError(str(e)) from None
        steps.append(Step(text.strip(), box))
    meta = rec.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta) if meta.strip() else {}
    return Example(str(rid), image, question.strip(), choices, answer.strip(), steps, meta)


@dataclass
class Batch:
    """A padded batch. B samples, L columns, latent slots in columns [prefix_len, prefix_len + num_slots)."""

    ids: list[str]
    input_ids: torch.Tensor          # [B, L]
    attention_mask: torch.Tensor     # [B, L] 1 = real position
    mm_token_type_ids: torch.Tensor  # [B, L] 1 = image token
    labels: torch.Tensor             # [B, L] token to predict at each position, IGNORE elsewhere
    answer_mask: torch.Tensor        # [B, L] labels that belong to the answer (the rest is reasoning text)
    prefix_len: int
    num_slots: int
    slot_mask: torch.Tensor          # [B, K] real latent slots
    pixel_values: torch.Tensor       # [patches, C*T*p*p] every image, in sequence order, sample by sample
    image_grid_thw: torch.Tensor     # [N_img, 3]
    image_sample: torch.Tensor       # [N_img] the sample each image belongs to
    image_is_original: torch.Tensor  # [N_img] False for re-encoded crops
    grid_hw: torch.Tensor            # [B, 2] merged token grid of each sample's original image
    region_mask: torch.Tensor        # [B, K, P] visual tokens in the region of the step a slot stands for
    slot_has_box: torch.Tensor       # [B, K]
    region_pixels: torch.Tensor | None = None  # [B, K, 3, S, S] low-res crop of that region (pixel decoder)
    examples: list[Example] | None = None

    def to(self, device) -> "Batch":
        moved = {f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v) for f in fields(self)}
        return Batch(**moved)

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


def num_slots_for(n_steps: int, cfg: Config, stage: int | None) -> tuple[int, int]:
    """(latent slots, steps replaced) for a trace of n_steps at curriculum stage (None = final)."""
    m = cfg.method
    if stage is None or stage >= cfg.final_stage:
        if m.adaptive_stop:  # the stop head learns where a trace's reasoning ends
            return max(1, min(n_steps * m.latents_per_step, m.latent_steps)), n_steps
        return m.latent_steps, n_steps
    replaced = min(stage, n_steps)
    return replaced * m.latents_per_step, replaced


def slot_steps(n_steps: int, cfg: Config, stage: int | None = None) -> list[int | None]:
    """The trace step each latent slot stands for at a curriculum stage (None = final): the step whose box the
    focus loss supervises it with, and what evaluation scores its refocus against. None: no step replaced."""
    k, replaced = num_slots_for(n_steps, cfg, stage)
    return [(j * replaced) // k if replaced else None for j in range(k)]


def _region_pixels(image: Image.Image, box, size: int) -> torch.Tensor:
    crop = crop_box(image, box, min_side=4).resize((size, size), Image.BILINEAR)
    return torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1).float() / 255


def slots_at_stage(cfg: Config, stage: int | None) -> int:
    """The latent block width every batch of a stage gets, whatever its traces: under FSDP all ranks must
    run the same number of latent forwards."""
    if cfg.method.paradigm not in LATENT_PARADIGMS:
        return 0
    if stage is None or stage >= cfg.final_stage:
        return cfg.method.latent_steps
    return stage * cfg.method.latents_per_step


def build_batch(examples: list[Example], processor: LaReProcessor, cfg: Config,
                stage: int | None = None, prompt_only: bool = False, fixed_slots: bool = False) -> Batch:
    """Lay out a batch for cfg.method.paradigm. prompt_only: just the prefix (generation adds the rest).
    fixed_slots: the latent block is slots_at_stage() wide even when this batch's traces need fewer."""
    paradigm = cfg.method.paradigm
    latent_mode = paradigm in LATENT_PARADIGMS
    p = processor
    pv, grids = p.images([ex.image for ex in examples])
    n_vis = p.num_visual_tokens(grids)
    offsets = [0] + torch.cumsum(grids.prod(-1), 0).tolist()

    rows, images = [], []  # per sample: (prefix ids, k, suffix ids, suffix label kinds); images in order
    steps_of_slots = []
    for i, ex in enumerate(examples):
        images.append((i, True, pv[offsets[i]:offsets[i + 1]], grids[i]))
        prefix = p.prompt_ids(ex.question, ex.choices, n_vis[i])
        suffix: list[int] = []
        kinds: list[str] = []  # per suffix token: "text", "answer", or "" (not supervised)

        def add(ids, kind):
            suffix.extend(ids)
            kinds.extend([kind] * len(ids))

        k, replaced = 0, 0
        if latent_mode:
            prefix = prefix + [p.lare_start_id]
            if not prompt_only:
                k, replaced = num_slots_for(len(ex.steps), cfg, stage)
                add([p.lare_end_id], "")  # forced at inference, so not supervised
        if not prompt_only:
            for step in ex.steps[replaced:] if paradigm != "direct" else []:
                ids = p.step_ids(step.text, step.box)
                if paradigm == "crop" and step.box is not None:
                    cut = len(ids) - len(p.encode("\n"))
                    add(ids[:cut], "text")
                    cpv, cgrid = p.encode_crop(ex.image, step.box)
                    images.append((i, False, cpv, cgrid[0]))
                    add(p.image_ids(p.num_visual_tokens(cgrid)[0]), "")
                    add(ids[cut:], "text")
                else:
                    add(ids, "text")
            lead, ans = p.answer_ids(ex.answer)
            add(lead, "text")
            add(ans, "answer")
        steps_of_slots.append(slot_steps(len(ex.steps), cfg, stage) if k else [])
        rows.append((prefix, k, suffix, kinds))

    B = len(examples)
    P = max(len(r[0]) for r in rows)
    K = max([r[1] for r in rows] + ([slots_at_stage(cfg, stage)] if fixed_slots and not prompt_only else []))
    S = max(len(r[2]) for r in rows)
    L = P + K + S
    input_ids = torch.full((B, L), p.pad_id, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    answer_mask = torch.zeros(B, L, dtype=torch.bool)
    slot_mask = torch.zeros(B, K, dtype=torch.bool)
    for b, (prefix, k, suffix, kinds) in enumerate(rows):
        input_ids[b, P - len(prefix):P] = torch.tensor(prefix)
        attn[b, P - len(prefix):P] = 1
        input_ids[b, P:P + K] = p.latent_id
        attn[b, P:P + k] = 1
        slot_mask[b, :k] = True
        if suffix:
            input_ids[b, P + K:P + K + len(suffix)] = torch.tensor(suffix)
            attn[b, P + K:P + K + len(suffix)] = 1
        for j, kind in enumerate(kinds):
            if kind:
                labels[b, P + K + j] = suffix[j]
                answer_mask[b, P + K + j] = kind == "answer"
    mm = (input_ids == p.image_token_id).long()

    # Region supervision for each slot: the visual tokens of its step's box on the original image's grid.
    merge = p.merge_size
    grid_hw = torch.stack([grids[:, 1] // merge, grids[:, 2] // merge], dim=1)
    Pv = max(n_vis)
    region_mask = torch.zeros(B, K, Pv, dtype=torch.bool)
    has_box = torch.zeros(B, K, dtype=torch.bool)
    px = cfg.method.pixel_size
    region_pixels = torch.zeros(B, K, 3, px, px) if cfg.method.pixel_decoder and K else None
    for b, ex in enumerate(examples):
        gh, gw = grid_hw[b].tolist()
        for j, s in enumerate(steps_of_slots[b]):
            box = ex.steps[s].box if s is not None else None
            if box is None:
                continue
            region_mask[b, j, : gh * gw] = box_token_mask(box, gh, gw)
            has_box[b, j] = True
            if region_pixels is not None:
                region_pixels[b, j] = _region_pixels(ex.image, box, px)

    return Batch(
        ids=[ex.id for ex in examples], input_ids=input_ids, attention_mask=attn, mm_token_type_ids=mm,
        labels=labels, answer_mask=answer_mask, prefix_len=P, num_slots=K, slot_mask=slot_mask,
        pixel_values=torch.cat([im[2] for im in images]), image_grid_thw=torch.stack([im[3] for im in images]),
        image_sample=torch.tensor([im[0] for im in images]), image_is_original=torch.tensor([im[1] for im in images]),
        grid_hw=grid_hw, region_mask=region_mask, slot_has_box=has_box, region_pixels=region_pixels,
        examples=examples,
    )
