"""Checkpoint folders in the layouts the Hub ships (tests/hub_checkpoints.py: Qwen2.5-VL-3B and Qwen3-VL-4B at the
published head dims, rope and patch settings, with 2 layers and narrower widths), loaded as a user would:
`model.backbone=<folder>`."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lare.backbone import load_backbone
from lare.batch import build_batch, example_from_record
from lare.model import LaReModel
from lare.processor import LaReProcessor
from lare.train.export import export
from tests.helpers import record, tiny_config
from tests.hub_checkpoints import BUILDERS, SYSTEM_TURN

FAMILIES = list(BUILDERS)
PARADIGMS = ["direct", "text_cot", "crop", "latent", "lare"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    """One folder per family for the module (writing one takes about 0.1 s; loading it, as often as a test likes)."""
    root = tmp_path_factory.mktemp("hub")
    return {family: build(root / family) for family, build in BUILDERS.items()}


def config(folder: Path, paradigm: str = "lare", *overrides):
    return tiny_config(str(folder), paradigm, "method.latent_steps=2", *overrides)


def examples(*sizes, max_steps: int = 3):
    """One trace per (width, height), each with two boxed steps (the crop baseline re-encodes both)."""
    steps = [{"text": "Find the star.", "bbox": [0.1, 0.1, 0.4, 0.5]},
             {"text": "Look right of it.", "bbox": [0.5, 0.2, 0.9, 0.6]}]
    return [example_from_record(record(f"r{i}", w, h, steps=steps, seed=i), max_steps) for i, (w, h) in enumerate(sizes)]


def file_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state = {}
    for file in sorted(set(index["weight_map"].values())):
        state.update(load_file(folder / file))
    return state


# Every published setting that defines the layout, as transformers must read it from each family's config.json.
LAYOUT = {
    "qwen2.5-vl": dict(head_dim=128, mrope_section=[16, 24, 24], rope_theta=1e6, interleaved=False, patch=14,
                       window=112, fullatt=[1], deepstack=None),
    "qwen3-vl": dict(head_dim=128, mrope_section=[24, 20, 20], rope_theta=5e6, interleaved=True, patch=16,
                     window=None, fullatt=None, deepstack=[0, 1]),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_hub_folder_loads_every_weight_from_its_files_and_its_layout_from_config_json(hub, family):
    model, processor = load_backbone(config(hub[family]).model)
    text, vision, want = model.config.text_config, model.config.vision_config, LAYOUT[family]
    assert text.num_hidden_layers == 2 and vision.depth == 2
    assert getattr(text, "head_dim", text.hidden_size // text.num_attention_heads) == want["head_dim"]
    assert text.rope_parameters["mrope_section"] == want["mrope_section"]
    assert text.rope_parameters["rope_theta"] == want["rope_theta"]
    assert bool(text.rope_parameters.get("mrope_interleaved")) == want["interleaved"]
    assert vision.patch_size == processor.patch_size == want["patch"] and processor.merge_size == 2
    assert getattr(vision, "window_size", None) == want["window"]
    assert getattr(vision, "fullatt_block_indexes", None) == want["fullatt"]
    assert getattr(vision, "deepstack_visual_indexes", None) == want["deepstack"]

    # Every tensor of the model is the file's (bf16 on disk, read as float32): none was left at a random init by a
    # name the conversion did not map. Qwen2.5-VL's files use the older names.
    files = file_weights(hub[family])
    for name, tensor in model.state_dict().items():
        stored = name if name in files else name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        if name == "lm_head.weight":  # tied, stored once
            stored = next(k for k in files if k.endswith("embed_tokens.weight"))
        assert torch.equal(tensor, files[stored].float()), name
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # The spare rows hold LaRe's added tokens, as 151936 rows hold them on the real checkpoints: no resize.
    assert model.get_input_embeddings().num_embeddings == text.vocab_size > processor.lare_end_id
    for key, token in (("image_token_id", "<|image_pad|>"), ("vision_start_token_id", "<|vision_start|>")):
        assert getattr(model.config, key) == processor.ids[token]


# 1920 x 1080 under model.max_pixels = 28 * 28 * 64: Qwen2.5-VL resizes to 168 x 280 px (12 x 20 patches of 14 px,
# 60 tokens of 28 px); Qwen3-VL to 160 x 288 px (10 x 18 patches of 16 px, 45 tokens of 32 px). The checkpoints' own
# limits (12.8 M and 16.8 M pixels) would give 2691 and 2040 tokens.
PIXEL_LIMITS = {"qwen2.5-vl": ([1, 12, 20], 60, 2691), "qwen3-vl": ([1, 10, 18], 45, 2040)}


@pytest.mark.parametrize("family", FAMILIES)
def test_configured_pixel_limits_win_over_the_checkpoints_own(hub, family):
    grid, tokens, checkpoints_own = PIXEL_LIMITS[family]
    cfg = config(hub[family], "direct", f"model.max_pixels={28 * 28 * 64}")
    model = LaReModel.build(cfg).eval()
    batch = build_batch(examples((1920, 1080)), model.processor, cfg)
    assert batch.image_grid_thw.tolist() == [grid]
    assert int(batch.mm_token_type_ids.sum()) == tokens
    with torch.no_grad():  # and the vision tower gives exactly that many tokens, at the language model's width
        features = model.vlm.model.get_image_features(batch.pixel_values, batch.image_grid_thw).pooler_output
    assert [tuple(f.shape) for f in features] == [(tokens, model.text_config.hidden_size)]
    own = LaReProcessor.from_pretrained(hub[family])  # the folder's preprocessor_config.json alone
    assert own.num_visual_tokens(own.images([Image.new("RGB", (1920, 1080))])[1]) == [checkpoints_own]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_prompt_is_the_checkpoints_chat_template(hub, family, tmp_path):
    """Qwen2.5-VL's template opens every conversation with its default system turn; the model was tuned with it,
    so LaRe's prompt must have it too. Qwen3-VL's template has none. An export keeps the folder's template."""
    _, processor = load_backbone(config(hub[family]).model)
    question, choices = "Which shape is red?", ["the star", "the circle"]
    ids = processor.prompt_ids(question, choices, n_image_tokens=5)
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": LaReProcessor.user_text(question, choices)}]}]
    rendered = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert processor.decode(ids) == rendered.replace(image, "<|vision_start|>" + "<|image_pad|>" * 5 + "<|vision_end|>")
    assert ids.count(processor.image_token_id) == 5
    opening = SYSTEM_TURN + "<|im_start|>user\n" if family == "qwen2.5-vl" else "<|im_start|>user\n"
    assert rendered.startswith(opening + image + "Which shape is red?\nOptions:\nA. the star\nB. the circle<|im_end|>")
    assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")

    processor.save_pretrained(tmp_path / "saved")
    assert LaReProcessor.from_pretrained(tmp_path / "saved").prompt_ids(question, choices, 5) == ids


