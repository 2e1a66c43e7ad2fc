"""Vision-language backbones: Qwen2.5-VL and Qwen3-VL from a local checkpoint, or the same classes
built from tiny presets with random weights (tests, the laptop demo). Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from lare.config import ConfigError, ModelConfig
from lare.processor import LaReProcessor, tiny_tokenizer

MODEL_CLASSES = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen3_vl": Qwen3VLForConditionalGeneration,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# The tiny presets start from random weights at fan-in scale (std = width^-1/2), not the 0.02 of the real
# checkpoints' configs: at width 64, std 0.02 gives near-uniform attention whose gradients stay small for
# hundreds of steps, and the demo's budget is a few hundred steps.
TINY_TEXT_INIT = 64 ** -0.5

# Rotary positions that tell rows and columns apart. M-RoPE gives each axis (time, row, column) its own
# frequencies; with the real configs' theta and a tiny head the image axes only get the slowest ones (a head dim
# of 16 with theta 1e4 turned 8 columns by 0.02 rad in all: no left and right). The tiny presets choose head dim,
# sections and theta so that every pair of distinct rows and of distinct columns of a 16 x 16 token grid is at
# least 0.5 rad apart (chord of the rotation, `rope_grid_separation`), as the real Qwen3-VL's interleaved layout is
# (0.88 rad rows, 0.70 columns). Qwen2.5-VL's layout is not interleaved (the columns always get the slowest
# frequencies), so its tiny preset needs a small theta; the real Qwen2.5-VL separates neither axis through RoPE
# (0.05 rad rows, 0.0002 columns) and locates through its vision tower. docs/method.md has the numbers.
TINY_QWEN25_ROPE = {"rope_type": "default", "rope_theta": 8.0, "mrope_section": [1, 2, 5]}              # head dim 16
TINY_QWEN3_ROPE = {"rope_type": "default", "rope_theta": 50.0, "mrope_section": [4, 6, 6], "mrope_interleaved": True}  # head dim 32


def _tiny_text(vocab_size: int, **extra) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                initializer_range=TINY_TEXT_INIT, bos_token_id=None, eos_token_id=None, **extra)


def _tiny_qwen25(vocab_size: int, ids: dict) -> Qwen2_5_VLConfig:
    # Like the real Qwen2.5-VL's, this vision tower has no absolute positions (2-D RoPE inside attention only):
    # where a token sits reaches the language model through M-RoPE.
    return Qwen2_5_VLConfig(
        text_config=_tiny_text(vocab_size, rope_parameters=TINY_QWEN25_ROPE),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1], out_hidden_size=64, initializer_range=32 ** -0.5),
        **ids,
    )


def _tiny_qwen3(vocab_size: int, ids: dict) -> Qwen3VLConfig:
    # The vision tower knows where each patch is: learned absolute position embeddings on a 16 x 16 grid,
    # interpolated to the image's (as in the real Qwen3-VL); 64 wide so that pretraining (jobs/pretrain.py)
    # can learn shape identity per token within a CPU budget.
    return Qwen3VLConfig(
        text_config=_tiny_text(vocab_size, head_dim=32, rope_parameters=TINY_QWEN3_ROPE),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                           num_position_embeddings=256, deepstack_visual_indexes=[0], initializer_range=64 ** -0.5),
        **ids,
    )


def rope_grid_separation(model: PreTrainedModel, grid: int = 16) -> dict[str, float]:
    """How far apart the language model's rotary positions put distinct rows and distinct columns of a
    grid x grid visual token grid: the smallest chord |R(a) - R(b)| (Frobenius over the rotation's 2-D
    blocks, in rad for small angles) over every pair a != b on that axis, from the model's own rotary module."""
    rotary = model.model.language_model.rotary_emb
    out = {}
    for name, axis in (("rows", 1), ("columns", 2)):
        positions = torch.zeros(3, 1, grid, dtype=torch.long)
        positions[axis, 0] = torch.arange(grid)
        cos, sin = rotary(torch.zeros(1, grid, 1), positions)
        half = cos.shape[-1] // 2  # each frequency appears twice (rotate_half layout)
        c, s = cos[0, :, :half].double(), sin[0, :, :half].double()
        dist = ((c[:, None] - c[None]) ** 2 + (s[:, None] - s[None]) ** 2).sum(-1).sqrt()
        out[name] = float(dist[~torch.eye(grid, dtype=torch.bool)].min())
    return out


def _qwen25(text: dict, vision: dict):
    def build(vocab_size: int, ids: dict) -> Qwen2_5_VLConfig:
        return Qwen2_5_VLConfig(
            text_config=dict(text, vocab_size=max(vocab_size, text["vocab_size"]), bos_token_id=None, eos_token_id=None,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
            vision_config=dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, **vision),
            tie_word_embeddings=text.get("tie_word_embeddings", False), **ids)
    return build


def _qwen3(text: dict, vision: dict):
    def build(vocab_size: int, ids: dict) -> Qwen3VLConfig:
        return Qwen3VLConfig(
            text_config=dict(text, vocab_size=max(vocab_size, text["vocab_size"]), head_dim=128, bos_token_id=None,
                             eos_token_id=None, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                                "mrope_section": [24, 20, 20], "mrope_interleaved": True}),
            vision_config=dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                               **vision),
            tie_word_embeddings=text.get("tie_word_embeddings", False), **ids)
    return build


