"""LaReModel: a Hugging Face Qwen-VL backbone plus latent refocusing, one forward for every paradigm.

Latent step t (docs/method.md): h_t is the last-layer hidden state at the previous position;
  latent:  z_t = h_t                                            (Coconut)
  lare:    a_t = softmax(s_t) over the sample's visual tokens V  (learned cross-attention from h_t,
           or the language model's own attention), r_t = a_t . W_v V,
           z_t = h_t + g_t * W_o r_t,  g_t = sigmoid(W_g [h_t; r_t])
z_t is the input embedding of the next position. The prompt is encoded once into a KV cache and each
latent step appends one position to it: the loop is never a re-forward of the whole sequence, in training
(gradients flow through the cache) as in generation. `kv_cache=False` does the naive re-forward instead,
for tests and benchmarks only.

Everything runs inside `forward` (mode="loss" or mode="generate"): FSDP2 only gathers the root's
parameters around the wrapped module's forward. This file holds the model's own parts (its heads, building,
saving and loading, the latent step); the sequence it runs is in sequence.py, the training forward and its
losses in losses.py, decoding in generate.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lare.backbone import load_backbone
from lare.batch import Batch
from lare.config import LATENT_PARADIGMS, PARADIGMS, Config, ModelConfig
from lare.model.answer import Answer, answer
from lare.model.generate import generate
from lare.model.heads import GatedFusion, PixelDecoder, ReconDecoder, Refocus, profiled
from lare.model.losses import compute_loss
from lare.model.sequence import LatentRun, Prompt, VisualContext
from lare.processor import LaReProcessor

# Evaluation-time ablations, and the paradigms each means something for: without latents there is nothing to zero,
# and only lare has a refocus to make uniform or to shuffle. gold_boxes is an oracle for crop: each box it opens is
# written as the trace's box of that step and the crop is cut there, so crop's accuracy can be told apart from how
# well it predicts boxes (the examples carry the gold boxes as their steps).
ABLATIONS = {
    "none": PARADIGMS,
    "zero_latents": LATENT_PARADIGMS,
    "uniform_refocus": ("lare",),
    "shuffle_refocus": ("lare",),
    "gold_boxes": ("crop",),
    "gold_focus": ("lare",),
}


class LatentStep(NamedTuple):
    z: torch.Tensor                   # [B, D] the input embedding of the next position
    refocus_map: torch.Tensor | None  # [B, P] where the step looked (mean over refocus heads); None for `latent`


class LaReModel(nn.Module):
    def __init__(self, vlm: nn.Module, processor: LaReProcessor, cfg: Config):
        super().__init__()
        self.vlm, self.processor, self.cfg = vlm, processor, cfg
        m = cfg.method
        self.paradigm = m.paradigm
        d = self.text_config.hidden_size
        latent_mode = m.paradigm in LATENT_PARADIGMS
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

    # ---- what callers ask of the model ---------------------------------------------------------
    @property
    def text_config(self):
        return self.vlm.config.text_config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def reads_lm_attention(self) -> bool:
        """The refocus reads the language model's own attention to the image (method.refocus=lm_attention)."""
        return self.paradigm == "lare" and self.cfg.method.refocus == "lm_attention"

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, batch: Batch, mode: str = "loss", ablation: str = "none", **kwargs):
        """mode="loss": a training batch -> LossOutput (losses.compute_loss); mode="generate": a prompt batch
        -> Generation (generate.generate). `ablation` (one of ABLATIONS) changes what the latents carry."""
        run = {"loss": compute_loss, "generate": generate}.get(mode)
        if run is None:
            raise ValueError(f"mode must be 'loss' or 'generate', got {mode!r}")
        if ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {tuple(ABLATIONS)}, got {ablation!r}")
        return run(self, batch, ablation=ablation, **kwargs)

    def answer(self, images, questions, choices=None, max_new_tokens: int | None = None,
               return_refocus: bool = True, **kwargs) -> list[Answer]:
        """Answers to questions about images (PIL images, paths or bytes), each with its token account and, for
        lare, where each latent step looked (lare.model.answer)."""
        return answer(self, images, questions, choices, max_new_tokens=max_new_tokens,
                      return_refocus=return_refocus, **kwargs)

    # ---- the latent step ---------------------------------------------------------------------
    def latent_input(self, h: torch.Tensor, visual: VisualContext | None, lm_attention: torch.Tensor | None = None,
                     ablation: str = "none", gold: torch.Tensor | None = None) -> LatentStep:
        """h [B, D] -> the next position's input embedding z [B, D] and where the step looked.
        gold [B, P]: a map to read through instead of the model's own (its step's box, uniform over its tokens: the
        gold_focus oracle, or focus forcing in training; a zero row keeps the model's own). The returned map is
        always the model's own: where it would have looked, what the focus loss trains."""
        refocus_map = None
        if self.paradigm == "latent":
            z = h
        else:
            m = self.cfg.method
            if visual.refocus_kv is None:  # the image side of the refocus, once per forward
                visual.refocus_kv = self.refocus.keys_values(visual.tokens, visual.position_features)
            if m.refocus == "lm_attention":  # the LM's own attention from the current position to the image
                a = lm_attention.gather(1, visual.columns.clamp_min(0)) * visual.mask
                a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
                heads = a[:, None, :].expand(-1, self.refocus.heads, -1)
                if m.top_k:
                    heads = Refocus.weights(heads.clamp_min(1e-12).log(), visual.mask, m.top_k)
            else:
                heads = Refocus.weights(self.refocus.scores(h, visual.refocus_kv.keys), visual.mask, m.top_k)  # [B, H, P]
            if ablation == "uniform_refocus":
                heads = (visual.mask / visual.mask.sum(-1, keepdim=True))[:, None, :].expand_as(heads).to(h.dtype)
            elif ablation == "shuffle_refocus":
                heads = _shuffled(heads.mean(1), visual.grid_hw)[:, None, :].expand_as(heads)
            refocus_map = heads.mean(1)
            if gold is not None:  # read exactly where the trace step's box is
                has = gold.sum(-1) > 0
                heads = torch.where(has[:, None, None], gold[:, None, :].to(heads.dtype).expand_as(heads), heads)
            z = self.fusion(h, self.refocus.read(heads, visual.refocus_kv.values))
        if ablation == "zero_latents":
            z = torch.zeros_like(z)
        return LatentStep(z, refocus_map)

    def run_latents(self, prompt: Prompt, positions: torch.Tensor, slot_mask: torch.Tensor, ablation: str = "none",
                    adaptive: bool = False, gold_focus: torch.Tensor | None = None) -> LatentRun:
        """K latent steps after the prompt, one new position each: positions [3, B, K], slot_mask [B, K] the
        slots each sample has. `adaptive`: a trained stop head may end a sample early. gold_focus [B, K, P]: the
        gold_focus oracle's maps (latent_input)."""
        h, lm_attention = prompt.hidden[:, -1], prompt.attention
        n_prompt = None if lm_attention is None else lm_attention.shape[1]
        active = slot_mask[:, 0].clone()
        cos, sin = prompt.state.rotary(positions, h)  # [B, K, 1, head_dim]: every slot's rotary, before the loop
        # Every sample runs every slot (generation without a stop head, the last curriculum stage): the masking
        # below would select everything, so it is left out (two operations and their backward nodes per step).
        every = not (adaptive and self.stop is not None) and bool(slot_mask.all())
        zs, maps, slot_hidden, ran = [], [], [], []
        for t in range(slot_mask.shape[1]):
            active = active & slot_mask[:, t]
            with profiled("lare.refocus"):
                z, refocus_map = self.latent_input(h, prompt.visual, lm_attention, ablation,
                                                   None if gold_focus is None else gold_focus[:, t])
            if not every:
                z = torch.where(active[:, None], z, torch.zeros_like(z))
            out = prompt.state.append(z[:, None], positions[:, :, t:t + 1], active[:, None].long(),
                                      want_attn=self.reads_lm_attention, rope=(cos[:, t:t + 1], sin[:, t:t + 1]))
            h_slot = out.hidden[:, -1]
            h = h_slot if every else torch.where(active[:, None], h_slot, h)
            if out.attention is not None:  # the refocus reads the prompt's columns only
                lm_attention = torch.where(active[:, None], out.attention[:, :n_prompt], lm_attention)
            zs.append(z)
            maps.append(refocus_map)
            slot_hidden.append(h_slot)
            ran.append(active.clone())
            if adaptive and self.stop is not None:
                active = active & (torch.sigmoid(self.stop(h_slot)).squeeze(-1) <= 0.5)
        return LatentRun(h, torch.stack(zs, 1), None if maps[0] is None else torch.stack(maps, 1),
                         torch.stack(slot_hidden, 1), torch.stack(ran, 1))


def _shuffled(refocus_map: torch.Tensor, grid_hw: torch.Tensor) -> torch.Tensor:
    """Each sample gets the next sample's refocus map [B, P], resampled to its own grid (ablation).
    With a single sample, its own map point-mirrored (it looks at the opposite place)."""
    out = torch.zeros_like(refocus_map)
    B = refocus_map.shape[0]
    for b in range(B):
        src = (b + 1) % B
        sh, sw = grid_hw[src].tolist()
        th, tw = grid_hw[b].tolist()
        grid = refocus_map[src, : sh * sw].view(1, 1, sh, sw)
        if src == b:
            grid = grid.flip(-1, -2)
        grid = F.interpolate(grid, size=(th, tw), mode="nearest").flatten()
        out[b, : th * tw] = grid / grid.sum().clamp_min(1e-12)
    return out
