"""The LaRe model on both tiny backbones: every paradigm, the latent loop, the losses, save/load, errors."""

import ast
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import BACKBONES, record, tiny_config
from lare.batch import TraceError, build_batch, example_from_record
import lare.model
from lare.model import LaReModel
from lare.processor import BOX_RE

PARADIGMS = ["direct", "text_cot", "crop", "latent", "lare"]


def build(backbone="tiny-qwen2.5-vl", paradigm="lare", *overrides):
    cfg = tiny_config(backbone, paradigm, *overrides)
    return LaReModel.build(cfg), cfg


def script_outputs(model, script: list[int], *more_rows: list[int]) -> None:
    """Make greedy decoding emit `script`, one token per call of the LM head (row b emits more_rows[b - 1]
    when given; a row keeps its last token once its script is used up)."""
    calls = []
    rows = [script, *more_rows]

    def scripted(module, inputs, output):
        out = torch.full_like(output, -1e4)
        if more_rows:
            for b, row in enumerate(rows):
                out[b, ..., row[min(len(calls), len(row) - 1)]] = 0
        else:
            out[..., script[len(calls)]] = 0
        calls.append(1)
        return out

    model.vlm.lm_head.register_forward_hook(scripted)


def examples(records, max_steps=3):
    return [example_from_record(r, max_steps) for r in records]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_every_paradigm_trains_on_a_padded_batch_of_different_image_sizes(backbone, paradigm, records):
    model, cfg = build(backbone, paradigm)
    batch = build_batch(examples(records), model.processor, cfg)
    assert batch.image_grid_thw[:3].tolist() != [batch.image_grid_thw[0].tolist()] * 3  # sizes differ
    out = model(batch)
    assert math.isfinite(out.loss.item()) and out.num_tokens > 0
    assert math.isfinite(out.terms["answer_ce"])
    out.loss.backward()
    lm = model.vlm.model.language_model
    assert lm.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.vlm.model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    if paradigm == "crop":
        assert (~batch.image_is_original).sum() == 5  # one crop per boxed step: 1 + 2 + 2


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradients_reach_refocus_and_reconstruction_through_the_cache(backbone, records):
    # Only the answer/text CE: the refocus parameters can get a gradient only through the latent
    # positions' keys and values in the KV cache.
    model, cfg = build(backbone, "lare", "method.focus_weight=0", "method.recon_weight=1")
    batch = build_batch(examples(records), model.processor, cfg)
    out = model(batch)
    ce_only = out.loss - 1.0 * out.terms["recon"]  # same graph minus a constant
    grads = torch.autograd.grad(ce_only, [model.refocus.q.weight, model.refocus.k.weight, model.refocus.v.weight,
                                          model.fusion.gate.weight], allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    model.zero_grad()
    model(batch).loss.backward()
    for p in list(model.recon.parameters()) + list(model.refocus.parameters()) + list(model.fusion.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("paradigm, refocus", [("latent", "cross_attention"), ("lare", "cross_attention"), ("lare", "lm_attention")])
def test_kv_cached_latent_loop_equals_naive_reforward(backbone, paradigm, refocus, records):
    model, cfg = build(backbone, paradigm, f"method.refocus={refocus}", "method.latent_steps=4")
    model.eval()
    for stage in (1, None):
        batch = build_batch(examples(records), model.processor, cfg, stage=stage)
        assert batch.num_slots > 0
        cached = model(batch, return_logits=True)
        naive = model(batch, kv_cache=False, return_logits=True)
        torch.testing.assert_close(cached.logits, naive.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cached.loss, naive.loss, atol=1e-5, rtol=1e-5)
    prompts = build_batch(examples(records), model.processor, cfg, prompt_only=True)
    g_cached = model(prompts, mode="generate", max_new_tokens=6)
    g_naive = model(prompts, mode="generate", max_new_tokens=6, kv_cache=False)
    assert g_cached.texts == g_naive.texts and g_cached.tokens == g_naive.tokens
    if paradigm == "lare":
        for a, b in zip(g_cached.refocus, g_naive.refocus):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_text_positions_path_is_the_language_models_forward(backbone, records):
    """The decode state's own path for text appended to the cache (every latent step, every decoded token, the
    training suffix) against the language model's forward on the same cache: hidden states bitwise equal,
    gradients to fp32 rounding (the fused projections sum in another order). One position and a chunk of three;
    padded rows (different image sizes) and the unpadded case."""
    from lare.model.sequence import Prompt

    model, cfg = build(backbone, "lare")
    for recs in (records, [records[0]] * 2):
        batch = build_batch(examples(recs), model.processor, cfg, prompt_only=True)
        chunks = (1, 1, 3)
        z = torch.randn(batch.size, sum(chunks), model.text_config.hidden_size)
        # a random read-out: a loss on the hidden states' norm would have a gradient of zero through the final
        # RMSNorm, and both paths would only compare their rounding noise
        readout = torch.randn_like(z)
        runs = []
        for fast in (True, False):
            model.zero_grad(set_to_none=True)
            prompt = Prompt(model.vlm, model.processor.image_token_id, batch, batch.input_ids.shape[1])
            assert prompt.state.step_alone
            prompt.state.step_alone = fast
            start, hidden = int(prompt.positions.max()) + 1, []
            for c in chunks:
                t = sum(h.shape[1] for h in hidden)
                positions = (start + t + torch.arange(c))[None, None].expand(3, batch.size, c)
                hidden.append(prompt.state.append(z[:, t:t + c], positions,
                                                  torch.ones(batch.size, c, dtype=torch.long)).hidden)
            (torch.cat(hidden, 1) * readout).sum().backward()
            runs.append((hidden, {n: p.grad.clone() for n, p in model.vlm.named_parameters() if p.grad is not None}))
        (fast_h, fast_g), (ref_h, ref_g) = runs
        assert all(torch.equal(a, b) for a, b in zip(fast_h, ref_h))
        assert fast_g.keys() == ref_g.keys()
        for name in ref_g:
            scale = float(ref_g[name].abs().max())
            torch.testing.assert_close(fast_g[name], ref_g[name], atol=1e-5 * scale, rtol=1e-5, msg=name)


def test_rms_norm_function_is_the_qwen_norm_with_its_gradient():
    from lare.model.heads import RMSNormFunction, rms_norm

    x = torch.randn(5, 3, 16, dtype=torch.double, requires_grad=True)
    for w in (torch.randn(16, dtype=torch.double, requires_grad=True),
              torch.randn(3, 16, dtype=torch.double, requires_grad=True)):  # one weight, per-head weights
        assert torch.autograd.gradcheck(lambda a, b: RMSNormFunction.apply(a, b, 1e-6), (x, w))
    model, _ = build("tiny-qwen3-vl", "lare")
    norm = model.vlm.model.language_model.norm
    h = torch.randn(4, 7, norm.weight.shape[0])
    assert torch.equal(rms_norm(h, norm.weight, norm.variance_epsilon), norm(h))


def test_rotary_and_swiglu_functions_have_the_gradients_of_their_operations():
    from lare.model.sequence import Rotary, SwiGLU, rotary, swiglu

    x = torch.randn(4, 6, 1, 8, dtype=torch.double, requires_grad=True)
    cos, sin = torch.randn(4, 1, 1, 8, dtype=torch.double), torch.randn(4, 1, 1, 8, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda a: Rotary.apply(a, cos, sin), (x,))
    y = torch.randn(5, 8, dtype=torch.double, requires_grad=True)
    gate_up = torch.randn(8, 12, dtype=torch.double, requires_grad=True)
    down = torch.randn(6, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU.apply, (y, gate_up, down))
    with torch.no_grad():  # the plain path gives the same values
        assert torch.equal(rotary(x, cos, sin), Rotary.apply(x, cos, sin))
        assert torch.equal(swiglu(y, gate_up, down), SwiGLU.apply(y, gate_up, down))


def test_curriculum_replaces_exactly_the_first_steps(records):
    model, cfg = build("tiny-qwen2.5-vl", "lare", "method.latents_per_step=2", "method.latent_steps=5")
    p = model.processor
    exs = examples(records)
    for stage in range(cfg.final_stage + 1):
        batch = build_batch(exs, p, cfg, stage=stage)
        for b, ex in enumerate(exs):
            n = len(ex.steps)
            replaced = n if stage >= cfg.final_stage else min(stage, n)
            k = 5 if stage >= cfg.final_stage else 2 * replaced
            assert int(batch.slot_mask[b].sum()) == k
            P, K = batch.prefix_len, batch.num_slots
            assert (batch.input_ids[b, P:P + k] == p.latent_id).all()
            assert batch.attention_mask[b, P:P + k].all() and not batch.attention_mask[b, P + k:P + K].any()
            suffix = p.decode(batch.input_ids[b, P + K:][batch.attention_mask[b, P + K:].bool()].tolist())
            assert suffix.startswith("<|lare_end|>")
            for i, step in enumerate(ex.steps):
                assert (step.text in suffix) == (i >= replaced), (stage, i, suffix)
            assert suffix.endswith(f"Answer: {ex.answer}<|im_end|>")
            # slot j stands for step floor(j * replaced / k): its region is that step's box
            for j in range(k):
                step = ex.steps[(j * replaced) // k]
                assert bool(batch.slot_has_box[b, j]) == (step.box is not None)


def test_labels_supervise_text_and_answer_but_not_forced_or_visual_tokens(records):
    model, cfg = build("tiny-qwen2.5-vl", "crop")
    p = model.processor
    batch = build_batch(examples(records), p, cfg)
    supervised = batch.labels != -100
    for forced in (p.image_token_id, p.vision_start_id, p.vision_end_id, p.pad_id):
        assert not supervised[batch.input_ids == forced].any()
    for b, ex in enumerate(batch.examples):
        answer = p.decode(batch.labels[b][batch.answer_mask[b]].tolist())
        assert answer == ex.answer + "<|im_end|>"


def test_token_account_is_exact_on_a_hand_counted_example():
    # 56x56 image on Qwen2.5-VL: 4x4 patches of 14 px -> 2x2 = 4 visual tokens.
    # Prompt text (counted by hand from the tokenizer): "<|im_start|>" "u" "s" "er" "\n" (5),
    # <|vision_start|> <|vision_end|> (2), "H" "i" "?" "<|im_end|>" "\n" "<|im_start|>" "a" "s" "s" "ist"
    # "an" "t" "\n" (13), <|lare_start|> (1): 21.
    model, cfg = build("tiny-qwen2.5-vl", "lare", "method.latent_steps=3")
    p = model.processor
    ex = examples([record("h", 56, 56, question="Hi?", steps=[])])
    assert p.encode("red") == [p.encode("red")[0]]  # one token
    script_outputs(model, [p.encode("red")[0], p.im_end_id, 5, 5])
    gen = model(build_batch(ex, p, cfg, prompt_only=True), mode="generate", max_new_tokens=10)
    # generated: "red" <|im_end|> (2) + the forced <|lare_end|> (1)
    assert gen.tokens[0] == {"visual": 4, "prompt_text": 21, "latent": 3, "generated": 3, "crop_visual": 0, "total": 31}
    assert gen.answers == ["red"] and gen.refocus[0].shape == (3, 2, 2)


def test_crop_generation_reencodes_the_predicted_box_and_counts_it():
    model, cfg = build("tiny-qwen2.5-vl", "crop")
    p = model.processor
    ex = examples([record("c", 56, 56, question="Hi?", steps=[])])
    box_text = p.encode("(0,0),(500,500)")
    script = [*p.encode("Find it. "), p.box_start_id, *box_text, p.box_end_id, *p.encode("\nAnswer: red"), p.im_end_id]
    script_outputs(model, script)
    gen = model(build_batch(ex, p, cfg, prompt_only=True), mode="generate", max_new_tokens=40)
    assert gen.boxes == [[[0.0, 0.0, 0.5, 0.5]]]
    # the 28x28 crop is zoomed to crop_max_pixels (112x112): 16 tokens + <|vision_start|> + <|vision_end|>
    assert gen.tokens[0]["crop_visual"] == 18
    assert gen.tokens[0]["generated"] == len(script)
    assert gen.tokens[0]["prompt_text"] == 20 and gen.tokens[0]["visual"] == 4
    assert gen.answers == ["red"]


def test_crop_with_gold_boxes_writes_and_crops_the_trace_box_wherever_the_model_would_have_looked():
    # The oracle: the model opens a box, the trace's box is written for it and cut out; the model goes on after it.
    model, cfg = build("tiny-qwen2.5-vl", "crop")
    p = model.processor
    steps = [{"text": "Find it.", "bbox": [0.25, 0.25, 0.75, 0.75]}]
    ex = examples([record("c", 56, 56, question="Hi?", steps=steps)])
    script = [*p.encode("Find it. "), p.box_start_id, *p.encode("\nAnswer: red"), p.im_end_id]
    script_outputs(model, script)
    gen = model(build_batch(ex, p, cfg, prompt_only=True), mode="generate", max_new_tokens=40, ablation="gold_boxes")
    written = p.encode("(250,250),(750,750)") + [p.box_end_id]
    assert gen.boxes == [[[0.25, 0.25, 0.75, 0.75]]] and "<|box_start|>(250,250),(750,750)<|box_end|>" in gen.texts[0]
    assert gen.tokens[0]["crop_visual"] == 18 and gen.tokens[0]["generated"] == len(script) + len(written)
    assert gen.answers == ["red"]


def test_evaluation_with_gold_boxes_hands_each_item_its_trace_boxes():
    import json

    from lare.eval.inference import run_inference
    from lare.eval.readers import EvalItem
    from tests.helpers import png_bytes

    model, cfg = build("tiny-qwen2.5-vl", "crop")
    p = model.processor
    script_outputs(model, [p.box_start_id, *p.encode("\nAnswer: red"), p.im_end_id])
    item = EvalItem("refocus", "i0", "Hi?", [], "red", png_bytes(56, 56), {"step_boxes": [[0.5, 0.0, 1.0, 0.5], None]})
    (row,) = run_inference(model, [item], ablations=["gold_boxes"], use_ray=False)
    assert json.loads(row["boxes"]) == [[0.5, 0.0, 1.0, 0.5]] and row["answer"] == "red"
    with pytest.raises(ValueError, match="no step boxes in its meta"):
        run_inference(model, [EvalItem("pope", "p0", "Hi?", [], "yes", png_bytes(56, 56))], ablations=["gold_boxes"],
                      use_ray=False)


def test_crop_generation_when_one_row_crops_and_another_has_finished():
    # The appended chunk then has an empty row: its positions must not go through the rope helper.
    model, cfg = build("tiny-qwen2.5-vl", "crop")
    p = model.processor
    ex = examples([record("done", 56, 56, question="Hi?", steps=[]), record("crops", 56, 56, question="Hi?", steps=[])])
    crop_script = [p.box_start_id, *p.encode("(0,0),(500,500)"), p.box_end_id, *p.encode("\nAnswer: red"), p.im_end_id]
    script_outputs(model, [p.im_end_id], crop_script)
    gen = model(build_batch(ex, p, cfg, prompt_only=True), mode="generate", max_new_tokens=40)
    assert gen.boxes == [[], [[0.0, 0.0, 0.5, 0.5]]]
    assert [t["crop_visual"] for t in gen.tokens] == [0, 18] and gen.answers[1] == "red"
    assert [t["generated"] for t in gen.tokens] == [1, len(crop_script)]


@pytest.mark.parametrize("grammar", [True, False])
def test_crop_generation_holds_a_box_to_the_grammar_so_a_crop_is_never_lost(grammar):
    # The scripted model opens a box and then wants to stop: under the grammar it must write a whole box first
    # (the grammar never allows <|im_end|> inside a box), then <|box_end|> is its only choice, and the crop follows.
    model, cfg = build("tiny-qwen2.5-vl", "crop", f"data.box_grammar={str(grammar).lower()}")
    p = model.processor
    ex = examples([record("g", 56, 56, question="Hi?", steps=[])])
    script_outputs(model, [p.box_start_id] + [p.im_end_id] * 40)
    gen = model(build_batch(ex, p, cfg, prompt_only=True), mode="generate", max_new_tokens=40)
    text = gen.texts[0]
    if grammar:
        inside = text.split("<|box_start|>")[1].split("<|box_end|>")[0]
        assert BOX_RE.fullmatch(inside), text
        assert text.endswith("<|box_end|><|im_end|>") and len(gen.boxes[0]) == 1
        assert gen.tokens[0]["crop_visual"] > 0
    else:
        assert text == "<|box_start|><|im_end|>" and gen.boxes == [[]] and gen.tokens[0]["crop_visual"] == 0


def test_crop_generation_reads_a_box_with_its_corners_swapped():
    model, cfg = build("tiny-qwen2.5-vl", "crop")
    p = model.processor
    ex = examples([record("s", 56, 56, question="Hi?", steps=[])])
    script_outputs(model, [p.box_start_id, *p.encode("(500,500),(0,0)"), p.box_end_id, *p.encode("\nAnswer: red"), p.im_end_id])
    gen = model(build_batch(ex, p, cfg, prompt_only=True), mode="generate", max_new_tokens=40)
    assert gen.boxes == [[[0.0, 0.0, 0.5, 0.5]]] and gen.tokens[0]["crop_visual"] == 18 and gen.answers == ["red"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_and_load_give_identical_outputs(backbone, records, tmp_path):
    model, cfg = build(backbone, "lare", "method.pixel_decoder=true", "method.adaptive_stop=true")
    model.eval()
    batch = build_batch(examples(records), model.processor, cfg)
    model.save_pretrained(tmp_path / "m")
    loaded = LaReModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.cfg == cfg
    a, b = model(batch, return_logits=True), loaded(batch, return_logits=True)
    assert torch.equal(a.logits, b.logits)
    assert a.terms.keys() == b.terms.keys()
    assert all(a.terms[k] == b.terms[k] or (math.isnan(a.terms[k]) and math.isnan(b.terms[k])) for k in a.terms)
    prompts = build_batch(examples(records), model.processor, cfg, prompt_only=True)
    assert model(prompts, mode="generate").texts == loaded(prompts, mode="generate").texts
    assert (tmp_path / "m" / "lare_heads.safetensors").is_file() and (tmp_path / "m" / "model.safetensors").is_file()


@pytest.mark.parametrize("change, message", [
    (dict(image=None), "field 'image': no image"),
    (dict(image=b"not a png"), "field 'image': not a readable image"),
    (dict(question="  "), "field 'question' is empty"),
    (dict(answer=""), "field 'answer' is empty"),
    (dict(steps=[{"text": "a", "bbox": [0.1, 0.1, 1.5, 0.2]}]), r"steps\[0\].bbox.*outside \[0, 1\]"),
    (dict(steps=[{"text": "a", "bbox": [0.3, 0.1, 0.3, 0.2]}]), r"steps\[0\].bbox.*degenerate"),
    (dict(steps=[{"text": "s", "bbox": None}] * 4), "4 steps, more than the configured maximum data.max_steps=3"),
    (dict(steps=[{"text": "", "bbox": None}]), r"steps\[0\].text' is empty"),
])
def test_bad_input_names_record_and_field(change, message):
    rec = record("bad-1")
    rec.update(change)
    with pytest.raises(TraceError, match=message) as err:
        example_from_record(rec, max_steps=3, source="traces/train/part-0.parquet")
    assert "record bad-1" in str(err.value) and "traces/train/part-0.parquet" in str(err.value)


def test_ablations_change_what_the_latents_carry(records):
    model, cfg = build("tiny-qwen2.5-vl", "lare")
    model.eval()
    batch = build_batch(examples(records), model.processor, cfg)
    base = model(batch, return_logits=True).logits
    for ablation in ("zero_latents", "uniform_refocus", "shuffle_refocus"):
        other = model(batch, return_logits=True, ablation=ablation).logits
        assert not torch.allclose(base, other), ablation
    prompts = build_batch(examples(records), model.processor, cfg, prompt_only=True)
    uniform = model(prompts, mode="generate", ablation="uniform_refocus", max_new_tokens=2).refocus
    for maps in uniform:
        torch.testing.assert_close(maps, torch.full_like(maps, 1 / maps[0].numel()))
    normal = model(prompts, mode="generate", max_new_tokens=2).refocus
    shuffled = model(prompts, mode="generate", ablation="shuffle_refocus", max_new_tokens=2).refocus
    # sample 0 looks where sample 1 looked (same 1x... grid resampled), not where it looked itself
    assert not torch.allclose(shuffled[0], normal[0])
    for maps in shuffled:
        torch.testing.assert_close(maps.sum((1, 2)), torch.ones(maps.shape[0]))


def test_focus_forcing_reads_the_box_in_training_and_still_trains_the_refocus(records):
    # Forced slots read their step's box instead of the model's own map, in training only; the focus loss still
    # scores (and trains) the model's own map.
    model, cfg = build("tiny-qwen2.5-vl", "lare", "method.focus_forcing=1.0")
    batch = build_batch(examples(records), model.processor, cfg)
    forced = model.train()(batch, return_logits=True)
    own = model.eval()(batch, return_logits=True)
    assert not torch.allclose(forced.logits, own.logits)
    assert forced.terms["focus"] > 0.01  # the own map is scored, not the box it read through (KL 0)
    forced.loss.backward()
    assert model.refocus.q.weight.grad.abs().sum() > 0
    off = build("tiny-qwen2.5-vl", "lare")[0]
    off.load_state_dict(model.state_dict())
    assert torch.allclose(off.train()(batch, return_logits=True).logits, own.logits, atol=1e-5)  # forcing is all that differs


def test_top_k_restricts_the_refocus_to_k_tokens(records):
    model, cfg = build("tiny-qwen2.5-vl", "lare", "method.top_k=3")
    prompts = build_batch(examples(records), model.processor, cfg, prompt_only=True)
    for maps in model(prompts, mode="generate", max_new_tokens=1).refocus:
        assert ((maps > 0).flatten(1).sum(1) <= 3).all()


def test_adaptive_stop_ends_latents_early_under_the_cap(records):
    model, cfg = build("tiny-qwen2.5-vl", "lare", "method.adaptive_stop=true", "method.latent_steps=4")
    batch = build_batch(examples(records), model.processor, cfg)
    assert math.isfinite(model(batch).terms["stop"])
    prompts = build_batch(examples(records), model.processor, cfg, prompt_only=True)
    with torch.no_grad():
        model.stop.bias.fill_(-50)  # never stops: the configured K
        assert [t["latent"] for t in model(prompts, mode="generate", max_new_tokens=1).tokens] == [4, 4, 4]
        model.stop.bias.fill_(50)   # stops after the first latent
        assert [t["latent"] for t in model(prompts, mode="generate", max_new_tokens=1).tokens] == [1, 1, 1]


def test_semantic_augmentation_terms_train_their_heads(records):
    model, cfg = build("tiny-qwen3-vl", "lare", "method.pixel_decoder=true", "method.align_weight=0.1")
    batch = build_batch(examples(records), model.processor, cfg)
    assert batch.region_pixels is not None and batch.region_pixels.shape[-1] == cfg.method.pixel_size
    out = model(batch)
    for term in ("answer_ce", "text_ce", "recon", "focus", "align", "pixel"):
        assert math.isfinite(out.terms[term]), term
    out.loss.backward()
    for head in (model.pixel, model.align, model.recon):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_latent_paradigm_is_coconut(records):
    model, cfg = build("tiny-qwen2.5-vl", "latent")
    assert model.refocus is None and model.fusion is None
    h = torch.randn(2, model.text_config.hidden_size)
    z, refocus_map = model.latent_input(h, visual=None)
    assert torch.equal(z, h) and refocus_map is None


@pytest.mark.parametrize("paradigm", ["text_cot", "crop", "latent"])
def test_answer_tokens_weigh_the_same_whatever_the_rationale_length(paradigm, records):
    """Answer and rationale cross-entropies are averaged separately and weighted by the config: a long CoT does not
    dilute the answer's share of the loss (a mean over all tokens did, by the rationale's length)."""
    model, cfg = build("tiny-qwen2.5-vl", paradigm)
    batch = build_batch(examples(records[:2]), model.processor, cfg, stage=0)
    out = model(batch)
    assert out.loss.item() == pytest.approx(out.terms["answer_ce"] + out.terms["text_ce"], rel=1e-5)
    only_answer, _ = build("tiny-qwen2.5-vl", paradigm, "method.text_weight=0", "method.answer_weight=2")
    only_answer.load_state_dict(model.state_dict())
    assert only_answer(batch).loss.item() == pytest.approx(2 * out.terms["answer_ce"], rel=1e-5)


def test_model_modules_import_only_the_ones_below_them():
    """lare/model reads top to bottom, each file using only those before it: no import loop, not even one
    hidden inside a function."""
    order = ["heads", "sequence", "losses", "generate", "answer", "modeling"]
    folder = Path(lare.model.__file__).parent
    assert sorted(f.stem for f in folder.glob("*.py")) == sorted([*order, "__init__"])
    for i, name in enumerate(order):
        imported = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            imported |= {m.split(".")[2] for m in modules if m.startswith("lare.model.")}
        assert imported <= set(order[:i]), f"{name}.py imports {sorted(imported - set(order[:i]))}"


@pytest.mark.parametrize("paradigm", ["lare", "crop", "direct"])
def test_answer_is_generate_on_the_same_input(records, paradigm, tmp_path):
    """model.answer from PIL images, paths or bytes is the generation of the same prompt batch, with the token
    account and, for lare, a normalised refocus map per latent step and its strongest regions as boxes."""
    import io

    from lare.batch import Example

    model, cfg = build("tiny-qwen3-vl", paradigm)
    model.eval()
    images = [examples(records[:2])[i].image for i in range(2)]
    questions = ["What colour is the star?", "How many shapes are there?"]
    as_bytes = io.BytesIO()
    images[1].save(as_bytes, "PNG")
    images[0].save(tmp_path / "first.png")
    got = model.answer([tmp_path / "first.png", as_bytes.getvalue()], questions, max_new_tokens=6)
    batch = build_batch([Example(str(i), im, q, [], "", []) for i, (im, q) in enumerate(zip(images, questions))],
                        model.processor, cfg, prompt_only=True)
    gen = model(batch, mode="generate", max_new_tokens=6)
    assert [a.answer for a in got] == gen.answers and [a.text for a in got] == gen.texts
    assert [a.tokens for a in got] == gen.tokens
    for a in got:
        assert a.tokens["total"] == sum(v for k, v in a.tokens.items() if k != "total")
        if paradigm == "lare":
            assert len(a.refocus) == cfg.method.latent_steps
            step = a.refocus[0]
            rows, cols = step.grid
            assert len(step.weights) == rows and len(step.weights[0]) == cols
            assert sum(map(sum, step.weights)) == pytest.approx(1.0, abs=1e-4)
            flat = [w for row in step.weights for w in row]
            best = max(range(len(flat)), key=flat.__getitem__)
            assert step.regions[0] == pytest.approx([(best % cols) / cols, (best // cols) / rows,
                                                      (best % cols + 1) / cols, (best // cols + 1) / rows])
        else:
            assert a.refocus == []
    assert model.answer([images[0]], ["Which?"], return_refocus=False)[0].refocus == []
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        model.answer(images, questions[:1])
    with pytest.raises(TraceError, match="image 0: not a readable image"):
        model.answer([b"not an image"], ["Which?"])
