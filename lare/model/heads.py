"""The small modules LaRe adds to a backbone: refocus, gated fusion, and the decoders of the
semantic-augmentation objectives. Shapes: B batch, P visual tokens, D language-model width,
H refocus heads, R = refocus width (H * head dim).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.profiler import record_function


def profiled(name: str):
    """A torch.profiler range (bench/latent_cost.py splits a latent step by them), entered only while a profiler
    runs: record_function costs about 6 us even when none does, a few percent of a latent step at the tiny presets."""
    return record_function(name) if torch.autograd._profiler_enabled() else contextlib.nullcontext()


class RMSNormFunction(torch.autograd.Function):
    """w * x / rms(x) over the last dim, as the Qwen RMSNorm modules compute it (the same operations in the same
    order: the output is bitwise theirs), with one backward node instead of their six. The latent loop normalises
    five times per step, and at the tiny presets each node's overhead outweighs its arithmetic.
    x [..., d] float32; w [d] or any shape that broadcasts to x's (per-head weights)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        n = x * r
        ctx.save_for_backward(n, r, w)
        return w * n

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        n, r, w = ctx.saved_tensors
        gn = g * w
        gx = r * (gn - n * (gn * n).mean(-1, keepdim=True))
        gw = (g * n).sum_to_size(w.shape) if ctx.needs_input_grad[1] else None
        return gx, gw, None


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The Qwen RMSNorm forward (in float32, scaled after the cast back): through RMSNormFunction when autograd
    records it, else as plain operations (an autograd.Function costs more than it saves without a backward)."""
    if x.dtype == torch.float32 and torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return RMSNormFunction.apply(x, w, eps)
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RefocusKV(NamedTuple):
    """Laid out once per forward for the per-step products: one bmm each over the B * H (sample, head) pairs, with
    no einsum permutes or matmul broadcasting (each a copy or view forward and a node backward, at every step)."""

    keys: torch.Tensor    # [B * H, head_dim, P]
    values: torch.Tensor  # [B * H, P, head_dim]


class Refocus(nn.Module):
    """Saliency of the P visual tokens from the current reasoning state, and the read-out r_t.

    scores:  s_t = (W_q h_t) . (W_k norm(V)) / sqrt(d)    [B, H, P]
    weights: softmax over the sample's visual tokens, optionally only the top-k (by head-mean weight)
    read:    r_t = norm(softmax(s_t) . W_v norm(V))        [B, R]

    Keys and values also carry where each token sits (Fourier features of its normalised grid position):
    the visual embeddings alone hardly say where they are, and questions do ("directly right of the red
    circle", "in the top-left quarter"); the position in r_t lets the next step's query start from there.

    The visual tokens are RMS-normalised first (as a cross-attention block normalises its keys and values):
    their scale is the vision merger's, far from the last hidden state's, and the read-out is normalised so
    that W_o r_t starts on the scale of h_t (an un-normalised read-out is drowned by h_t in z_t).
    """

    def __init__(self, d_model: int, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"refocus width {width} must be divisible by method.refocus_heads={heads}")
        self.heads, self.head_dim = heads, width // heads
        self.kv_norm = nn.RMSNorm(d_model)
        self.q = nn.Linear(d_model, width, bias=False)
        self.k = nn.Linear(d_model, width, bias=False)
        self.v = nn.Linear(d_model, width, bias=False)
        self.k_pos = nn.Linear(POSITION_FEATURES, width, bias=False)
        self.v_pos = nn.Linear(POSITION_FEATURES, width, bias=False)
        self.out_norm = nn.RMSNorm(width)

    def reset_parameters(self) -> None:
        """Projections at fan-in scale (std = fan_in^-1/2), whatever the width: the scores then start O(1). A fixed
        small std (0.02) suits a 3584-wide backbone but leaves a 64-wide one with near-uniform attention whose
        gradients (each projection's scales with the other's) stay small for hundreds of steps."""
        for linear in (self.q, self.k, self.v, self.k_pos, self.v_pos):
            nn.init.normal_(linear.weight, std=linear.weight.shape[1] ** -0.5)
        for norm in (self.kv_norm, self.out_norm):
            nn.init.ones_(norm.weight)

    def keys_values(self, V: torch.Tensor, pos: torch.Tensor) -> RefocusKV:
        """The image side, computed once per forward (it does not change across latent steps).
        pos [B, P, POSITION_FEATURES]: where each token sits."""
        B, P, _ = V.shape
        normed = self.kv_norm(V)
        k = (self.k(normed) + self.k_pos(pos)).view(B, P, self.heads, self.head_dim)
        v = (self.v(normed) + self.v_pos(pos)).view(B, P, self.heads, self.head_dim)
        return RefocusKV(k.permute(0, 2, 3, 1).reshape(B * self.heads, self.head_dim, P),
                         v.transpose(1, 2).reshape(B * self.heads, P, self.head_dim))

    def scores(self, h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """h [B, D], k [B * H, head_dim, P] -> [B, H, P]."""
        B = h.shape[0]
        q = self.q(h).view(B * self.heads, 1, self.head_dim)
        return torch.bmm(q, k).view(B, self.heads, -1) / math.sqrt(self.head_dim)

    @staticmethod
    def weights(scores: torch.Tensor, vmask: torch.Tensor, top_k: int = 0) -> torch.Tensor:
        """scores [B, H, P] -> attention weights [B, H, P], zero outside the sample's visual tokens."""
        scores = scores.masked_fill(~vmask[:, None, :], float("-inf"))
        if top_k and top_k < scores.shape[-1]:
            mean = scores.softmax(-1).mean(1)                                  # [B, P]
            keep = torch.zeros_like(vmask).scatter(1, mean.topk(top_k, dim=-1).indices, True) & vmask
            scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
        return scores.softmax(-1)

    def read(self, weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """weights [B, H, P], v [B * H, P, head_dim] -> r_t [B, R]."""
        B, H, P = weights.shape
        r = torch.bmm(weights.reshape(B * H, 1, P), v).view(B, -1)
        return rms_norm(r, self.out_norm.weight, self.out_norm.eps or torch.finfo(r.dtype).eps)  # = self.out_norm(r)


POSITION_BANDS = 4
POSITION_FEATURES = 4 * POSITION_BANDS  # sin and cos of x and y at each band


def position_features(grid_hw: torch.Tensor, P: int) -> torch.Tensor:
    """[B, P, POSITION_FEATURES] for the row-major merged token grid of each sample (grid_hw [B, 2]); the
    centre of token (i, j) is at ((j + 0.5) / w, (i + 0.5) / h), whatever the image's size and aspect."""
    B = grid_hw.shape[0]
    out = torch.zeros(B, P, POSITION_FEATURES, device=grid_hw.device)
    bands = math.pi * 2.0 ** torch.arange(POSITION_BANDS, device=grid_hw.device)
    for b in range(B):
        h, w = grid_hw[b].tolist()
        ys, xs = torch.meshgrid((torch.arange(h, device=grid_hw.device) + 0.5) / h,
                                (torch.arange(w, device=grid_hw.device) + 0.5) / w, indexing="ij")
        angles = torch.stack([xs.flatten(), ys.flatten()], -1)[..., None] * bands      # [h*w, 2, bands]
        out[b, : h * w] = torch.cat([angles.sin(), angles.cos()], -1).flatten(1)
    return out


class GatedFusion(nn.Module):
    """z_t = h_t + g_t * W_o r_t,  g_t = sigmoid(W_g [h_t; r_t])."""

    def __init__(self, d_model: int, width: int):
        super().__init__()
        self.out = nn.Linear(width, d_model, bias=False)
        self.gate = nn.Linear(d_model + width, d_model)

    def reset_parameters(self, std: float) -> None:
        """W_o at fan-in scale so that W_o r_t (r_t has unit RMS) is on h_t's scale from the start; the gate
        small, so g_t starts near one half."""
        nn.init.normal_(self.out.weight, std=self.out.weight.shape[1] ** -0.5)
        nn.init.normal_(self.gate.weight, std=std)
        nn.init.zeros_(self.gate.bias)

    def forward(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([h, r], dim=-1)))
        return h + g * self.out(r)


class ReconDecoder(nn.Module):
    """D: a latent back to the visual-embedding space it should describe (trained with 1 - cos)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class PixelDecoder(nn.Module):
    """Renders the region a latent looked at as a small RGB image [3, S, S] in [0, 1] (L1 to the crop)."""

    def __init__(self, d_model: int, size: int, channels: int = 32):
        super().__init__()
        if size % 8 or size < 8:
            raise ValueError(f"method.pixel_size={size} must be a multiple of 8")
        self.start, self.channels = size // 8, channels
        self.fc = nn.Linear(d_model, channels * self.start * self.start)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.GELU(),
            nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), nn.GELU(),
            nn.ConvTranspose2d(channels // 2, 3, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.channels, self.start, self.start)
        return torch.sigmoid(self.net(x))


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between matching rows of a and b [N, D]."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
