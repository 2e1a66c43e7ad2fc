import json
import os
import subprocess
import sys

import random

import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from lare.processor import BOX_RE, TINY_TOKENIZER, LaReProcessor, box_prefix, format_box, parse_box, tiny_tokenizer


def test_committed_tokenizer_is_what_offline_training_produces(tmp_path):
    script = ("from lare.tiny_tokenizer import train_tiny_tokenizer; import sys; "
              "train_tiny_tokenizer().save(sys.argv[1])")
    out = tmp_path / "tok.json"
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, cwd=os.getcwd())
    fresh, committed = json.loads(out.read_text()), json.loads(TINY_TOKENIZER.read_text())
    assert fresh["model"]["vocab"] == committed["model"]["vocab"]
    assert fresh["model"]["merges"] == committed["model"]["merges"]


def test_tiny_tokenizer_writes_numbers_digit_by_digit_as_qwen_does():
    tok = tiny_tokenizer()
    pieces = [tok.decode([i]) for i in tok.encode("(120,340),(200,1000)", add_special_tokens=False)]
    assert "".join(pieces) == "(120,340),(200,1000)"
    digits = [p for p in pieces if p.isdigit()]
    assert all(len(p) == 1 for p in digits) and len(digits) == 13
    # the question words a trace uses are whole tokens (trained on the generator's own text)
    for word in ("Where", " colour", " directly", " quarter", " rectangle"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word


def test_box_text_round_trip_and_rejects():
    box = [0.125, 0.25, 0.5, 0.875]
    assert format_box(box) == "(125,250),(500,875)"
    assert parse_box("look " + format_box(box) + " there") == box
    assert parse_box("(500,250),(125,875)") is None  # x2 < x1
    assert parse_box("no box here") is None


def test_parse_box_can_read_corners_in_any_order():
    assert parse_box("(500,875),(125,250)", corners=True) == [0.125, 0.25, 0.5, 0.875]
    assert parse_box("(300,300),(300,300)", corners=True) == [0.3, 0.3, 0.3, 0.3]  # zero area: a crop grows it
    assert parse_box("(1,2)", corners=True) is None


@pytest.mark.parametrize("text, state", [
    ("", "open"), ("(", "open"), ("(12", "open"), ("(1234", "open"), ("(12345", None), ("(12,", "open"),
    ("(12,3),(", "open"), ("(12,3),(4,5)", "complete"), ("(12,3),(4,5))", None), ("12", None), ("(,", None),
    ("(1,2)(", None), ("(1,2),(3,4) ", None),
])
def test_box_prefix_follows_the_format_box_grammar(text, state):
    assert box_prefix(text) == state


def test_decoding_under_the_box_grammar_always_ends_in_a_box_parse_box_reads():
    p = LaReProcessor(tiny_tokenizer(), Qwen2VLImageProcessorPil())
    ids, texts = p.box_tokens
    assert {"(", ")", ",", "0", "9"} <= set(texts) and "),(" in texts  # merged pieces are allowed too
    rng = random.Random(0)
    for _ in range(300):  # random walks: whatever the model prefers among the allowed tokens
        partial = ""
        while True:
            allowed = p.box_allowed(partial)
            assert allowed and (p.box_end_id in allowed) == (box_prefix(partial) == "complete")
            tok = rng.choice(allowed)
            if tok == p.box_end_id:
                break
            partial += p.decode([tok])
            assert len(partial) <= len("(1000,1000),(1000,1000)")
        assert BOX_RE.fullmatch(partial) and parse_box(partial, corners=True) is not None


def test_prompt_layout_and_answer_extraction():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    p = LaReProcessor(tiny_tokenizer(), Qwen2VLImageProcessorPil())
    ids = p.prompt_ids("Which colour?", ["red", "blue"], n_image_tokens=3)
    assert ids.count(p.image_token_id) == 3
    text = p.decode(ids)
    assert text.startswith("<|im_start|>user\n<|vision_start|>") and "A. red\nB. blue" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert p.tokenizer.decode(p.encode("Find the red circle.")) == "Find the red circle."  # byte-level: lossless
    assert LaReProcessor.extract_answer("Find it. <|box_start|>(1,2),(3,4)<|box_end|>\nAnswer: blue.<|im_end|>") == "blue"
    assert LaReProcessor.extract_answer("<|lare_end|>Answer: 3<|im_end|>junk") == "3"


def test_configured_pixel_limits_win_over_a_hub_checkpoints_own(tmp_path):
    """A Hub Qwen2.5-VL folder's preprocessor_config.json carries min_pixels / max_pixels of its own (up to 12.8 M
    pixels): model.min_pixels / max_pixels must bound the visual tokens anyway, and a saved processor must reload
    with the same token counts at mixed image sizes."""
    from PIL import Image

    from lare.backbone import load_backbone
    from lare.config import load_config

    _, tiny = load_backbone(load_config(None, ["model.backbone=tiny-qwen2.5-vl"]).model)
    hub = tmp_path / "hub"
    tiny.tokenizer.save_pretrained(hub)
    (hub / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "do_resize": True, "resample": 3}))
    limit = 28 * 28 * 60
    processor = LaReProcessor.from_pretrained(hub, min_pixels=28 * 28 * 4, max_pixels=limit)
    images = [Image.new("RGB", size) for size in ((1920, 1080), (300, 200), (50, 800), (30, 30))]
    _, grids = processor.images(images)
    tokens = processor.num_visual_tokens(grids)
    assert all(4 <= n <= 60 for n in tokens), tokens
    assert tokens[0] > 30  # the limit is used, not the floor
    processor.save_pretrained(tmp_path / "saved")
    _, again = LaReProcessor.from_pretrained(tmp_path / "saved").images(images)
    assert again.tolist() == grids.tolist()


def test_chat_template_is_the_prompt_layout_and_is_saved(tmp_path):
    """A tokenizer without a chat template gets LaRe's: applied to a question (and its options) it gives the text of
    the prompt the processor encodes, with one <|image_pad|> per image; the saved processor carries it."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    p = LaReProcessor(tiny_tokenizer(), Qwen2VLImageProcessorPil())
    p.save_pretrained(tmp_path)
    loaded = LaReProcessor.from_pretrained(tmp_path)
    for question, choices in (("What colour is the star?", []), ("Which is larger?", ["the square", "the circle"])):
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": LaReProcessor.user_text(question, choices)}]}]
        expected = p.decode(p.prompt_ids(question, choices, n_image_tokens=1))
        assert "<|image_pad|>" in expected and (not choices or "B. the circle" in expected)
        for proc in (p, loaded):
            assert proc.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    assert "<|im_start|>assistant" in (tmp_path / "chat_template.jinja").read_text()

    # A tokenizer that has its own template (a real Qwen checkpoint) keeps it.
    own = tiny_tokenizer()
    own.chat_template = "{{ messages[0]['content'] }}"
    assert LaReProcessor(own, Qwen2VLImageProcessorPil()).tokenizer.chat_template == "{{ messages[0]['content'] }}"