_Q25_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, fullatt_block_indexes=[7, 15, 23, 31])
_Q3_MEAN_STD = (0.5, 0.5, 0.5)

# name -> (config builder, image processor patch size, image mean/std). The `random-*` presets have the published
# architectures of the real checkpoints with random weights and the tiny tokenizer: for dry runs (meta device),
# GPU benchmarks and smoke tests of the multi-GPU path when no checkpoint is on the machine.
PRESETS = {
    "tiny-qwen2.5-vl": (_tiny_qwen25, 14, None),
    "tiny-qwen3-vl": (_tiny_qwen3, 16, _Q3_MEAN_STD),
    "random-qwen2.5-vl-3b": (_qwen25(
        dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
             num_key_value_heads=2, max_position_embeddings=128000, tie_word_embeddings=True),
        dict(_Q25_VISION, out_hidden_size=2048)), 14, None),
    "random-qwen2.5-vl-7b": (_qwen25(
        dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, max_position_embeddings=128000),
        dict(_Q25_VISION, out_hidden_size=3584)), 14, None),
    "random-qwen3-vl-4b": (_qwen3(
        dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
             num_key_value_heads=8, max_position_embeddings=262144, tie_word_embeddings=True),
        dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
             deepstack_visual_indexes=[5, 11, 17])), 16, _Q3_MEAN_STD),
    "random-qwen3-vl-8b": (_qwen3(
        dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
             num_key_value_heads=8, max_position_embeddings=262144),
        dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
             deepstack_visual_indexes=[8, 16, 24])), 16, _Q3_MEAN_STD),
}


# Bundled pretrained backbones: checkpoint folders inside the package, built by jobs/pretrain.py --bundle (their
# README.md is the model card: command, seed, steps, probe accuracies).
PRETRAINED = {"tiny-qwen3-vl-pretrained": Path(__file__).parent / "assets" / "tiny-qwen3-vl-pretrained"}


def checkpoint_dir(backbone: str) -> Path:
    """The folder of a bundled pretrained backbone, or model.backbone itself as a path."""
    if backbone in PRETRAINED:
        path = PRETRAINED[backbone]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.backbone={backbone!r}: the bundled weights are missing from {path}; "
                                    "rebuild them with `python jobs/pretrain.py --bundle`")
        return path
    return Path(backbone)


def _image_processor(patch_size: int, cfg: ModelConfig, mean_std) -> Qwen2VLImageProcessorPil:
    kwargs = {}
    if mean_std is not None:
        kwargs = {"image_mean": list(mean_std), "image_std": list(mean_std)}
    return Qwen2VLImageProcessorPil(size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels},
                                    patch_size=patch_size, merge_size=2, temporal_patch_size=2, **kwargs)


def load_backbone(cfg: ModelConfig, attn_implementation: str | None = None,
                  device: str | torch.device | None = None) -> tuple[PreTrainedModel, LaReProcessor]:
    """(Qwen-VL ForConditionalGeneration, processor) with the LaRe special tokens added and embeddings resized,
    from a preset or a local checkpoint folder (a saved LaRe model is one). device="meta" builds the architecture
    without allocating or reading a weight: dry runs, and FSDP2 ranks other than 0 (they receive the weights by
    broadcast)."""
    attn = attn_implementation or cfg.attn_implementation
    dtype = DTYPES[cfg.dtype]
    if cfg.backbone in PRESETS:
        build, patch_size, mean_std = PRESETS[cfg.backbone]
        processor = LaReProcessor(tiny_tokenizer(), _image_processor(patch_size, cfg, mean_std), cfg.crop_max_pixels)
        p = processor
        ids = dict(image_token_id=p.image_token_id, video_token_id=p.ids["<|video_pad|>"],
                   vision_start_token_id=p.vision_start_id, vision_end_token_id=p.vision_end_id)
        config = build(len(p.tokenizer), ids)
        config._attn_implementation = attn
        config.text_config.pad_token_id = p.pad_id
        with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
            torch.manual_seed(cfg.seed)
            model = MODEL_CLASSES[config.model_type](config)
        return model.to(dtype), processor

    path = checkpoint_dir(cfg.backbone)
    if not (path / "config.json").is_file():
        presets = ", ".join([*PRESETS, *PRETRAINED])
        raise FileNotFoundError(f"model.backbone={cfg.backbone!r} is neither a preset ({presets}) nor a local "
                                "checkpoint directory with a config.json (nothing is downloaded)")
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if config.model_type not in MODEL_CLASSES:
        raise ConfigError(f"config: model.backbone={cfg.backbone!r} has model_type {config.model_type!r}; "
                          f"supported: {sorted(MODEL_CLASSES)}")
    meta = str(device) == "meta"
    if meta:
        config._attn_implementation = attn
        with torch.device("meta"):
            model = MODEL_CLASSES[config.model_type]._from_config(config, dtype=dtype)
    else:
        model = MODEL_CLASSES[config.model_type].from_pretrained(
            path, local_files_only=True, trust_remote_code=False, dtype=dtype, attn_implementation=attn)
    processor = LaReProcessor.from_pretrained(path, cfg.min_pixels, cfg.max_pixels, cfg.crop_max_pixels)
    if model.get_input_embeddings().num_embeddings < len(processor.tokenizer):
        # new rows start at the mean of the old ones; on the meta device there is nothing to average
        model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=not meta)
    return model, processor
