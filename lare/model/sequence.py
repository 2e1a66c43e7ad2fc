"""A batch's sequence through the language model, the part training and generation share: the visual context the
refocus reads, the decode state that grows a chunk of positions at a time, and `Prompt`, the one place a batch's
images are encoded and its prompt is run, for the loss (lare/model/losses.py) as for decoding (generate.py).

Shapes: B batch, L columns of the batch, P visual tokens of a sample's original image (padded to the batch's
largest), D language-model width, c positions appended at once, T positions so far, K latent slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule
from transformers import DynamicCache

from lare.batch import Batch
from lare.model.heads import RefocusKV, position_features, profiled, rms_norm

# ---- the backbone's pieces --------------------------------------------------------------------------------

class ImageFeatures(NamedTuple):
    per_image: list[torch.Tensor]         # [P_i, D] each image's visual tokens, after the merger
    deepstack: list[torch.Tensor] | None  # Qwen3-VL: per injected layer [sum P_i, D], image order


def has_deepstack(vlm) -> bool:
    """Qwen3-VL also adds visual features inside its first decoder layers (deepstack)."""
    return vlm.config.model_type == "qwen3_vl"


def encode_pixels(vlm, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> ImageFeatures:
    out = vlm.model.get_image_features(pixel_values, grid_thw)
    deepstack = [torch.cat(f) for f in out.deepstack_features] if has_deepstack(vlm) else None
    return ImageFeatures(list(out.pooler_output), deepstack)


def embed(vlm, input_ids: torch.Tensor, features: list[torch.Tensor], image_token_id: int) -> torch.Tensor:
    """Token embeddings [B, c, D] with the image features in place of the image tokens (in sequence order)."""
    embeds = vlm.get_input_embeddings()(input_ids)
    if features:
        image_mask = input_ids == image_token_id
        embeds = embeds.masked_scatter(image_mask[..., None], torch.cat(features).to(embeds.dtype))
    return embeds


def rope_positions(vlm, input_ids, mm_token_type_ids, grid_thw, attention_mask) -> torch.Tensor:
    """3-row M-RoPE positions [3, B, c] from the model's own rope-index helper."""
    positions, _ = vlm.model.get_rope_index(
        input_ids=input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=grid_thw,
        attention_mask=attention_mask)
    return positions


def _language_model(vlm, embeds, positions, mask, cache, visual_mask=None, deepstack=None, want_attn=False):
    kwargs = {}
    if deepstack is not None and visual_mask is not None and visual_mask.any():
        kwargs = {"visual_pos_masks": visual_mask, "deepstack_visual_embeds": deepstack}
    return vlm.model.language_model(
        inputs_embeds=embeds, position_ids=positions, attention_mask=mask, cache=cache,
        use_cache=cache is not None, output_attentions=want_attn, **kwargs)


# ---- the decode state -------------------------------------------------------------------------------------

class Decoded(NamedTuple):
    hidden: torch.Tensor            # [B, c, D] last-layer hidden states of the new positions
    attention: torch.Tensor | None  # [B, T] the last new position's attention over every position so far
                                    # (mean over layers and heads), when asked for


