"""The tiny presets' tokenizer, trained offline: `RAYON_NUM_THREADS=1 python -m lare.tiny_tokenizer` re-creates
lare/assets/tiny_tokenizer.json, which the presets load (lare.processor.tiny_tokenizer). It learns its merges from the
text of generated refocus traces, so it lives apart from the processor, which the generator itself uses.
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lare.processor import QWEN_SPECIALS, TINY_TOKENIZER, format_box
from pipelines.sources.refocus import ALL_FAMILIES, PRETRAIN_FAMILIES, generate


def _tokenizer_corpus() -> list[str]:
    """The text of generated refocus traces (every family, grounding included: questions, options, steps, answers)
    plus the words and formats other sources use."""
    colours = "red green blue yellow purple orange cyan white black gray brown pink".split()
    shapes = "circle square triangle star diamond hexagon rectangle shape shapes object objects".split()
    words = ("what which how many is are there the a an of in on at to it its this that colour color "
             "larger smaller bigger than same as find look locate count compare answer question image "
             "picture region yes no there step first then so and or not any other option options "
             "does do has have with near between from where list").split()
    lines = [" ".join(words), " ".join(colours), " ".join(shapes), "A. B. C. D. Options:", "Answer: yes", "Answer: no"]
    for i in range(3000):
        t = generate("train", i, seed=4242, families=ALL_FAMILIES + PRETRAIN_FAMILIES, render_image=False)
        lines += [t["question"], f"Answer: {t['answer']}", *t["choices"], *(step["text"] for step in t["steps"])]
    lines += [format_box([i / 97, j / 89, 0.9, 0.95]) for i in range(40) for j in range(3)]
    return lines


def train_tiny_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """A byte-level BPE trained offline on the trace text (about ten seconds).

    Byte-level means any text still encodes (no unknown token), so other datasets work with it too.
    BPE training is deterministic only single-threaded (RAYON_NUM_THREADS=1), so the presets load the
    committed result, `lare/assets/tiny_tokenizer.json`; `python -m lare.tiny_tokenizer` re-creates it.
    """
    tok = Tokenizer(models.BPE())
    # Digits one by one, as Qwen's own pre-tokenizer splits them (`\p{N}`): a box's 0..1000 coordinates are then
    # written and read digit by digit with ten embeddings, the same way for every number (a BPE over whole
    # numbers had "120" as one token and "200" as "20" + "0").
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=QWEN_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    return tok


if __name__ == "__main__":
    if os.environ.get("RAYON_NUM_THREADS") != "1":
        raise SystemExit("run as: RAYON_NUM_THREADS=1 python -m lare.tiny_tokenizer  (BPE training is only deterministic "
                         "single-threaded)")
    TINY_TOKENIZER.parent.mkdir(parents=True, exist_ok=True)
    train_tiny_tokenizer().save(str(TINY_TOKENIZER))
    print(f"wrote {TINY_TOKENIZER}")
