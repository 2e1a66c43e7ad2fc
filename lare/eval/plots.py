"""Evaluation plots (matplotlib, Agg: no display needed).

- accuracy_vs_tokens: one panel per benchmark, one point per model x ablation: headline accuracy against the mean
  inference tokens per answer (latent + generated + crop), the trade-off LaRe is about.
- refocus_heatmap: one figure per sample: the image with each latent step's refocus map over it (the map lives on
  the merged visual-token grid, which tiles the resized image; Qwen resizes each axis of the whole image, so it is
  stretched over the original image's extent), and below, where the model has a pixel decoder, what each latent
  step renders of the region it looked at.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

MARKERS = "osD^v<>P*X"


def accuracy_vs_tokens(results: list[dict], path: Path) -> Path:
    benches = list(dict.fromkeys(r["benchmark"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    ablations = list(dict.fromkeys(r["ablation"] for r in results))
    cols = min(3, len(benches))
    rows = math.ceil(len(benches) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, bench in zip(axes.flat, benches):
        for r in (r for r in results if r["benchmark"] == bench):
            x, y = r["tokens"]["inference"], r["accuracy"]
            c = colours(models.index(r["model"]) % 10)
            ax.scatter([x], [y], color=c, marker=MARKERS[ablations.index(r["ablation"]) % len(MARKERS)], s=60,
                       label=f"{r['model']}" + ("" if r["ablation"] == "none" else f" ({r['ablation']})"))
            ax.annotate(r["model"] if r["ablation"] == "none" else f"{r['model']}/{r['ablation']}", (x, y),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        primary = next(r["primary"] for r in results if r["benchmark"] == bench)
        ax.set_title(bench)
        ax.set_xlabel("mean inference tokens per answer")
        ax.set_ylabel(f"{primary} (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(benches):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1:len(benches)]:
        h, lab = ax.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=min(4, len(unique)), fontsize=8, frameon=False)
    fig.suptitle("Accuracy against inference tokens (latent + generated + crop)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def refocus_heatmap(image: bytes, maps: list, path: Path, title: str = "", regions: bytes = b"") -> Path:
    """maps: [steps][rows][cols] refocus weights; regions: a PNG strip of steps renders (pixel decoder), or b""."""
    img = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    maps = np.asarray(maps, dtype=np.float32)
    steps = maps.shape[0]
    renders = []
    if regions:
        strip = np.asarray(Image.open(io.BytesIO(regions)).convert("RGB"))
        size = strip.shape[0]
        renders = [strip[:, k * size:(k + 1) * size] for k in range(strip.shape[1] // size)]
    n_rows = 2 if renders else 1
    height, width = img.shape[:2]
    fig, axes = plt.subplots(n_rows, steps, figsize=(2.6 * steps, 2.6 * n_rows * max(0.5, height / width) + 0.6),
                             squeeze=False)
    for k in range(steps):
        ax = axes[0, k]
        ax.imshow(img, extent=(0, width, height, 0))
        m = maps[k]
        # Colour scale 0 .. max(peak, twice uniform): a flat map shows as a flat mid tone, not as all-hot.
        ax.imshow(m, extent=(0, width, height, 0), cmap="jet", alpha=0.45, interpolation="bilinear",
                  vmin=0.0, vmax=max(float(m.max()), 2.0 / m.size))
        ax.set_title(f"step {k + 1} (max {m.max():.2f})", fontsize=8)
        ax.axis("off")
        if renders:
            ax = axes[1, k]
            if k < len(renders):
                ax.imshow(renders[k])
                ax.set_title(f"decoded region {k + 1}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def refocus_figure(image: bytes, steps: list[dict], title: str = "") -> bytes:
    """PNG: for each latent step, the plain image with the step's strongest regions outlined, and beside it (never
    over it, so the colours asked about stay visible) its refocus map on a grey scale with a colourbar.
    steps: the `lare.refocus` entries of an answer (grid, weights, regions)."""
    img = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    height, width = img.shape[:2]
    n = max(1, len(steps))
    fig, axes = plt.subplots(n, 2, figsize=(6.4, 2.9 * n * max(0.6, height / width) + 0.5), squeeze=False)
    for k in range(n):
        plain, heat = axes[k]
        plain.imshow(img)
        plain.axis("off")
        if not steps:
            plain.set_title("no latent steps (this paradigm does not refocus)", fontsize=8)
            heat.axis("off")
            continue
        step = steps[k]
        for rank, (x0, y0, x1, y1) in enumerate(step["regions"]):
            plain.add_patch(plt.Rectangle((x0 * width, y0 * height), (x1 - x0) * width, (y1 - y0) * height,
                                          fill=False, edgecolor="white" if rank else "black", linewidth=2 - 0.5 * rank))
        plain.set_title(f"step {step['step']}: image, top regions", fontsize=8)
        weights = np.asarray(step["weights"], dtype=np.float32)
        shown = heat.imshow(weights, cmap="Greys", vmin=0.0, vmax=max(float(weights.max()), 2.0 / weights.size),
                            extent=(0, width, height, 0), interpolation="nearest")
        heat.set_title(f"refocus map {weights.shape[0]}x{weights.shape[1]} (max {weights.max():.2f})", fontsize=8)
        heat.set_xticks([])
        heat.set_yticks([])
        fig.colorbar(shown, ax=heat, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()
