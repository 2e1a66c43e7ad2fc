"""Stand-ins for checkpoint folders as the Hugging Face Hub ships them (Qwen2.5-VL-3B-Instruct, Qwen3-VL-4B-Instruct),
written at test time with random weights: nothing is downloaded, and every file a user's folder has is there, in the
layout and with the keys the Hub's files use. A test points `model.backbone` at the folder, as a user would.

What is published and kept (the numbers of the real config.json / preprocessor_config.json of each model):
- Qwen2.5-VL-3B: the flat, older config.json (text keys at the top level, `rope_scaling: {type: mrope,
  mrope_section: [16, 24, 24]}`, rope_theta 1e6, rms_norm_eps 1e-6, tied embeddings, `vision_config` nested with
  its older `in_chans` / `spatial_patch_size` / `tokens_per_second` keys); text head dim 128 (2048 / 16 heads), GQA;
  vision head dim 80 (1280 / 16), patch 14, merge 2, temporal patch 2, window 112 px with full attention in the last
  block of each group (`fullatt_block_indexes`), SiLU; the token ids of the Qwen specials (relative to the end of the
  regular vocabulary, as 151643 is in the real one). preprocessor_config.json with `min_pixels` 3136 and
  `max_pixels` 12845056 and the CLIP mean/std. Weights under the older names the published safetensors use
  (`model.layers.*`, `model.embed_tokens`, `model.norm`, `visual.*`; transformers maps them with
  Qwen2VLForConditionalGeneration's conversion mapping), bf16, in two shards with an index, no `lm_head` (tied).
- Qwen3-VL-4B: the nested config.json (`text_config` with head_dim 128 (32 heads x 128 = 4096, wider than the
  2560 hidden), `rope_scaling: {rope_type: default, mrope_section: [24, 20, 20], mrope_interleaved: true}`,
  rope_theta 5e6; `vision_config` with patch 16, merge 2, `num_position_embeddings` 2304 (a 48 x 48 table),
  gelu_pytorch_tanh, vision head dim 64 (1024 / 16), deepstack); weights under the current names
  (`model.language_model.*`, `model.visual.*`), bf16, two shards, tied. preprocessor_config.json with
  `size: {shortest_edge: 65536, longest_edge: 16777216}`, mean/std 0.5; the video preprocessor config it also ships.
- Both: generation_config.json as published (sampling settings, eos [<|im_end|>, <|endoftext|>]), a Qwen2Tokenizer
  (vocab.json, merges.txt, tokenizer_config.json with `added_tokens_decoder` and every Qwen special in Qwen's order),
  the chat template in tokenizer_config.json and chat_template.json: Qwen2.5-VL's exactly (it opens with the default
  system turn "You are a helpful assistant."); Qwen3-VL-Instruct's without its tool-calling branches (it has no
  default system turn). The Qwen3-VL folder also has tokenizer.json (the fast file); the Qwen2.5-VL one leaves it out,
  so that the vocab.json + merges.txt path is exercised too.

What is shrunk (a 2-layer model at full width is still ~0.5 B parameters, most of it the 151936-row embedding):
- 2 text layers and vision depth 2 (deepstack at both vision blocks for Qwen3-VL, injected into both text layers;
  `fullatt_block_indexes` [1]: block 0 windowed, block 1 full, as the last block of each published group of 8).
- Widths divided by 8 at the published head dims: Qwen2.5-VL text 2048 -> 256 (2 heads, 1 KV head), MLP 11008 ->
  1376, vision 1280 -> 160 (2 heads), MLP 3420 -> 428; Qwen3-VL text 2560 -> 320 (4 heads of 128, 1 KV head), MLP
  9728 -> 1216, vision 1024 -> 128 (2 heads), MLP 4096 -> 512. out_hidden_size follows the text width.
- The vocabulary: the project's tiny byte-level BPE (lare/assets/tiny_tokenizer.json, 563 regular tokens, digits
  one by one as in Qwen's) instead of Qwen's 151643, the specials after it, and `vocab_size` padded to a multiple of
  128 with spare rows, as 151936 is (LaRe's three added tokens then fit without resizing the embeddings, as on the
  real checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from lare.processor import TINY_TOKENIZER

# The specials of Qwen2.5's tokenizer, in id order from 151643; Qwen3 appends four more.
QWEN25_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
QWEN3_SPECIALS = QWEN25_SPECIALS + ["<tool_response>", "</tool_response>", "<think>", "</think>"]
# tokenizer_config.json's additional_special_tokens: the multimodal ones (the tool and FIM tokens are added tokens only)
ADDITIONAL_SPECIALS = QWEN25_SPECIALS[1:14]

SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"

# Qwen2.5-VL-Instruct's chat template, as its tokenizer_config.json and chat_template.json carry it.
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-Instruct's chat template without its tool-calling branches: a system turn only when the messages have one.
QWEN3_VL_CHAT_TEMPLATE = """{%- macro render(content) %}
    {%- if content is string %}
        {{- content }}
    {%- else %}
        {%- for part in content %}
            {%- if part.type == 'image' or 'image' in part or 'image_url' in part %}
                {%- if add_vision_id %}Picture {{ loop.index }}: {% endif -%}
                <|vision_start|><|image_pad|><|vision_end|>
            {%- elif part.type == 'video' or 'video' in part %}
                <|vision_start|><|video_pad|><|vision_end|>
            {%- elif 'text' in part %}
                {{- part.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
{%- endmacro %}
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + render(messages[0].content) + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or message.role == 'assistant' %}
        {{- '<|im_start|>' + message.role + '\\n' + render(message.content) + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _tokenizer_files(folder: Path, specials: list[str], chat_template: str, fast_file: bool) -> dict[str, int]:
    """A Qwen2Tokenizer folder from the tiny BPE: its regular tokens and merges renumbered from 0 (its own specials
    dropped), then Qwen's specials. Returns token -> id of the specials."""
    tiny = json.loads(TINY_TOKENIZER.read_text())
    own_specials = {t["content"] for t in tiny["added_tokens"]}
    regular = sorted((i, t) for t, i in tiny["model"]["vocab"].items() if t not in own_specials)
    vocab = {t: n for n, (_, t) in enumerate(regular)}
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tiny["model"]["merges"]))
    ids = {t: len(vocab) + n for n, t in enumerate(specials)}
    # <tool_call> and the like are added tokens that are not "special" (decode keeps them), as in Qwen's file.
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": t.startswith("<|")} for t, i in ids.items()}
    _write_json(folder / "tokenizer_config.json", {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": ADDITIONAL_SPECIALS, "bos_token": None, "chat_template": chat_template,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None})
    _write_json(folder / "chat_template.json", {"chat_template": chat_template})
    if fast_file:  # what the Hub's tokenizer.json is: the same tokenizer, serialised by `tokenizers`
        Qwen2Tokenizer.from_pretrained(folder).backend_tokenizer.save(str(folder / "tokenizer.json"))
    return ids


def _padded_vocab(n_tokens: int) -> int:
    """Like 151936 for 151665 tokens: the next multiple of 128, with room for LaRe's three tokens."""
    return (n_tokens + 3 + 127) // 128 * 128


def _write_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """bf16 safetensors in two shards (the text layers, then the rest) with the index, as the Hub splits them."""
    names = sorted(state)
    shards = [[n for n in names if ".layers." in n], [n for n in names if ".layers." not in n]]
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: state[n].to(torch.bfloat16).contiguous() for n in shard}
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in shard})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _random_state(model_class, config, seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)  # transformers' own init: std 0.02 as the configs say
    state = model.state_dict()
    if config.tie_word_embeddings:  # the published tied checkpoints store the embedding once
        state.pop("lm_head.weight")
    return state


