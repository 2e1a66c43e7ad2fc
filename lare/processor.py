"""Text and image processing for Qwen-VL backbones, without torchvision.

The stock Qwen processors bundle a video processor that needs torchvision; LaRe only needs images, so
this processor pairs the tokenizer with Qwen's PIL image processor (`Qwen2VLImageProcessorPil`, the same
dynamic-resolution resize and patchify). It also owns the prompt layout, the box text format and loads the
tiny presets' tokenizer (trained offline by lare/tiny_tokenizer.py).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from lare.answers import answer_span
from lare.boxes import ordered_corners

LARE_START, LARE_LATENT, LARE_END = "<|lare_start|>", "<|lare_latent|>", "<|lare_end|>"
LARE_TOKENS = [LARE_START, LARE_LATENT, LARE_END]
# The Qwen-VL specials the prompt layout relies on (real Qwen tokenizers already have them).
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<|box_start|>", "<|box_end|>",
]
BOX_TEMPLATE = "(N,N),(N,N)"  # what format_box writes; N: 1-4 digits (BOX_RE reads it, box_prefix follows it)
BOX_RE = re.compile(re.escape(BOX_TEMPLATE).replace("N", r"(\d{1,4})"))
BOX_CHARS = frozenset("0123456789(),")
ANSWER_PREFIX = "Answer: "
IMAGE_PART = "<|vision_start|><|image_pad|><|vision_end|>"  # what Qwen's chat templates render for an image
# The prompt layout below as a chat template, for a tokenizer that has none (the tiny presets): an export then
# tells other tools (a chat UI, vLLM, `apply_chat_template`) how LaRe was prompted. One image part becomes one
# <|image_pad|>, which the image processor's token count expands, as with Qwen's own templates. No default
# system turn (the tiny presets were never tuned with one); a checkpoint's own template is used as it is.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '" + IMAGE_PART + "' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


def format_box(box) -> str:
    """Normalised [x1, y1, x2, y2] -> Qwen-VL grounding text on the 0..1000 grid: (x1,y1),(x2,y2)."""
    q = [min(1000, max(0, round(v * 1000))) for v in box]
    return f"({q[0]},{q[1]}),({q[2]},{q[3]})"


def parse_box(text: str, corners: bool = False) -> list[float] | None:
    """Inverse of format_box; None when the text holds no well-formed, non-degenerate box. corners=True reads
    the two points as any two opposite corners (sorted per axis, possibly of zero area): what a crop tool does
    with coordinates given in the wrong order."""
    m = BOX_RE.search(text)
    if not m:
        return None
    x1, y1, x2, y2 = (min(1000, int(v)) / 1000 for v in m.groups())
    if corners:
        return ordered_corners([x1, y1, x2, y2])
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2, y2]


def box_prefix(text: str) -> str | None:
    """Where `text` stands in the box grammar: "complete" when it is a whole box as format_box writes it, "open"
    when it can still grow into one, None when it cannot. Constrained decoding (lare/model/generate.py) keeps a
    generated box inside this grammar: a crop needs a box it can parse, whatever box the model chooses."""
    i = 0
    for part in BOX_TEMPLATE:
        if i == len(text):
            return "open"
        if part == "N":
            j = i
            while j < len(text) and text[j] in "0123456789" and j - i < 4:
                j += 1
            if j == i:
                return None
            if j == len(text):
                return "open"
            i = j
        elif text[i] != part:
            return None
        else:
            i += 1
    return "complete" if i == len(text) else None


TINY_TOKENIZER = Path(__file__).parent / "assets" / "tiny_tokenizer.json"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(TINY_TOKENIZER)), eos_token="<|im_end|>",
        pad_token="<|endoftext|>", additional_special_tokens=QWEN_SPECIALS[1:],
    )


class LaReProcessor:
    """Tokenizer + Qwen image processor + the prompt layout every paradigm shares.

    Prompt (the tokenizer's chat template; the tiny presets' CHAT_TEMPLATE gives):
    <|im_start|>user\n<|vision_start|><|image_pad|>*P<|vision_end|>{question}{options}<|im_end|>\n<|im_start|>assistant\n
    """

    def __init__(self, tokenizer, image_processor: Qwen2VLImageProcessorPil, crop_max_pixels: int | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.crop_max_pixels = crop_max_pixels or image_processor.size["longest_edge"] // 4
        added = tokenizer.add_special_tokens({"additional_special_tokens": LARE_TOKENS}, replace_extra_special_tokens=False)
        del added  # the caller resizes the embeddings to len(tokenizer)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS + LARE_TOKENS}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"tokenizer lacks the Qwen-VL special tokens {missing}; is this a Qwen-VL checkpoint?")
        self.ids = ids
        self.pad_id = ids["<|endoftext|>"]
        self.image_token_id = ids["<|image_pad|>"]
        self.vision_start_id, self.vision_end_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
        self.box_start_id, self.box_end_id = ids["<|box_start|>"], ids["<|box_end|>"]
        self.im_end_id = ids["<|im_end|>"]
        self.lare_start_id, self.latent_id, self.lare_end_id = (ids[t] for t in LARE_TOKENS)
        self.stop_ids = {self.im_end_id, self.pad_id}
        if tokenizer.eos_token_id is not None:
            self.stop_ids.add(tokenizer.eos_token_id)
        if not tokenizer.chat_template:  # a real Qwen tokenizer keeps its own; save_pretrained writes this one
            tokenizer.chat_template = CHAT_TEMPLATE

    @functools.cached_property
    def box_tokens(self) -> tuple[list[int], list[str]]:
        """The tokens a box can be written with (digits, brackets, commas; merged ones too, such as "),(") and
        their text. Read from the vocabulary's raw strings, which for these characters are the text itself."""
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        pairs = [(i, t) for i, t in enumerate(vocab) if t and set(t) <= BOX_CHARS]
        return [i for i, _ in pairs], [t for _, t in pairs]

    def box_allowed(self, partial: str) -> list[int]:
        """Token ids that keep a box being generated (its text so far: `partial`) inside the box grammar:
        <|box_end|> only once the box is complete."""
        ids = [i for i, t in zip(*self.box_tokens) if box_prefix(partial + t) is not None]
        return ids + [self.box_end_id] if box_prefix(partial) == "complete" else ids

    # ---- images ---------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.image_processor.patch_size

    @property
    def merge_size(self) -> int:
        return self.image_processor.merge_size

    @property
    def token_pixels(self) -> int:
        """Side in pixels (of the resized image) that one merged visual token covers: 28 for Qwen2.5-VL."""
        return self.patch_size * self.merge_size

    def images(self, images: list[Image.Image], max_pixels: int | None = None,
               min_pixels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL images -> (pixel_values [sum patches, C*T*p*p], image_grid_thw [N, 3] in patches)."""
        kwargs = {}
        if max_pixels is not None:
            low = min_pixels if min_pixels is not None else self.image_processor.size["shortest_edge"]
            kwargs["size"] = {"shortest_edge": min(low, max_pixels), "longest_edge": max_pixels}
        out = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt", **kwargs)
        return out["pixel_values"], out["image_grid_thw"]

    def encode_crop(self, image: Image.Image, box) -> tuple[torch.Tensor, torch.Tensor]:
        """The crop baseline's re-encoded region: the box's pixels zoomed (or shrunk) to an area of crop_max_pixels,
        as thinking-with-images systems re-encode a region at the encoder's working resolution. A 28-px box on a
        224-px image becomes a 112 x 112 crop, 16 tokens of 28 px (it was grown to 28 px, 4 tokens, before)."""
        from lare.boxes import crop_box

        return self.images([crop_box(image, box)], max_pixels=self.crop_max_pixels, min_pixels=self.crop_max_pixels)

    def num_visual_tokens(self, grid_thw: torch.Tensor) -> list[int]:
        return (grid_thw.prod(-1) // self.merge_size**2).tolist()

    # ---- text -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def image_ids(self, n_tokens: int) -> list[int]:
        return [self.vision_start_id] + [self.image_token_id] * n_tokens + [self.vision_end_id]

    @staticmethod
    def user_text(question: str, choices: list[str]) -> str:
        """The text of the user turn after the image: the question, then the options lettered A, B, ..."""
        options = ""
        if choices:
            options = "\nOptions:\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
        return question + options

    def prompt_ids(self, question: str, choices: list[str], n_image_tokens: int) -> list[int]:
        """The prompt as the tokenizer's chat template renders one user turn (the image, then the question) with the
        assistant's turn opened: a checkpoint's own template, with its default system turn when it has one (Qwen2.5-VL
        was tuned with "You are a helpful assistant."), or CHAT_TEMPLATE. The image part becomes n_image_tokens."""
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": self.user_text(question, choices)}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before, image, after = text.partition(IMAGE_PART)
        if not image:
            raise ValueError(f"the tokenizer's chat template renders no {IMAGE_PART} for an image part: {text!r}")
        return self.encode(before) + self.image_ids(n_image_tokens) + self.encode(after)

    def step_ids(self, text: str, box) -> list[int]:
        """One CoT step as text; its box, when it has one, in Qwen-VL grounding form."""
        ids = self.encode(text)
        if box is not None:
            ids += self.encode(" ") + [self.box_start_id] + self.encode(format_box(box)) + [self.box_end_id]
        return ids + self.encode("\n")

    def answer_ids(self, answer: str) -> tuple[list[int], list[int]]:
        """(the 'Answer: ' lead-in, the answer itself + <|im_end|>): the latter is what answer CE scores."""
        return self.encode(ANSWER_PREFIX), self.encode(answer) + [self.im_end_id]

    @staticmethod
    def extract_answer(text: str) -> str:
        """The answer from generated text (lare.answers.answer_span), without a closing full stop."""
        return answer_span(text).strip(".").strip()

    # ---- persistence ----------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        (path / "lare_processor.json").write_text(json.dumps({"crop_max_pixels": self.crop_max_pixels}))

    @classmethod
    def from_pretrained(cls, path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None,
                        crop_max_pixels: int | None = None) -> "LaReProcessor":
        path = Path(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        processor_template = path / "chat_template.json"
        if not tokenizer.chat_template and processor_template.is_file():
            # The processor's copy of the template, which AutoTokenizer does not read: some folders have only it.
            tokenizer.chat_template = json.loads(processor_template.read_text())["chat_template"]
        # As min_pixels / max_pixels, not as size=: a Hub checkpoint's preprocessor_config.json has its own
        # min_pixels / max_pixels keys, and Qwen2VLImageProcessor lets those override a size given beside them (a
        # configured 60-token limit would give a 1920x1080 image 2691 tokens).
        limits = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True, **limits)
        extra = path / "lare_processor.json"
        if crop_max_pixels is None and extra.is_file():
            crop_max_pixels = json.loads(extra.read_text())["crop_max_pixels"]
        return cls(tokenizer, image_processor, crop_max_pixels)