class DecodeState:
    """The growing sequence of a batch. With a KV cache each `append` runs only the new positions; without one
    (the naive reference, for tests and benchmarks) it re-runs everything so far. Same inputs, same outputs.

    Text positions appended to a cache (each latent step, each decoded token, the training suffix after the
    latents) go through `_text_positions` when the language model allows it (`_can_step_alone`): its layers' own
    weights, with none of the per-call machinery of the model's forward (mask building, rotary positions, output
    capture), which at the tiny presets costs as much as the layers."""

    def __init__(self, vlm, kv_cache: bool = True):
        self.vlm, self.kv_cache = vlm, kv_cache
        self.cache = DynamicCache(config=vlm.config.text_config) if kv_cache else None
        self.mask = None  # [B, T] attention mask of every position so far
        self.full = None  # naive mode: (embeds, positions, visual mask, deepstack dense) of every position so far
        self.lm = vlm.model.language_model
        self.step_alone = kv_cache and _can_step_alone(self.lm)
        self._layers = None  # the decoder layers as `_text_positions` runs them (_Layer), built once per forward

    def rotary(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary of positions [3, B, c] in the form `_text_positions` applies it: cos and a signed sin
        [B, c, 1, head_dim] (computed once for all K latent slots, whose positions are known before the loop)."""
        cos, sin = self.lm.rotary_emb(like, positions)
        half = sin.shape[-1] // 2
        # rotate_half(x) * sin == x.roll(half) * [-sin_1, sin_2], exactly (a sign moves from x to sin): one op
        # for the three of rotate_half (two slices, a negation, a concatenation), in forward and in backward
        return cos[:, :, None], torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)[:, :, None]

    def append(self, embeds, positions, mask, visual_mask=None, deepstack=None, want_attn=False,
               rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> Decoded:
        """embeds [B, c, D], positions [3, B, c], mask [B, c]; visual_mask [B, c] with deepstack rows for its
        True entries. `rope`: this chunk's cos and sin (DecodeState.rotary) when already computed."""
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], 1)
        # Not under autocast: its casts would reach the custom backward of Rotary/SwiGLU in other dtypes than
        # their forward saw (bf16 gradients against fp32 weights); the model's forward handles autocast itself.
        if (self.step_alone and visual_mask is None and not want_attn and self.cache.get_seq_length() > 0
                and not torch.is_autocast_enabled(embeds.device.type)):
            with profiled("lare.decoder"):
                hidden = self._text_positions(embeds, rope if rope is not None else self.rotary(positions, embeds))
            return Decoded(hidden, None)
        if self.kv_cache:
            out = _language_model(self.vlm, embeds, positions, self.mask, self.cache, visual_mask, deepstack, want_attn)
            hidden = out.last_hidden_state
        else:
            B, c, D = embeds.shape
            dense = None
            if has_deepstack(self.vlm):  # keep deepstack rows at their positions so any prefix can be re-run
                n = len(self.vlm.config.vision_config.deepstack_visual_indexes)
                dense = embeds.new_zeros(n, B, c, D)
                if visual_mask is not None and visual_mask.any():
                    dense[:, visual_mask] = torch.stack(deepstack)
            if visual_mask is None:
                visual_mask = torch.zeros(B, c, dtype=torch.bool, device=embeds.device)
            new = (embeds, positions, visual_mask, dense)
            if self.full is None:
                self.full = new
            else:
                self.full = tuple(None if a is None else torch.cat([a, b], dim=d)
                                  for a, b, d in zip(self.full, new, (1, 2, 1, 2)))
            e, p, v, ds = self.full
            ds_rows = list(ds[:, v]) if (ds is not None and v.any()) else None
            out = _language_model(self.vlm, e, p, self.mask, None, v if v.any() else None, ds_rows, want_attn)
            hidden = out.last_hidden_state[:, -c:]
        attention = None
        if want_attn:
            attention = torch.stack([a[:, :, -1, :] for a in out.attentions]).mean((0, 2))
        return Decoded(hidden, attention)

    def _text_positions(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B, c, D] (after a non-empty cache, with no deepstack rows: text, or a Qwen2.5 crop's image tokens,
        which the text model treats alike) -> last-layer hidden states [B, c, D], appending their keys and values
        to the cache.

        The same operations as the layers' forward, in the same order (the result is bitwise the model's), with
        fewer of them, which is what a step costs at these sizes, in forward and again in backward: positions
        kept as [B * c, D] rows (no views around each matmul), weights concatenated and transposed once per
        forward (q/k/v and gate/up each one matmul), q and k rotated as one tensor, every constant read once per
        forward. Mask and attention call are the ones the model's SDPA integration makes (one query: the padding
        row, or none when nothing is padded; several: causal and padding, the cache's heads repeated)."""
        if self._layers is None:
            with profiled("lare.fuse_weights"):
                self._layers = [_Layer.of(layer) for layer in self.lm.layers]
        B, c, D = x.shape
        cos, sin = rope                                                      # [B, c, 1, hd]
        if c > 1:
            cos, sin = cos.transpose(1, 2), sin.transpose(1, 2)              # [B, 1, c, hd]
        with profiled("lare.mask"):
            T = self.mask.shape[1]
            if c == 1:  # a single query sees every earlier position: only padding, if any, is masked
                attn_mask = None if bool(self.mask.all()) else self.mask.bool()[:, None, None, :]   # [B, 1, 1, T]
            else:  # query i sits at T - c + i
                causal = torch.arange(T, device=x.device) <= torch.arange(T - c, T, device=x.device)[:, None]
                attn_mask = self.mask.bool()[:, None, None, :] & causal                  # [B, 1, c, T]
        x = x.reshape(B * c, D)
        for L in self._layers:
            H, Hkv, hd = L.heads, L.kv_heads, L.head_dim
            y = rms_norm(x, L.in_norm, L.in_eps)
            qkv = y @ L.qkv if L.qkv_bias is None else torch.addmm(L.qkv_bias, y, L.qkv)
            # heads: q, then k, then v
            qkv = qkv.view(B, H + 2 * Hkv, 1, hd) if c == 1 else qkv.view(B, c, H + 2 * Hkv, hd).transpose(1, 2)
            qk, v = qkv[:, : H + Hkv], qkv[:, H + Hkv:]
            if L.qk_norm is not None:  # Qwen3: q_norm and k_norm, per head
                qk = rms_norm(qk, L.qk_norm, L.qk_eps)
            qk = rotary(qk, cos, sin)
            with profiled("lare.cache"):
                k, v = self.cache.update(qk[:, H:], v, L.index)              # [B, Hkv, T, hd]
            if attn_mask is None or H == Hkv:
                o = F.scaled_dot_product_attention(qk[:, :H], k, v, attn_mask=attn_mask, dropout_p=L.dropout,
                                                   scale=L.scaling, enable_gqa=H != Hkv)
            elif c == 1:  # the query heads of each key/value head as that head's queries: no repeat of the cache
                o = F.scaled_dot_product_attention(qk[:, :H].view(B, Hkv, H // Hkv, hd), k, v, attn_mask=attn_mask,
                                                   dropout_p=L.dropout, scale=L.scaling)
            else:
                k, v = (t[:, :, None].expand(-1, -1, H // Hkv, -1, -1).reshape(B, H, T, hd) for t in (k, v))
                o = F.scaled_dot_product_attention(qk[:, :H], k, v, attn_mask=attn_mask, dropout_p=L.dropout,
                                                   scale=L.scaling)
            # [B * c, H * hd]; for one position the heads are in order either way: (kv head, query of it)
            o = o.reshape(B, H * hd) if c == 1 else o.transpose(1, 2).reshape(B * c, H * hd)
            x = x + (o @ L.o if L.o_bias is None else torch.addmm(L.o_bias, o, L.o))
            y = rms_norm(x, L.post_norm, L.post_eps)
            if L.gate_up is None:  # wrapped (activation checkpointing), or not SiLU: the module itself
                y = L.mlp(y)
            else:
                y = swiglu(y, L.gate_up, L.down)
            x = x + y
        return rms_norm(x, self.lm.norm.weight, self.lm.norm.variance_epsilon).view(B, c, D)


# The text models whose layers `_text_positions` re-expresses, each checked against the model's forward by
# tests/core/test_model.py (both tiny presets); any other goes through the model's forward.
STEP_ALONE_MODELS = ("qwen2_5_vl_text", "qwen3_vl_text")


def _can_step_alone(lm) -> bool:
    """`_text_positions` knows these layers under PyTorch SDPA, with full attention. FSDP2 gathers a layer's
    parameters only around the layer's forward, so a sharded model goes through it."""
    cfg = lm.config
    return (cfg.model_type in STEP_ALONE_MODELS and cfg._attn_implementation == "sdpa"
            and all(t == "full_attention" for t in getattr(cfg, "layer_types", None) or ["full_attention"])
            and not any(isinstance(m, FSDPModule) for m in lm.modules())
            and all(hasattr(layer, "self_attn") and hasattr(layer.self_attn, "q_proj") for layer in lm.layers))


class _Layer(NamedTuple):
    """One decoder layer as `_text_positions` runs it: its weights as it multiplies by them (transposed, [in, out],
    what F.linear multiplies by, and side by side where one matmul does two or three projections) and its
    constants. Built from the parameters once per forward (gradients flow back to each); None where the layer
    does not have it."""

    index: int
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    dropout: float                    # attention dropout in training, as the layer applies it
    in_norm: torch.Tensor             # [D]
    in_eps: float
    post_norm: torch.Tensor           # [D]
    post_eps: float
    qkv: torch.Tensor                 # [D, (H + 2 Hkv) head_dim]
    qkv_bias: torch.Tensor | None     # [(H + 2 Hkv) head_dim]
    qk_norm: torch.Tensor | None      # [H + Hkv, 1, head_dim] Qwen3's q_norm and k_norm weights, per head
    qk_eps: float
    o: torch.Tensor                   # [H head_dim, D]
    o_bias: torch.Tensor | None       # [D]
    mlp: torch.nn.Module              # run as a module when wrapped (activation checkpointing)
    gate_up: torch.Tensor | None      # [D, 2 I]; None when the MLP is wrapped or not SiLU-gated
    down: torch.Tensor | None         # [I, D]

    @classmethod
    def of(cls, layer) -> "_Layer":
        attn, mlp = layer.self_attn, layer.mlp
        cfg = attn.config
        H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        qkv_bias = None if attn.q_proj.bias is None else torch.cat([p.bias for p in projections])
        qk_norm, qk_eps = None, 0.0
        if hasattr(attn, "q_norm"):
            qk_norm = torch.cat([attn.q_norm.weight.expand(H, -1), attn.k_norm.weight.expand(Hkv, -1)])[:, None]
            qk_eps = attn.q_norm.variance_epsilon  # k_norm's too: both are built from rms_norm_eps
        gate_up = down = None
        if ("gate_proj" in mlp._modules and cfg.hidden_act == "silu"
                and all(m.bias is None for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))):
            gate_up, down = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t(), mlp.down_proj.weight.t()
        norms = layer.input_layernorm, layer.post_attention_layernorm
        return cls(attn.layer_idx, H, Hkv, attn.head_dim, attn.scaling,
                   attn.attention_dropout if attn.training else 0.0,
                   norms[0].weight, norms[0].variance_epsilon, norms[1].weight, norms[1].variance_epsilon,
                   torch.cat([p.weight for p in projections]).t(), qkv_bias, qk_norm, qk_eps,
                   attn.o_proj.weight.t(), attn.o_proj.bias, mlp, gate_up, down)


class Rotary(torch.autograd.Function):
    """x * cos + roll(x) * signed sin (DecodeState.rotary) in one autograd node instead of four. The backward
    is what autograd computes for those four (g * cos plus the rolled-back g * sin), so gradients are bitwise
    the same; cos and sin are constants."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return x * cos + x.roll(x.shape[-1] // 2, -1) * sin

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return g * cos + (g * sin).roll(-(g.shape[-1] // 2), -1), None, None


class SwiGLU(torch.autograd.Function):
    """The Qwen MLP, down(silu(gate) * up), from y [N, D] and the transposed weights [D, 2I] (gate | up) and
    [I, D], in one autograd node instead of five, with the backward autograd computes for them."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        gate, up = (y @ gate_up).chunk(2, -1)
        act = F.silu(gate)
        h = act * up
        ctx.save_for_backward(y, gate_up, down, gate, up, act, h)
        return h @ down

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        y, gate_up, down, gate, up, act, h = ctx.saved_tensors
        g_h = g @ down.t()
        g_gate_up = torch.cat([torch.ops.aten.silu_backward(g_h * up, gate), g_h * act], -1)   # [N, 2I]
        return g_gate_up @ gate_up.t(), y.t() @ g_gate_up, h.t() @ g


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary of x [..., hd] (cos and signed sin from DecodeState.rotary); one node when autograd records it,
    plain operations otherwise (an autograd.Function costs more than it saves without a backward)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return Rotary.apply(x, cos, sin)
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


def swiglu(y: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate) * up) of y [N, D]; one node when autograd records it, plain operations otherwise."""
    if torch.is_grad_enabled() and (y.requires_grad or gate_up.requires_grad or down.requires_grad):
        return SwiGLU.apply(y, gate_up, down)
    gate, up = (y @ gate_up).chunk(2, -1)
    return (F.silu(gate) * up) @ down


class LatentRun(NamedTuple):
    """What K latent steps appended to a decode state (LaReModel.run_latents)."""

    h: torch.Tensor                   # [B, D] hidden state at each sample's last real slot: what follows predicts from it
    z: torch.Tensor                   # [B, K, D] the latent inputs fed back
    refocus_map: torch.Tensor | None  # [B, K, P] where each step looked (mean over refocus heads); lare only
    slot_hidden: torch.Tensor         # [B, K, D] last-layer hidden state at each slot
    slot_mask: torch.Tensor           # [B, K] the slots that ran (an adaptive stop may end a sample early)


# ---- the visual context and the prompt --------------------------------------------------------------------

@dataclass
class VisualContext:
    """What the refocus reads: the embeddings the language model received for each sample's image."""

    features: list[torch.Tensor]          # per image (crops too) [P_i, D]
    deepstack: list[torch.Tensor] | None  # Qwen3-VL: per injected layer [sum P_i, D], image order
    tokens: torch.Tensor                  # [B, P, D] each sample's original image tokens, padded
    mask: torch.Tensor                    # [B, P] real tokens
    grid_hw: torch.Tensor                 # [B, 2] merged grid (rows, cols)
    position_features: torch.Tensor       # [B, P, F] where each token sits in its image (refocus keys and values)
    columns: torch.Tensor                 # [B, P] the batch column each token is in, -1 for padding
    refocus_kv: RefocusKV | None = None   # the refocus keys and values of `tokens`, computed once per forward


def encode_images(vlm, batch: Batch, image_token_id: int) -> VisualContext:
    features, deepstack = encode_pixels(vlm, batch.pixel_values, batch.image_grid_thw)
    originals = [f for f, o in zip(features, batch.image_is_original.tolist()) if o]
    device = features[0].device
    sizes = [f.shape[0] for f in originals]
    n_visual, counts = max(sizes), torch.tensor(sizes, device=device)
    mask = torch.arange(n_visual, device=device) < counts[:, None]                          # [B, P]
    # One gather from the concatenated tokens (padding reads a zero row) rather than a write per sample: the
    # refocus reads these tokens, so each write was an autograd node of every lare step.
    flat = torch.cat([*originals, originals[0].new_zeros(1, originals[0].shape[-1])])       # [sum P_b + 1, D]
    starts = torch.cumsum(counts, 0) - counts
    index = torch.where(mask, starts[:, None] + torch.arange(n_visual, device=device), flat.shape[0] - 1)
    tokens = flat[index]                                                                    # [B, P, D]
    return VisualContext(features, deepstack, tokens, mask, batch.grid_hw,
                         position_features(batch.grid_hw, n_visual).to(tokens.dtype),
                         _original_image_columns(batch.input_ids, image_token_id, mask))


def _original_image_columns(input_ids: torch.Tensor, image_token_id: int, mask: torch.Tensor) -> torch.Tensor:
    """[B, P] column of each original-image token (the first image of each sample), -1 for padding."""
    columns = torch.full(mask.shape, -1, dtype=torch.long, device=input_ids.device)
    for b in range(mask.shape[0]):
        cols = (input_ids[b] == image_token_id).nonzero().flatten()[: int(mask[b].sum())]
        columns[b, : cols.numel()] = cols
    return columns


class Prompt:
    """A batch run through the language model to the end of its prompt (columns [0, prompt_len)): what the
    latent loop, the teacher-forced suffix or decoding continue from."""

    def __init__(self, vlm, image_token_id: int, batch: Batch, prompt_len: int, kv_cache: bool = True,
                 want_attn: bool = False):
        self.batch, self.image_token_id = batch, image_token_id
        self.visual = encode_images(vlm, batch, image_token_id)
        self.embeds = embed(vlm, batch.input_ids, self.visual.features, image_token_id)        # [B, L, D]
        self.positions = rope_positions(vlm, batch.input_ids, batch.mm_token_type_ids, batch.image_grid_thw,
                                        batch.attention_mask)                                   # [3, B, L]
        self.state = DecodeState(vlm, kv_cache)
        self.hidden, self.attention = self.feed(0, prompt_len, want_attn)  # [B, prompt_len, D], [B, prompt_len]

    def feed(self, start: int, end: int, want_attn: bool = False) -> Decoded:
        """Columns [start, end) of the batch, appended to the decode state."""
        visual_mask, deepstack = None, None
        if self.visual.deepstack is not None:
            image = self.batch.input_ids == self.image_token_id
            if image[:, start:end].any():
                visual_mask = image[:, start:end]
                rows = (image.flatten().cumsum(0) - 1).view(image.shape)[:, start:end][visual_mask]
                deepstack = [f[rows] for f in self.visual.deepstack]
        return self.state.append(self.embeds[:, start:end], self.positions[:, :, start:end],
                                 self.batch.attention_mask[:, start:end], visual_mask, deepstack, want_attn)
