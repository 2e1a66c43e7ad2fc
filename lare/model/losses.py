"""The training forward: a batch's teacher-forced sequence (prompt, latent slots, suffix) through the model, and the
loss terms of every paradigm. A term is in the result only when the batch has something for it to score; each is
weighted by its config weight in one place (`WEIGHTS`).

Shapes: B batch, S suffix columns, K latent slots, P visual tokens, D language-model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lare.batch import IGNORE, Batch
from lare.boxes import box_distribution
from lare.model.heads import info_nce
from lare.model.sequence import LatentRun, Prompt, VisualContext

LOSS_TERMS = ("answer_ce", "text_ce", "recon", "focus", "align", "pixel", "stop")
WEIGHTS = {"answer_ce": "answer_weight", "text_ce": "text_weight", "recon": "recon_weight", "focus": "focus_weight",
           "align": "align_weight", "pixel": "pixel_weight", "stop": "stop_weight"}  # term -> its MethodConfig field


@dataclass
class LossOutput:
    loss: torch.Tensor
    terms: dict[str, float]          # each loss term, detached (nan when it had nothing to score)
    logits: torch.Tensor | None      # [B, S, vocab]: predictions of the suffix tokens, when asked for
    num_tokens: int                  # supervised tokens


def compute_loss(model, batch: Batch, kv_cache: bool = True, return_logits: bool = False,
                 ablation: str = "none") -> LossOutput:
    """`model` is the LaReModel, `batch` a training batch (build_batch)."""
    prefix_len, n_slots = batch.prefix_len, batch.num_slots
    suffix_start, length = prefix_len + n_slots, batch.input_ids.shape[1]
    image_token_id = model.processor.image_token_id
    if n_slots == 0:  # no latents: the whole sequence in one pass
        prompt = Prompt(model.vlm, image_token_id, batch, length, kv_cache)
        h, suffix_hidden = prompt.hidden[:, prefix_len - 1], prompt.hidden[:, prefix_len:]
        latents = None
    else:
        prompt = Prompt(model.vlm, image_token_id, batch, prefix_len, kv_cache, want_attn=model.reads_lm_attention)
        latents = model.run_latents(prompt, prompt.positions[:, :, prefix_len:suffix_start], batch.slot_mask, ablation,
                                    gold_focus=_forced_focus(model, batch, prompt.visual))
        h, suffix_hidden = latents.h, prompt.feed(suffix_start, length).hidden

    # The hidden state before each suffix token predicts it.
    logits = model.vlm.lm_head(torch.cat([h[:, None], suffix_hidden[:, :-1]], 1))       # [B, S, vocab]
    labels = batch.labels[:, suffix_start:]
    supervised = labels != IGNORE
    if not supervised.any():
        raise ValueError(f"batch {batch.ids[:3]}...: no supervised tokens (empty answers?)")
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="none")
    ce = ce.view(labels.shape)
    answer = batch.answer_mask[:, suffix_start:]
    # Each averaged over its own tokens: a paradigm that writes a long rationale must not dilute its answer
    # (a mean over all tokens gave text_cot's answer a tenth of direct's weight).
    terms = {name: ce[mask].mean() for name, mask in (("answer_ce", answer), ("text_ce", supervised & ~answer))
             if mask.any()}
    if latents is not None:
        terms.update(_latent_terms(model, batch, prompt.visual, latents))

    method = model.cfg.method
    loss = sum(getattr(method, WEIGHTS[name]) * value for name, value in terms.items())
    scored = {k: float(terms[k].detach()) if k in terms else float("nan") for k in LOSS_TERMS}
    return LossOutput(loss, scored, logits if return_logits else None, int(supervised.sum()))


def _forced_focus(model, batch: Batch, visual: VisualContext) -> torch.Tensor | None:
    """Focus forcing (method.focus_forcing, training only): [B, K, P] box maps (uniform over each slot's box tokens)
    for a random share of the slots that have a box, zero rows elsewhere; None when off."""
    p = model.cfg.method.focus_forcing
    if not (model.training and p > 0 and model.paradigm == "lare" and batch.slot_has_box.any()):
        return None
    P = visual.mask.shape[1]
    box = box_distribution(batch.region_mask[..., :P]).to(visual.tokens.device, visual.tokens.dtype)  # [B, K, P]
    forced = batch.slot_has_box.to(box.device) & (torch.rand(box.shape[:2], device=box.device) < p)
    return box * forced[..., None]


def _latent_terms(model, batch: Batch, visual: VisualContext, latents: LatentRun) -> dict[str, torch.Tensor]:
    """The semantic-augmentation terms of the heads the config builds, over the latent slots that ran."""
    m = model.cfg.method
    z, refocus_map, ran = latents.z, latents.refocus_map, latents.slot_mask
    region = batch.region_mask.to(visual.tokens.dtype)                                              # [B, K, P]
    has_box = batch.slot_has_box & ran
    region_mean = torch.einsum("bkp,bpd->bkd", region, visual.tokens) / region.sum(-1, keepdim=True).clamp_min(1)
    if refocus_map is not None:  # no box annotated: the tokens the refocus selected
        selected = torch.einsum("bkp,bpd->bkd", refocus_map, visual.tokens)
        target = torch.where(batch.slot_has_box[..., None], region_mean, selected).detach()
        has_target = ran
    else:
        target, has_target = region_mean.detach(), has_box

    terms = {}
    if model.recon is not None and has_target.any():  # 1 - cos(D(z_t), sg(y_t))
        terms["recon"] = (1 - F.cosine_similarity(model.recon(z[has_target]), target[has_target], dim=-1)).mean()
    if refocus_map is not None and m.focus_weight > 0 and has_box.any():  # KL(box distribution || refocus)
        box = box_distribution(region)
        kl = (box * (box.clamp_min(1e-12).log() - refocus_map.clamp_min(1e-12).log())).sum(-1)
        terms["focus"] = kl[has_box].mean()
    if model.align is not None and int(has_target.sum()) >= 2:  # InfoNCE needs a second row as a negative
        terms["align"] = info_nce(model.align(z[has_target]), target[has_target], m.align_temperature)
    if model.pixel is not None and has_box.any():
        terms["pixel"] = (model.pixel(z[has_box]) - batch.region_pixels[has_box]).abs().mean()
    if model.stop is not None:  # stop after each sample's last slot, go on before it
        last = ran.long().cumsum(1) == ran.sum(1, keepdim=True)
        stop_target = (last & ran).to(latents.slot_hidden.dtype)
        logit = model.stop(latents.slot_hidden).squeeze(-1)
        terms["stop"] = F.binary_cross_entropy_with_logits(logit[ran], stop_target[ran])
    return terms