@pytest.mark.parametrize("family", FAMILIES)
def test_export_and_reload_give_identical_outputs_at_mixed_image_sizes(hub, family, tmp_path):
    cfg = config(hub[family], "lare")
    model = LaReModel.build(cfg).eval()
    batch = build_batch(examples((1920, 1080), (150, 100)), model.processor, cfg)
    assert batch.image_grid_thw[0].tolist() != batch.image_grid_thw[1].tolist()
    # the project's export (lare/train/export.py): rebuild from model.backbone, load the state, save_pretrained
    loaded = LaReModel.from_pretrained(export(model.state_dict(), cfg, tmp_path / "export")).eval()
    a, b = model(batch, return_logits=True), loaded(batch, return_logits=True)
    assert torch.equal(a.logits, b.logits) and a.loss.item() == b.loss.item()
    prompts = build_batch(examples((1920, 1080), (150, 100)), model.processor, cfg, prompt_only=True)
    assert model(prompts, mode="generate", max_new_tokens=4).texts == loaded(prompts, mode="generate", max_new_tokens=4).texts
    assert torch.equal(batch.input_ids, build_batch(batch.examples, loaded.processor, cfg).input_ids)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("paradigm, refocus", [(p, "cross_attention") for p in PARADIGMS] + [("lare", "lm_attention")])