def _generation_config(ids: dict[str, int], **sampling) -> dict:
    return {"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"], "do_sample": True,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], **sampling, "transformers_version": "4.49.0"}


def qwen2_5_vl_3b(folder: str | Path, seed: int = 0) -> Path:
    """A Qwen2.5-VL-3B-Instruct-shaped folder (module docstring: what is published, what is shrunk)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer_files(folder, QWEN25_SPECIALS, QWEN25_VL_CHAT_TEMPLATE, fast_file=False)
    token_ids = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                     vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                     vision_token_id=ids["<|vision_pad|>"], image_token_id=ids["<|image_pad|>"],
                     video_token_id=ids["<|video_pad|>"])
    text = dict(hidden_act="silu", hidden_size=256, initializer_range=0.02, intermediate_size=1376,
                max_position_embeddings=128000, max_window_layers=70, num_attention_heads=2, num_hidden_layers=2,
                num_key_value_heads=1, rms_norm_eps=1e-06, rope_theta=1000000.0, sliding_window=32768,
                use_cache=True, use_sliding_window=False, vocab_size=_padded_vocab(max(ids.values()) + 1))
    vision = dict(depth=2, hidden_act="silu", hidden_size=160, intermediate_size=428, num_heads=2, in_chans=3,
                  out_hidden_size=256, patch_size=14, spatial_merge_size=2, spatial_patch_size=14, window_size=112,
                  fullatt_block_indexes=[1], tokens_per_second=2, temporal_patch_size=2)
    mrope = {"type": "mrope", "mrope_section": [16, 24, 24]}
    # config.json as published: flat, text keys at the top level
    _write_json(folder / "config.json", {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, **token_ids, **text,
        "model_type": "qwen2_5_vl", "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2", "vision_config": vision, "rope_scaling": mrope})
    # The weights come from the same architecture stated the current way (nested), not from parsing the file above:
    # a test that loads the folder then checks transformers reads the flat layout into this architecture.
    config = Qwen2_5_VLConfig(
        text_config={k: v for k, v in text.items() if k != "rope_theta"}
        | {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
           "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        vision_config={k: v for k, v in vision.items() if k not in ("in_chans", "spatial_patch_size")},
        tie_word_embeddings=True, **{k: v for k, v in token_ids.items() if k in (
            "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")})
    state = _random_state(Qwen2_5_VLForConditionalGeneration, config, seed)
    # The published names: the language model directly under `model.`, the vision tower at the top as `visual.`.
    hub_names = {}
    for name, tensor in state.items():
        if name.startswith("model.language_model."):
            name = "model." + name.removeprefix("model.language_model.")
        elif name.startswith("model.visual."):
            name = "visual." + name.removeprefix("model.visual.")
        hub_names[name] = tensor
    _write_weights(folder, hub_names)
    _write_json(folder / "generation_config.json", _generation_config(
        ids, repetition_penalty=1.05, temperature=0.1, top_p=0.001, top_k=1))
    _write_json(folder / "preprocessor_config.json", {
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"})
    return folder


def qwen3_vl_4b(folder: str | Path, seed: int = 0) -> Path:
    """A Qwen3-VL-4B-Instruct-shaped folder (module docstring: what is published, what is shrunk)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer_files(folder, QWEN3_SPECIALS, QWEN3_VL_CHAT_TEMPLATE, fast_file=True)
    text = dict(attention_bias=False, attention_dropout=0.0, bos_token_id=ids["<|endoftext|>"], dtype="bfloat16",
                eos_token_id=ids["<|im_end|>"], head_dim=128, hidden_act="silu", hidden_size=320,
                initializer_range=0.02, intermediate_size=1216, max_position_embeddings=262144,
                model_type="qwen3_vl_text", num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=1,
                rms_norm_eps=1e-06,
                rope_scaling={"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
                rope_theta=5000000, tie_word_embeddings=True, use_cache=True,
                vocab_size=_padded_vocab(max(ids.values()) + 1))
    vision = dict(deepstack_visual_indexes=[0, 1], depth=2, hidden_act="gelu_pytorch_tanh", hidden_size=128,
                  in_channels=3, initializer_range=0.02, intermediate_size=512, model_type="qwen3_vl", num_heads=2,
                  num_position_embeddings=2304, out_hidden_size=320, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2)
    token_ids = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                     vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    _write_json(folder / "config.json", {
        "architectures": ["Qwen3VLForConditionalGeneration"], **token_ids, "model_type": "qwen3_vl",
        "text_config": text, "tie_word_embeddings": True, "transformers_version": "4.57.0.dev0",
        "vision_config": vision})
    drop = ("rope_scaling", "rope_theta", "model_type", "dtype")
    config = Qwen3VLConfig(
        text_config={k: v for k, v in text.items() if k not in drop} | {"rope_parameters": {
            "rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
        vision_config={k: v for k, v in vision.items() if k != "model_type"}, tie_word_embeddings=True, **token_ids)
    _write_weights(folder, _random_state(Qwen3VLForConditionalGeneration, config, seed))  # current names already
    _write_json(folder / "generation_config.json", _generation_config(
        ids, top_k=20, top_p=0.8, repetition_penalty=1.0, temperature=0.7))
    _write_json(folder / "preprocessor_config.json", {
        "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast"})
    _write_json(folder / "video_preprocessor_config.json", {
        "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor", "video_processor_type": "Qwen3VLVideoProcessor"})
    return folder


BUILDERS = {"qwen2.5-vl": qwen2_5_vl_3b, "qwen3-vl": qwen3_vl_4b}
