"""LaReModel: a Hugging Face Qwen-VL backbone plus latent refocusing, one forward for every paradigm.

Latent step t (docs/method.md): h_t is the last-layer hidden state at the previous position;
  latent:  z_t = h_t                                            (Coconut)
  lare:    a_t = softmax(s_t) over the sample's visual tokens V  (learned cross-attention from h_t,
           or the language model's own attention), r_t = a_t . W_v V,
           z_t = h_t + g_t * W_o r_t,  g_t = sigmoid(W_g [h_t; r_t])
z_t is the input embedding of the next position. The prefix is encoded once into a KV cache and each
latent step appends one position to it: the loop is never a re-forward of the whole sequence, in training
(gradients flow through the cache) as in generation. `kv_cache=False` does the naive re-forward instead,
for tests and benchmarks only.

Everything runs inside `forward` (mode="loss" or mode="generate"): FSDP2 only gathers the root's
parameters around the wrapped module's forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache

from lare.backbone import load_backbone
from lare.batch import IGNORE, Batch
from lare.config import Config, ModelConfig
from lare.model.heads import GatedFusion, PixelDecoder, ReconDecoder, Refocus, info_nce, position_features
from lare.processor import LaReProcessor

ABLATIONS = ("none", "zero_latents", "uniform_refocus", "shuffle_refocus")
LOSS_TERMS = ("answer_ce", "text_ce", "recon", "focus", "align", "pixel", "stop")


@dataclass
class LossOutput:
    loss: torch.Tensor
    terms: dict[str, float]          # each loss term, detached (nan when it had nothing to score)
    logits: torch.Tensor | None      # [B, S, vocab]: predictions of the suffix tokens, when asked for
    num_tokens: int                  # supervised tokens


@dataclass
class VisualContext:
    """What the refocus reads: the embeddings the language model received for each sample's image."""

    features: list[torch.Tensor]         # per image (crops too) [P_i, D]
    deepstack: list[torch.Tensor] | None  # Qwen3-VL: per injected layer [sum P_i, D], image order
    V: torch.Tensor                      # [B, P, D] original image tokens, padded
    vmask: torch.Tensor                  # [B, P]
    grid_hw: torch.Tensor                # [B, 2] merged grid (rows, cols)
    positions: torch.Tensor              # [B, P, F] where each visual token sits (refocus keys and values)
    refocus_kv: tuple | None = None      # the refocus keys and values of V, computed once per forward


class DecodeState:
    """The growing sequence of a batch. With a KV cache each `append` runs only the new positions;
    without one (naive reference) it re-runs everything so far. Same inputs, same outputs."""

    def __init__(self, model: "LaReModel", kv_cache: bool = True):
        self.model, self.kv_cache = model, kv_cache
        self.cache = DynamicCache(config=model.text_config) if kv_cache else None
        self.mask = None          # [B, T] attention mask of every position so far
        self.full = None          # naive mode: (embeds, positions, visual mask, deepstack dense)

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def append(self, embeds, positions, mask, vis_mask=None, deepstack=None, want_attn=False):
        """embeds [B, c, D], positions [3, B, c], mask [B, c]; vis_mask [B, c] with deepstack rows for its
        True entries. Returns (hidden [B, c, D], attention of the last position over all T positions [B, T])."""
        m = self.model
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], 1)
        if self.kv_cache:
            out = m._decode(embeds, positions, self.mask, self.cache, vis_mask, deepstack, want_attn)
            hidden = out.last_hidden_state
        else:
            B, c, D = embeds.shape
            dense = None
            if m.is_qwen3:  # keep deepstack rows at their positions so any prefix can be re-run
                n = len(m.vlm.config.vision_config.deepstack_visual_indexes)
                dense = embeds.new_zeros(n, B, c, D)
                if vis_mask is not None and vis_mask.any():
                    dense[:, vis_mask] = torch.stack(deepstack)
            vm = vis_mask if vis_mask is not None else torch.zeros(B, c, dtype=torch.bool, device=embeds.device)
            new = (embeds, positions, vm, dense)
            if self.full is None:
                self.full = new
            else:
                self.full = tuple(None if a is None else torch.cat([a, b], dim=d)
                                  for a, b, d in zip(self.full, new, (1, 2, 1, 2)))
            e, p, v, ds = self.full
            ds_rows = list(ds[:, v]) if (ds is not None and v.any()) else None
            out = m._decode(e, p, self.mask, None, v if v.any() else None, ds_rows, want_attn)
            hidden = out.last_hidden_state[:, -c:]
        attn = None
        if want_attn:  # mean over layers and heads of the last query row
            attn = torch.stack([a[:, :, -1, :] for a in out.attentions]).mean((0, 2))
        return hidden, attn


