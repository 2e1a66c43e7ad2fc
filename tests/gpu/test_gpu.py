"""GPU paths (marker `gpu`; `make test` and CI deselect them, bench/gpu_check.sh runs them on a CUDA machine):
bf16 against fp32 for the loss and generation, the KV-cached latent loop on CUDA, FSDP2 on one device.

LARE_GPU_TEST_DEVICE=cpu runs the same checks on CPU (bf16 autocast there too), to check the tests themselves.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import record, tiny_config
from lare.batch import build_batch, example_from_record
from lare.model import LaReModel

DEVICE = torch.device(os.environ.get("LARE_GPU_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                                  reason="no CUDA device (run bench/gpu_check.sh on a GPU machine)")]


def _records(n=4):
    sizes = [(224, 224), (168, 224), (224, 140), (196, 196)]
    return [record(f"g{i}", width=w, height=h, seed=i, answer=("red", "blue", "green", "pink")[i],
                   steps=[{"text": "Find the star.", "bbox": [0.1, 0.1, 0.3, 0.3]},
                          {"text": "Look left of it.", "bbox": [0.0, 0.1, 0.15, 0.3]}])
            for i, (w, h) in enumerate(sizes[:n])]


def _model(paradigm="lare", *overrides):
    cfg = tiny_config("tiny-qwen2.5-vl", paradigm, "method.latent_steps=4", "data.max_steps=2", *overrides)
    torch.manual_seed(0)
    return LaReModel.build(cfg).to(DEVICE).eval(), cfg


def _batch(model, cfg, **kw):
    return build_batch([example_from_record(r, 2) for r in _records()], model.processor, cfg, **kw).to(DEVICE)


@pytest.mark.parametrize("paradigm", ["lare", "text_cot"])
def test_bf16_autocast_matches_fp32_loss_and_generation(paradigm):
    model, cfg = _model(paradigm)
    batch = _batch(model, cfg)
    with torch.no_grad():
        fp32 = model(batch, return_logits=True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            bf16 = model(batch, return_logits=True)
    # bf16 keeps 8 bits of mantissa: about 3 significant digits per op, a few ops deep
    assert abs(bf16.loss.item() - fp32.loss.item()) <= 0.02 * abs(fp32.loss.item()), (bf16.loss, fp32.loss)
    cos = torch.nn.functional.cosine_similarity(bf16.logits.float().flatten(1), fp32.logits.flatten(1), dim=1)
    assert (cos > 0.99).all(), cos
    prompts = _batch(model, cfg, prompt_only=True)
    with torch.no_grad():
        g32 = model(prompts, mode="generate", max_new_tokens=6)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            g16 = model(prompts, mode="generate", max_new_tokens=6)
    # Random weights leave near-ties that bf16 may flip: the token accounts (latent counts) must agree exactly,
    # and most rows' text
    assert [t["latent"] for t in g16.tokens] == [t["latent"] for t in g32.tokens]
    assert sum(a == b for a, b in zip(g16.texts, g32.texts)) >= len(g32.texts) // 2, (g16.texts, g32.texts)


def test_kv_cached_latent_loop_on_the_device_equals_the_reforward():
    model, cfg = _model("lare")
    with torch.no_grad():
        batch = _batch(model, cfg)
        cached = model(batch, return_logits=True)
        naive = model(batch, kv_cache=False, return_logits=True)
        torch.testing.assert_close(cached.logits, naive.logits, atol=1e-3, rtol=1e-3)  # TF32 / kernel choice on GPU
        prompts = _batch(model, cfg, prompt_only=True)
        g_cached = model(prompts, mode="generate", max_new_tokens=6)
        g_naive = model(prompts, mode="generate", max_new_tokens=6, kv_cache=False)
    assert g_cached.texts == g_naive.texts and g_cached.tokens == g_naive.tokens


def test_fsdp2_on_one_device_trains_in_bf16_like_ddp_autocast(free_port):
    import torch.distributed as dist

    from lare.sizing import Layout
    from lare.train.parallel import autocast, build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port))
    dist.init_process_group("nccl" if DEVICE.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        cfg = tiny_config("tiny-qwen2.5-vl", "lare", "method.latent_steps=2", "data.max_steps=2",
                          "train.mixed_precision=bf16", "train.lr=1e-3")
        losses = {}
        for kind in ("fsdp", "ddp"):
            torch.manual_seed(0)
            layout = Layout(kind, (1, 1), "test")
            model = build_model(cfg, 0, 1, DEVICE, layout)
            if kind == "fsdp":  # FSDP2 keeps fp32 master weights and computes in bf16
                assert {p.dtype for p in model.parameters()} == {torch.float32}
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
            batch = build_batch([example_from_record(r, 2) for r in _records()], model.processor, cfg).to(DEVICE)
            run = []
            for _ in range(3):
                with autocast(cfg, layout, DEVICE):
                    out = model(batch)
                out.loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                run.append(out.loss.item())
            losses[kind] = run
        assert losses["fsdp"][-1] < losses["fsdp"][0]
        torch.testing.assert_close(losses["fsdp"], losses["ddp"], rtol=0.03, atol=0)
    finally:
        dist.destroy_process_group()