def test_every_paradigm_trains_and_generates_on_a_hub_folder(hub, family, paradigm, refocus):
    cfg = config(hub[family], paradigm, f"method.refocus={refocus}")  # lm_attention: the eager kernel
    model = LaReModel.build(cfg)
    out = model(build_batch(examples((224, 224), (150, 100)), model.processor, cfg))
    assert math.isfinite(out.loss.item()) and math.isfinite(out.terms["answer_ce"])
    out.loss.backward()
    assert model.vlm.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.vlm.model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    model.eval()
    gen = model(build_batch(examples((224, 224), (150, 100)), model.processor, cfg, prompt_only=True),
                mode="generate", max_new_tokens=3)
    assert len(gen.texts) == 2 and all(isinstance(t, str) and t for t in gen.texts)
    assert all(t["generated"] >= 1 and t["visual"] > 0 for t in gen.tokens)
    if paradigm in ("latent", "lare"):
        assert all(t["latent"] == 2 for t in gen.tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cached_latent_loop_equals_naive_reforward_at_the_published_rope(hub, family):
    # head dim 128 with theta 1e6 / 5e6 (the tiny presets use 16-32 and 8-50), Qwen2.5-VL's windowed vision block,
    # Qwen3-VL's deepstack into both decoder layers: the cached loop must still be the full re-forward.
    cfg = config(hub[family], "lare", "method.latent_steps=3")
    model = LaReModel.build(cfg).eval()
    batch = build_batch(examples((224, 224), (150, 100)), model.processor, cfg)
    cached, naive = model(batch, return_logits=True), model(batch, kv_cache=False, return_logits=True)
    torch.testing.assert_close(cached.logits, naive.logits, atol=1e-4, rtol=1e-4)
    prompts = build_batch(examples((224, 224), (150, 100)), model.processor, cfg, prompt_only=True)
    a = model(prompts, mode="generate", max_new_tokens=4)
    b = model(prompts, mode="generate", max_new_tokens=4, kv_cache=False)
    assert a.texts == b.texts and a.tokens == b.tokens


def _train_and_export_with_fsdp(rank: int, port: int, folder: str, out: str) -> None:
    """One of two gloo workers: FSDP2-shard the Hub folder's model, train two steps on this rank's own image size,
    save a sharded checkpoint, gather the weights and (rank 0) export them."""
    import os

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from lare.train import checkpoint
    from lare.sizing import Layout
    from lare.train.parallel import build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        cfg = config(Path(folder), "lare", "train.batch_size=1")
        model = build_model(cfg, rank, 2, torch.device("cpu"), Layout("fsdp", (1, 2), "FSDP2 is what this test is about"))
        assert all(isinstance(p, DTensor) for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = build_batch(examples([(224, 224), (150, 100)][rank]), model.processor, cfg, fixed_slots=True)
        for _ in range(2):
            model(batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        checkpoint.save(Path(out) / "checkpoint", model, optimizer, checkpoint.Position(step=2), rank)
        full = checkpoint.full_model_state(model)  # every rank takes part in the gather
        if rank == 0:
            export(full, cfg, Path(out) / "export")
            torch.save(full, Path(out) / "trained.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # load_model_only in this one process
def test_fsdp2_training_on_two_workers_checkpoints_and_exports_a_hub_folder(hub, tmp_path, free_port):
    # Qwen2.5-VL's tied embeddings are one parameter in two modules: FSDP2 must shard, train and gather it once.
    from lare.train import checkpoint

    torch.multiprocessing.spawn(_train_and_export_with_fsdp, args=(free_port, str(hub["qwen2.5-vl"]), str(tmp_path)),
                                nprocs=2)
    trained = torch.load(tmp_path / "trained.pt", weights_only=True)
    cfg = config(hub["qwen2.5-vl"], "lare")
    start = LaReModel.build(cfg).state_dict()
    assert trained.keys() == start.keys()
    assert torch.equal(trained["vlm.lm_head.weight"], trained["vlm.model.language_model.embed_tokens.weight"])
    changed = [k for k in start if not torch.equal(start[k], trained[k])]
    assert any(".language_model.layers." in k for k in changed) and any(".visual.blocks." in k for k in changed)
    assert any(k.startswith("refocus.") for k in changed)

    exported = LaReModel.from_pretrained(tmp_path / "export")
    assert all(torch.equal(v, trained[k]) for k, v in exported.state_dict().items())
    # the export prompts as the checkpoint did: the folder's chat template went with it
    assert exported.processor.decode(exported.processor.prompt_ids("Q?", [], 1)).startswith(SYSTEM_TURN)
    # and the sharded checkpoint holds the same weights (loaded here in one process, unsharded)
    resumed = LaReModel.build(cfg)
    checkpoint.load_model_only(tmp_path / "checkpoint", resumed)
    assert all(torch.equal(v, trained[k]) for k, v in resumed.state_dict().items())


def test_a_template_only_in_chat_template_json_is_used(hub, tmp_path):
    """Some folders keep the chat template only in the processor's chat_template.json (processor.save_pretrained of
    older transformers releases), which AutoTokenizer does not read: the template is the folder's all the same."""
    import shutil

    folder = Path(shutil.copytree(hub["qwen2.5-vl"], tmp_path / "qwen2.5-vl"))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    del tokenizer_config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    processor = LaReProcessor.from_pretrained(folder)
    assert processor.decode(processor.prompt_ids("Q?", [], 1)).startswith(SYSTEM_TURN + "<|im_start|>user\n")