class LaReModel(nn.Module):
    def __init__(self, vlm: nn.Module, processor: LaReProcessor, cfg: Config):
        super().__init__()
        self.vlm, self.processor, self.cfg = vlm, processor, cfg
        m = cfg.method
        self.paradigm = m.paradigm
        self.is_qwen3 = vlm.config.model_type == "qwen3_vl"
        d = self.text_config.hidden_size
        latent_mode = m.paradigm in ("latent", "lare")
        self.refocus = self.fusion = self.recon = self.align = self.pixel = self.stop = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.model.seed + 1)
            if m.paradigm == "lare":
                width = m.refocus_dim or d
                self.refocus = Refocus(d, width, m.refocus_heads)
                self.fusion = GatedFusion(d, width)
            if latent_mode and m.recon_weight > 0:
                self.recon = ReconDecoder(d, m.decoder_hidden or d)
            if latent_mode and m.align_weight > 0:
                self.align = nn.Linear(d, d)
            if latent_mode and m.pixel_decoder:
                self.pixel = PixelDecoder(d, m.pixel_size)
            if latent_mode and m.adaptive_stop:
                self.stop = nn.Linear(d, 1)
            for module in (self.recon, self.align, self.stop):
                if module is not None:
                    for name, p in module.named_parameters():
                        if "norm" in name:
                            nn.init.ones_(p)
                        elif p.dim() > 1:
                            nn.init.normal_(p, std=0.02)
                        else:
                            nn.init.zeros_(p)
            if self.refocus is not None:
                self.refocus.reset_parameters()
                self.fusion.reset_parameters(std=0.02)
        self.to(next(vlm.parameters()).dtype)

    # ---- construction and persistence ------------------------------------------------------
    @classmethod
    def build(cls, cfg: Config, device: str | torch.device | None = None) -> "LaReModel":
        """Backbone (preset or local checkpoint) + LaRe heads. device="meta" allocates nothing (dry runs)."""
        return cls._on_backbone(cfg, cfg.model, device)

    @classmethod
    def _on_backbone(cls, cfg: Config, source: ModelConfig, device=None) -> "LaReModel":
        # lm_attention reads the language model's attention weights, which only the eager kernel returns
        attn = "eager" if cfg.method.refocus == "lm_attention" else None
        vlm, processor = load_backbone(source, attn_implementation=attn, device=device)
        with torch.device(device or "cpu"):
            return cls(vlm, processor, cfg)

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vlm.")}

    def save_pretrained(self, path: str | Path) -> None:
        """HF-style directory: the backbone (save_pretrained), the processor, the LaRe heads in
        safetensors and lare_config.json (the full Config)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.vlm.save_pretrained(path)
        self.processor.save_pretrained(path)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head_state_dict().items()}, path / "lare_heads.safetensors")
        (path / "lare_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> "LaReModel":
        path = Path(path)
        if not (path / "lare_config.json").is_file():
            raise FileNotFoundError(f"{path} is not a LaRe model directory (no lare_config.json)")
        data = json.loads((path / "lare_config.json").read_text())
        for key, value in overrides.items():  # e.g. method={"paradigm": ...} is not allowed: heads would not match
            data.setdefault(key.split(".")[0], {})[key.split(".", 1)[1]] = value
        cfg = Config.from_dict(data)
        model = cls._on_backbone(cfg, replace(cfg.model, backbone=str(path)))  # the saved backbone, not the one trained from
        heads = load_file(path / "lare_heads.safetensors")
        missing, unexpected = model.load_state_dict(heads, strict=False)
        missing = [k for k in missing if not k.startswith("vlm.")]
        if missing or unexpected:
            raise ValueError(f"{path}/lare_heads.safetensors does not match the config: missing {missing}, unexpected {unexpected}")
        return model

    # ---- backbone plumbing -----------------------------------------------------------------
    @property
    def text_config(self):
        return self.vlm.config.text_config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _decode(self, embeds, positions, mask, cache, vis_mask=None, deepstack=None, want_attn=False):
        kwargs = {}
        if self.is_qwen3 and vis_mask is not None and deepstack is not None and vis_mask.any():
            kwargs = {"visual_pos_masks": vis_mask, "deepstack_visual_embeds": deepstack}
        return self.vlm.model.language_model(
            inputs_embeds=embeds, position_ids=positions, attention_mask=mask, cache=cache,
            use_cache=cache is not None, output_attentions=want_attn, **kwargs)

    def encode_pixels(self, pixel_values, grid_thw) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Vision tower: per-image visual tokens [P_i, D] (after the merger) and Qwen3-VL's deepstack rows."""
        out = self.vlm.model.get_image_features(pixel_values, grid_thw)
        deepstack = [torch.cat(f) for f in out.deepstack_features] if self.is_qwen3 else None
        return list(out.pooler_output), deepstack

    def encode_images(self, batch: Batch) -> VisualContext:
        features, deepstack = self.encode_pixels(batch.pixel_values, batch.image_grid_thw)
        originals = [f for f, o in zip(features, batch.image_is_original.tolist()) if o]
        P = max(f.shape[0] for f in originals)
        V = features[0].new_zeros(len(originals), P, features[0].shape[-1])
        vmask = torch.zeros(len(originals), P, dtype=torch.bool, device=V.device)
        for b, f in enumerate(originals):
            V = V.index_put((torch.tensor([b], device=V.device), torch.arange(f.shape[0], device=V.device)), f)
            vmask[b, : f.shape[0]] = True
        return VisualContext(features, deepstack, V, vmask, batch.grid_hw,
                             position_features(batch.grid_hw, P).to(V.dtype))

    def embed(self, input_ids: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """Token embeddings with the image features in place of the image tokens (in sequence order)."""
        embeds = self.vlm.get_input_embeddings()(input_ids)
        image_mask = input_ids == self.processor.image_token_id
        if features:
            embeds = embeds.masked_scatter(image_mask[..., None], torch.cat(features).to(embeds.dtype))
        return embeds

    def rope_positions(self, input_ids, mm_token_type_ids, grid_thw, attention_mask) -> torch.Tensor:
        """3-row M-RoPE positions [3, B, L] from the model's own rope-index helper."""
        positions, _ = self.vlm.model.get_rope_index(
            input_ids=input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=grid_thw,
            attention_mask=attention_mask)
        return positions

    def deepstack_rows(self, ctx: VisualContext, input_ids, start: int, end: int):
        """(visual mask, deepstack rows) of columns [start, end) of a batch's full sequence."""
        if ctx.deepstack is None:
            return None, None
        vis = input_ids == self.processor.image_token_id
        index = (vis.flatten().cumsum(0) - 1).view(vis.shape)
        chunk = vis[:, start:end]
        if not chunk.any():
            return None, None
        rows = index[:, start:end][chunk]
        return chunk, [f[rows] for f in ctx.deepstack]

    # ---- the latent step ---------------------------------------------------------------------
    def latent_input(self, h: torch.Tensor, ctx: VisualContext, lm_attn: torch.Tensor | None = None,
                     image_positions: torch.Tensor | None = None, ablation: str = "none"):
        """h [B, D] -> (z [B, D], refocus weights [B, P] averaged over heads, or None for `latent`)."""
        weights = None
        if self.paradigm == "latent":
            z = h
        else:
            m = self.cfg.method
            if ctx.refocus_kv is None:  # the image side of the refocus, once per forward
                ctx.refocus_kv = self.refocus.keys_values(ctx.V, ctx.positions)
            if m.refocus == "lm_attention":  # the LM's own attention from the current position to the image
                a = lm_attn.gather(1, image_positions.clamp_min(0)) * ctx.vmask
                a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
                heads = a[:, None, :].expand(-1, self.refocus.heads, -1)
                if m.top_k:
                    heads = Refocus.weights(heads.clamp_min(1e-12).log(), ctx.vmask, m.top_k)
            else:
                heads = Refocus.weights(self.refocus.scores(h, ctx.refocus_kv[0]), ctx.vmask, m.top_k)  # [B, H, P]
            if ablation == "uniform_refocus":
                heads = (ctx.vmask / ctx.vmask.sum(-1, keepdim=True))[:, None, :].expand_as(heads).to(h.dtype)
            elif ablation == "shuffle_refocus":
                heads = _shuffled(heads.mean(1), ctx)[:, None, :].expand_as(heads)
            weights = heads.mean(1)
            z = self.fusion(h, self.refocus.read(heads, ctx.refocus_kv[1]))
        if ablation == "zero_latents":
            z = torch.zeros_like(z)
        return z, weights

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, batch: Batch, mode: str = "loss", **kwargs):
        if mode == "loss":
            return self.loss(batch, **kwargs)
        if mode == "generate":
            from lare.model.generate import generate

            return generate(self, batch, **kwargs)
        raise ValueError(f"mode must be 'loss' or 'generate', got {mode!r}")

    def run_latents(self, state: DecodeState, h, lm_attn, ctx, image_positions, positions, slot_mask,
                    ablation="none", adaptive=False):
        """K latent steps, one new position each. positions [3, B, K] (or callable t -> [3, B, 1]).
        Returns h (carried to each sample's last real slot), z [B, K, D], weights [B, K, P] | None,
        slot hidden [B, K, D], the slot mask actually used [B, K] (adaptive stop may end samples early)."""
        want_attn = self.cfg.method.refocus == "lm_attention" and self.paradigm == "lare"
        K = slot_mask.shape[1]
        active = slot_mask[:, 0].clone() if K else None
        zs, ws, hs, used = [], [], [], []
        for t in range(K):
            active = active & slot_mask[:, t]
            z, w = self.latent_input(h, ctx, lm_attn, image_positions, ablation)
            z = torch.where(active[:, None], z, torch.zeros_like(z))
            pos = positions(t) if callable(positions) else positions[:, :, t:t + 1]
            out, attn = state.append(z[:, None], pos, active[:, None].long(), want_attn=want_attn)
            h_slot = out[:, -1]
            h = torch.where(active[:, None], h_slot, h)
            if attn is not None:
                lm_attn = torch.where(active[:, None], attn[:, :lm_attn.shape[1]], lm_attn)
            zs.append(z)
            ws.append(w)
            hs.append(h_slot)
            used.append(active.clone())
            if adaptive and self.stop is not None:
                active = active & (torch.sigmoid(self.stop(h_slot)).squeeze(-1) <= 0.5)
        stack = lambda xs: torch.stack(xs, 1) if xs else None  # noqa: E731
        weights = stack(ws) if ws and ws[0] is not None else None
        used = stack(used) if used else slot_mask
        return h, stack(zs), weights, stack(hs), used

    def loss(self, batch: Batch, kv_cache: bool = True, return_logits: bool = False, ablation: str = "none") -> LossOutput:
        m = self.cfg.method
        ctx = self.encode_images(batch)
        embeds = self.embed(batch.input_ids, ctx.features)
        positions = self.rope_positions(batch.input_ids, batch.mm_token_type_ids, batch.image_grid_thw, batch.attention_mask)
        P, K = batch.prefix_len, batch.num_slots
        L = batch.input_ids.shape[1]
        state = DecodeState(self, kv_cache)
        want_attn = m.refocus == "lm_attention" and self.paradigm == "lare" and K > 0
        image_positions = _image_positions(batch.input_ids, self.processor.image_token_id, ctx.vmask)

        if K == 0:  # no latents: the whole sequence in one pass
            vis, ds = self.deepstack_rows(ctx, batch.input_ids, 0, L)
            hidden, _ = state.append(embeds, positions, batch.attention_mask, vis, ds)
            h, suffix_hidden = hidden[:, P - 1], hidden[:, P:]
            zs = weights = slot_hidden = None
            slot_mask = batch.slot_mask
        else:
            vis, ds = self.deepstack_rows(ctx, batch.input_ids, 0, P)
            hidden, lm_attn = state.append(embeds[:, :P], positions[:, :, :P], batch.attention_mask[:, :P], vis, ds, want_attn)
            h, zs, weights, slot_hidden, slot_mask = self.run_latents(
                state, hidden[:, -1], lm_attn, ctx, image_positions, positions[:, :, P:P + K], batch.slot_mask, ablation)
            vis, ds = self.deepstack_rows(ctx, batch.input_ids, P + K, L)
            suffix_hidden, _ = state.append(embeds[:, P + K:], positions[:, :, P + K:], batch.attention_mask[:, P + K:], vis, ds)

        # Cross-entropy on the suffix: the hidden state before each token predicts it.
        pred = torch.cat([h[:, None], suffix_hidden[:, :-1]], 1)                  # [B, S, D]
        labels = batch.labels[:, P + K:]
        answer = batch.answer_mask[:, P + K:]
        logits = self.vlm.lm_head(pred)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="none").view(labels.shape)
        supervised = labels != IGNORE
        if not supervised.any():
            raise ValueError(f"batch {batch.ids[:3]}...: no supervised tokens (empty answers?)")
        zero = ce.sum() * 0
        terms = {"answer_ce": ce[answer].mean() if answer.any() else zero,
                 "text_ce": ce[supervised & ~answer].mean() if (supervised & ~answer).any() else zero}
        # Each averaged over its own tokens: a paradigm that writes a long rationale must not dilute its answer
        # (a mean over all tokens gave text_cot's answer a tenth of direct's weight).
        loss = m.answer_weight * terms["answer_ce"] + m.text_weight * terms["text_ce"]
        nan = float("nan")
        scored = {"answer_ce": bool(answer.any()), "text_ce": bool((supervised & ~answer).any())}

        if K > 0:
            extra = self._latent_losses(batch, ctx, zs, weights, slot_hidden, slot_mask)
            for name, (value, weight) in extra.items():
                terms[name] = value
                scored[name] = value is not None
                if value is not None:
                    loss = loss + weight * value
        out_terms = {k: (float(terms[k].detach()) if scored.get(k) else nan) for k in LOSS_TERMS}
        return LossOutput(loss, out_terms, logits if return_logits else None, int(supervised.sum()))

    def _latent_losses(self, batch, ctx, zs, weights, slot_hidden, slot_mask):
        """The semantic-augmentation terms over the real latent slots: name -> (value or None, weight)."""
        m = self.cfg.method
        region = batch.region_mask.to(ctx.V.dtype)                                 # [B, K, P]
        has_box = batch.slot_has_box & slot_mask
        region_mean = torch.einsum("bkp,bpd->bkd", region, ctx.V) / region.sum(-1, keepdim=True).clamp_min(1)
        if weights is not None:  # no box annotated: the tokens the refocus selected
            selected = torch.einsum("bkp,bpd->bkd", weights, ctx.V)
            target = torch.where(batch.slot_has_box[..., None], region_mean, selected).detach()
            has_target = slot_mask
        else:
            target, has_target = region_mean.detach(), has_box
        out = {}
        if self.recon is not None:
            rec = None
            if has_target.any():
                rec = (1 - F.cosine_similarity(self.recon(zs[has_target]), target[has_target], dim=-1)).mean()
            out["recon"] = (rec, m.recon_weight)
        if weights is not None and m.focus_weight > 0:
            focus = None
            if has_box.any():
                box_dist = region / region.sum(-1, keepdim=True).clamp_min(1)
                kl = (box_dist * (box_dist.clamp_min(1e-12).log() - weights.clamp_min(1e-12).log())).sum(-1)
                focus = kl[has_box].mean()
            out["focus"] = (focus, m.focus_weight)
        if self.align is not None:
            align = None
            if int(has_target.sum()) >= 2:
                align = info_nce(self.align(zs[has_target]), target[has_target], m.align_temperature)
            out["align"] = (align, m.align_weight)
        if self.pixel is not None:
            pix = None
            if has_box.any():
                pix = (self.pixel(zs[has_box]) - batch.region_pixels[has_box]).abs().mean()
            out["pixel"] = (pix, m.pixel_weight)
        if self.stop is not None:
            last = slot_mask.long().cumsum(1) == slot_mask.sum(1, keepdim=True)
            target_stop = (last & slot_mask).to(slot_hidden.dtype)
            logit = self.stop(slot_hidden).squeeze(-1)
            stop = F.binary_cross_entropy_with_logits(logit[slot_mask], target_stop[slot_mask])
            out["stop"] = (stop, m.stop_weight)
        return out


