"""Greedy generation with the KV cache for every paradigm, with an exact token account per sample.

direct / text_cot: prefill the prompt, decode.
latent / lare:     prefill the prompt (it ends with <|lare_start|>), K latent steps (fewer only when a
                   trained stop head ends a sample early, never more than method.max_latent_steps),
                   then <|lare_end|> is forced and the answer decoded.
crop:              decode; each time the model closes a box (<|box_end|>), the box is parsed, that region
                   of the original image is re-encoded by the vision tower and its tokens appended.
Boxes (text_cot, crop): after <|box_start|> decoding is held to the box grammar (data.box_grammar), as
                   tool-calling systems constrain a call's arguments: the model picks every coordinate,
                   the grammar only keeps the text parseable, so a crop is never lost to a malformed box.

Token account (every position a sample costs falls in exactly one bucket):
  visual       image tokens of the original image
  prompt_text  every other prompt position: template, question, options, <|vision_start/end|>, <|lare_start|>
  latent       latent positions
  generated    tokens produced by decoding (the final stop token included) and the forced <|lare_end|>
  crop_visual  positions appended by crops: <|vision_start|>, the crop's image tokens, <|vision_end|>
  total        the sum
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from lare.batch import Batch, slot_steps
from lare.boxes import box_distribution, box_token_mask
from lare.config import LATENT_PARADIGMS
from lare.model.sequence import Prompt, embed, encode_pixels, rope_positions
from lare.processor import format_box, parse_box

TOKEN_KEYS = ("visual", "prompt_text", "latent", "generated", "crop_visual", "total")


@dataclass
class Generation:
    ids: list[str]
    texts: list[str]                       # the decoded continuation after the prompt
    answers: list[str]                     # the answer extracted from it
    tokens: list[dict[str, int]]           # the token account, TOKEN_KEYS
    refocus: list[torch.Tensor | None]     # lare: [latent steps, grid rows, grid cols] attention per sample
    boxes: list[list[list[float]]]         # text_cot, crop: the boxes written, per sample (crop re-encoded each)
    latents: list[torch.Tensor | None] | None = None  # latent/lare: [steps used, D] the z_t fed back, per sample


@torch.no_grad()
def generate(model, batch: Batch, max_new_tokens: int | None = None, kv_cache: bool = True,
             ablation: str = "none") -> Generation:
    """`model` is the LaReModel (its forward, mode="generate", checks the ablation); `batch` is a prompt batch:
    build_batch(..., prompt_only=True).

    Under torch.distributed (FSDP2 shards every layer), all ranks must run the same forwards: decoding
    then stops only when every rank's samples are done, and in the crop paradigm the vision tower runs
    at each step on every rank (on a blank placeholder where a rank has no crop to encode)."""
    p, m, data = model.processor, model.cfg.method, model.cfg.data
    latent_mode = model.paradigm in LATENT_PARADIGMS
    budget = max_new_tokens or (data.max_answer_tokens if latent_mode else data.max_new_tokens)
    B = batch.size
    device = batch.input_ids.device
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1

    prompt = Prompt(model.vlm, p.image_token_id, batch, batch.input_ids.shape[1], kv_cache,
                    want_attn=model.reads_lm_attention)
    state, visual = prompt.state, prompt.visual
    h = prompt.hidden[:, -1]
    next_pos = prompt.positions.masked_fill(batch.attention_mask[None] == 0, -1).amax(dim=(0, 2)) + 1   # [B]

    n_visual = visual.mask.sum(1)
    account = {
        "visual": n_visual,
        "prompt_text": batch.attention_mask.sum(1) - n_visual,
        "latent": torch.zeros(B, dtype=torch.long, device=device),
        "generated": torch.zeros(B, dtype=torch.long, device=device),
        "crop_visual": torch.zeros(B, dtype=torch.long, device=device),
    }

    def append(feeds: list[list[int]], crops: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None):
        """Append each sample's new tokens (crop images included) in one forward; update h and positions."""
        nonlocal h
        c = max(len(f) for f in feeds)
        if c == 0:
            if not distributed:
                return
            c = 1  # a masked filler position: this rank is done but its peers are not
        ids = torch.full((B, c), p.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(B, c, dtype=torch.long, device=device)
        for b, f in enumerate(feeds):
            if f:
                ids[b, : len(f)] = torch.tensor(f, device=device)
                mask[b, : len(f)] = 1
        features, deepstack, grids = [], None, None
        if crops:
            order = sorted(crops)
            pv = torch.cat([crops[b][0] for b in order]).to(device)
            grids = torch.stack([crops[b][1] for b in order]).to(device)
            features, deepstack = encode_pixels(model.vlm, pv, grids)
        elif distributed and model.paradigm == "crop":  # keep the vision tower's collectives in step
            blank_pv, blank_grid = p.images([Image.new("RGB", (p.token_pixels, p.token_pixels))])
            encode_pixels(model.vlm, blank_pv.to(device), blank_grid.to(device))
        chunk_embeds = embed(model.vlm, ids, features, p.image_token_id)
        if crops:  # relative M-RoPE positions of the chunk from the model's helper, then shifted
            # only rows with new tokens: the helper fails on an empty row (a finished sample)
            live = mask.any(1).nonzero().squeeze(1)
            rel = torch.zeros(3, B, c, dtype=torch.long, device=device)
            rel[:, live] = rope_positions(model.vlm, ids[live], (ids[live] == p.image_token_id).long(), grids,
                                          mask[live]).to(rel.dtype)
        else:
            rel = torch.arange(c, device=device)[None, None, :].expand(3, B, c)
        pos = rel + next_pos[None, :, None]
        vis_mask = (ids == p.image_token_id) if deepstack is not None else None
        out = state.append(chunk_embeds, pos, mask, vis_mask, deepstack).hidden
        lengths = mask.sum(1)
        has = lengths > 0
        last = out[torch.arange(B, device=device), (lengths - 1).clamp_min(0)]
        h = torch.where(has[:, None], last, h)
        span = rel.masked_fill(mask[None] == 0, -1).amax(dim=(0, 2)) + 1
        next_pos.add_(torch.where(has, span, torch.zeros_like(span)))

    refocus = [None] * B
    latents = [None] * B
    if latent_mode:
        K = m.latent_steps
        slot_mask = torch.ones(B, K, dtype=torch.bool, device=device)
        slot_positions = (next_pos[:, None] + torch.arange(K, device=device))[None].expand(3, B, K)  # one per slot
        gold = _gold_focus(batch, visual, K, model.cfg) if ablation == "gold_focus" else None
        run = model.run_latents(prompt, slot_positions, slot_mask, ablation, adaptive=m.adaptive_stop, gold_focus=gold)
        h = run.h
        account["latent"] = run.slot_mask.sum(1)
        latents = [run.z[b, run.slot_mask[b]].float().cpu() for b in range(B)]
        next_pos.add_(account["latent"])
        if run.refocus_map is not None:
            for b in range(B):
                gh, gw = visual.grid_hw[b].tolist()
                refocus[b] = run.refocus_map[b, run.slot_mask[b], : gh * gw].reshape(-1, gh, gw).float().cpu()
        append([[p.lare_end_id]] * B)
        account["generated"] += 1

    out_ids: list[list[int]] = [[] for _ in range(B)]
    boxes: list[list[list[float]]] = [[] for _ in range(B)]
    finished = [False] * B
    open_box = [None] * B  # per sample: the text of the box being generated, None outside one
    for _ in range(budget):
        logits = model.vlm.lm_head(h)  # [B, V]
        if data.box_grammar and any(t is not None for t in open_box):
            logits = logits.clone()
            for b, partial in enumerate(open_box):
                if partial is not None and not finished[b]:
                    keep = torch.tensor(p.box_allowed(partial), device=device)
                    logits[b] = torch.full_like(logits[b], float("-inf")).index_copy(0, keep, logits[b, keep])
        tokens = logits.argmax(-1).tolist()
        feeds: list[list[int]] = [[] for _ in range(B)]
        crops = {}
        for b, tok in enumerate(tokens):
            if finished[b]:
                continue
            out_ids[b].append(tok)
            account["generated"][b] += 1
            if tok in p.stop_ids:
                finished[b] = True
                continue
            feeds[b] = [tok]
            gold = (_gold_box(batch.examples[b], len(boxes[b]))
                    if tok == p.box_start_id and ablation == "gold_boxes" else None)
            if gold is not None:  # the oracle writes the box and closes it
                written = p.encode(format_box(gold)) + [p.box_end_id]
                out_ids[b] += written
                feeds[b] += written
                account["generated"][b] += len(written)
                tok = p.box_end_id
            elif tok == p.box_start_id:
                open_box[b] = ""
            elif tok == p.box_end_id:
                open_box[b] = None
            elif open_box[b] is not None:
                open_box[b] += p.decode([tok])
            box = _last_box(out_ids[b], p) if tok == p.box_end_id else None
            if box is not None:
                boxes[b].append(box)
                if model.paradigm == "crop":  # thinking with images: re-encode the region, append its tokens
                    pv, grid = p.encode_crop(batch.examples[b].image, box)
                    crops[b] = (pv, grid[0])
                    inserted = p.image_ids(p.num_visual_tokens(grid)[0])
                    feeds[b] += inserted
                    account["crop_visual"][b] += len(inserted)
        if _all_done(all(finished), distributed, device):
            break
        append(feeds, crops)

    tokens_out = []
    for b in range(B):
        row = {k: int(account[k][b]) for k in TOKEN_KEYS[:-1]}
        row["total"] = sum(row.values())
        tokens_out.append(row)
    texts = [p.decode(ids) for ids in out_ids]
    return Generation(batch.ids, texts, [p.extract_answer(t) for t in texts], tokens_out, refocus, boxes, latents)


def _all_done(done: bool, distributed: bool, device) -> bool:
    if not distributed:
        return done
    flag = torch.tensor([1 if done else 0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def _gold_box(example, k: int) -> list[float] | None:
    """The trace's box of the k-th box-bearing step, None when the trace has no more boxes."""
    boxes = [st.box for st in example.steps if st.box is not None]
    return boxes[k] if k < len(boxes) else None


def _gold_focus(batch: Batch, visual, K: int, cfg) -> torch.Tensor:
    """[B, K, P] for the gold_focus oracle: each slot's map uniform over the visual tokens of the box of the trace
    step it stands for (lare.batch.slot_steps, the focus loss's target); zero where that step has no box."""
    B, P = visual.mask.shape
    out = torch.zeros(B, K, P, device=visual.mask.device)
    for b, ex in enumerate(batch.examples):
        boxes = [step.box for step in ex.steps]
        gh, gw = visual.grid_hw[b].tolist()
        for j, s in enumerate(slot_steps(len(boxes), cfg)[:K] if boxes else []):
            if s is not None and boxes[s] is not None:
                out[b, j, : gh * gw] = box_distribution(box_token_mask(boxes[s], gh, gw))
    return out


def _last_box(ids: list[int], p) -> list[float] | None:
    """The box between the last <|box_start|> and the <|box_end|> just generated, its corners in any order."""
    if p.box_start_id not in ids:
        return None
    start = len(ids) - 1 - ids[::-1].index(p.box_start_id)
    return parse_box(p.decode(ids[start + 1:-1]), corners=True)  # a zero-area box is grown by crop_box