def _image_positions(input_ids: torch.Tensor, image_token_id: int, vmask: torch.Tensor) -> torch.Tensor:
    """[B, P] column of each original-image token (the first image of each sample), -1 for padding."""
    B, P = vmask.shape
    out = torch.full((B, P), -1, dtype=torch.long, device=input_ids.device)
    for b in range(B):
        cols = (input_ids[b] == image_token_id).nonzero().flatten()[: int(vmask[b].sum())]
        out[b, : cols.numel()] = cols
    return out


def _shuffled(weights: torch.Tensor, ctx: VisualContext) -> torch.Tensor:
    """Each sample gets the next sample's refocus map, resampled to its own grid (ablation).
    With a single sample, its own map point-mirrored (it looks at the opposite place)."""
    B, P = weights.shape
    out = torch.zeros_like(weights)
    for b in range(B):
        src = (b + 1) % B
        sh, sw = ctx.grid_hw[src].tolist()
        th, tw = ctx.grid_hw[b].tolist()
        grid = weights[src, : sh * sw].view(1, 1, sh, sw)
        if src == b:
            grid = grid.flip(-1, -2)
        grid = F.interpolate(grid, size=(th, tw), mode="nearest").flatten()
        out[b, : th * tw] = grid / grid.sum().clamp_min(1e-12)
    return out
