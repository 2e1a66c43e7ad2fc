"""Benchmark readers: the files VLMEvalKit and lmms-eval use, read into one kind of item.

    items = read_benchmark("mmbench", "/data/benchmarks")     # list[EvalItem]
    items = expand_circular(items)                              # MMBench's rotated copies, where a file lacks them
    records = [it.to_record() for it in items]                  # what lare.batch.example_from_record takes

For each benchmark a reader looks, under `data_root`, first for the VLMEvalKit TSV (`<root>/POPE.tsv` or
`<root>/pope/POPE.tsv`), then for the Hugging Face snapshot lmms-eval loads (`<root>/POPE/data/test-*.parquet`, ...).
`data_root` may also be the file itself. docs/benchmarks.md lists, per benchmark, the files, the columns read and
where to get them; nothing here downloads anything.

The question an item carries is what the model reads before the options (the LaRe prompt lists the options itself):
a hint is prepended the way lmms-eval and LLaVA do it. The harnesses' answer-format instruction ("Answer with the
option's letter ...") is kept apart in meta["instruction"]: LaRe models are trained to end with "Answer: X".
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from lare.eval.extract import LETTERS
from lare.eval.files import (BenchmarkFileError, blank_image, image_cell, is_missing, read_parquet, read_tsv, stitch,
                             text, where)


@dataclass
class EvalItem:
    benchmark: str
    id: str              # stable across reads: predictions are keyed by it
    question: str        # what the model reads (hint included), options not included
    choices: list[str]   # option texts in letter order; empty for yes/no and open questions
    answer: str          # gold: a letter (multiple choice), "yes"/"no" (POPE), the answer text (refocus)
    image: bytes         # encoded PNG/JPEG
    meta: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        """The trace-record dict lare.batch.example_from_record accepts (no reasoning steps)."""
        return {"id": self.id, "source": self.benchmark, "split": str(self.meta.get("split", "")), "image": self.image,
                "question": self.question, "choices": list(self.choices), "answer": self.answer, "steps": [],
                "meta": json.dumps(self.meta, sort_keys=True)}


class MissingBenchmarkFiles(FileNotFoundError):
    """No file of a benchmark under data_root; the message says which files were looked for and where to get them."""


# ---------------------------------------------------------------------------------------------
# Where the files are


@dataclass(frozen=True)
class Layout:
    tsv: tuple[str, ...]      # VLMEvalKit file names, in order of preference
    hf_dirs: tuple[str, ...]  # folder names a Hugging Face snapshot may have under data_root
    hf_globs: tuple[str, ...]  # Parquet files inside such a folder; the first glob that matches wins


def _locate(root: Path, name: str, layout: Layout) -> tuple[str, list[Path]] | None:
    """("tsv", [file]) or ("parquet", files), or None."""
    if root.is_file():
        return ("tsv" if root.suffix == ".tsv" else "parquet"), [root]
    for fname in layout.tsv:
        for p in (root / fname, root / name / fname):
            if p.is_file():
                return "tsv", [p]
    for d in layout.hf_dirs:
        base = root / d
        if not base.is_dir():
            continue
        for pattern in layout.hf_globs:
            files = sorted(base.glob(pattern))
            if files:
                return "parquet", files
    return None


def _expected(root: Path, name: str, layout: Layout) -> str:
    tsv = " or ".join(f"{root / f} (or {root / name / f})" for f in layout.tsv)
    hf = " or ".join(f"{root / d}/{layout.hf_globs[0]}" for d in layout.hf_dirs[:2])
    return f"{tsv} (VLMEvalKit TSV), or {hf} (Hugging Face Parquet)"


# ---------------------------------------------------------------------------------------------
# Columns


def get(row: dict, *names, default=None):
    """The first of `names` the row has (column spellings differ between VLMEvalKit and the HF datasets)."""
    for n in names:
        if n in row:
            return row[n]
    return default


def _id(benchmark: str, row: dict, n: int, *names) -> str:
    for name in names:
        v = row.get(name)
        if not is_missing(v):
            return f"{benchmark}/{text(v)}"
    return f"{benchmark}/{Path(row.get('_file', 'row')).stem}-{n}"


def _options_from_columns(row: dict, at: str) -> list[str]:
    """Option texts from columns A, B, ... (missing or empty cells end the list; a gap is an error)."""
    present = [L for L in LETTERS if L in row and not is_missing(row[L])]
    if present and "".join(present) != LETTERS[:len(present)]:
        gap = next(L for L, P in zip(LETTERS, present) if L != P)
        raise BenchmarkFileError(f"{at}: option columns {present} skip column '{gap}' (options must run A, B, C, ...)")
    return [text(row[L]) for L in present]


def _options_from_list(value, at: str, column: str) -> list[str]:
    """A list column, or its Python-literal text form (MMMU-Pro's `options` is a string like "['1', '2']")."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise BenchmarkFileError(f"{at}: column '{column}': {value[:80]!r} is not a list ({e})") from None
    if not isinstance(value, (list, tuple)):
        raise BenchmarkFileError(f"{at}: column '{column}': expected a list of options, got {type(value).__name__}")
    return [str(v).strip() for v in value]


def _gold_letter(value, choices: list[str], at: str, column: str = "answer") -> str:
    """A gold option letter, checked against the number of options; "(a)" (MMVP) and 0-based ints (ScienceQA) too."""
    if isinstance(value, int) and not isinstance(value, bool):
        letter = LETTERS[value] if 0 <= value < len(LETTERS) else "?"
    else:
        letter = text(value).strip("()").strip().upper()
    if is_missing(value) or not letter:
        raise BenchmarkFileError(f"{at}: column '{column}' is empty: no gold answer to score against (a test split "
                                 f"without public answers cannot be scored locally)")
    if letter not in LETTERS[:len(choices)]:
        raise BenchmarkFileError(f"{at}: column '{column}': gold {text(value)!r} is not one of the options "
                                 f"{list(LETTERS[:len(choices)])}")
    return letter


def _image(row: dict, at: str, column: str = "image", required: bool = True) -> bytes | None:
    data = image_cell(row.get(column), at, column, Path(row.get("_file", ".")).parent)
    if data is None and required:
        raise BenchmarkFileError(f"{at}: column '{column}' is empty: the question has no image")
    return data


def _meta(row: dict, **columns) -> dict:
    """meta[key] = the row's value (as text, whatever the format stored) under the first spelling present."""
    meta = {}
    for key, names in columns.items():
        v = get(row, *names)
        if not is_missing(v):
            meta[key] = text(v)
    return meta


def _source(row: dict, fmt_path: Path) -> Path:
    return row.get("_file", fmt_path)


L2 = ("l2-category", "L2-category", "l2_category", "L2_category")


# ---------------------------------------------------------------------------------------------
# The benchmarks. Each reader takes rows (from either format) and the file they came from.

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _pope(rows: list[dict], path: Path) -> list[EvalItem]:
    items = []
    for n, row in enumerate(rows, start=1):
        at = where(_source(row, path), row, n)
        answer = text(row.get("answer")).lower()
        if answer not in ("yes", "no"):
            raise BenchmarkFileError(f"{at}: column 'answer': {row.get('answer')!r} is not yes/no")
        # VLMEvalKit merges a question shared by several POPE splits into one row: category "random,popular".
        # lmms-eval's "Full" config has no category column; the split is the file's name.
        category = text(row.get("category")) or _pope_split_from_path(_source(row, path))
        categories = [c.strip().lower() for c in category.split(",") if c.strip()]
        if not categories:
            raise BenchmarkFileError(f"{at}: column 'category' is empty (POPE needs random / popular / adversarial)")
        # Ids: VLMEvalKit's index; lmms-eval's files number questions within each category (question_id).
        if text(row.get("index")):
            rid = f"pope/{text(row['index'])}"
        else:
            rid = f"pope/{categories[0]}-{text(get(row, 'question_id', 'id', default='')) or n}"
        meta = {"categories": categories, "category": ",".join(categories), "instruction":
                "Answer the question using a single word or phrase.", **_meta(row, index=("index",),
                question_id=("question_id",), image_source=("image_source",))}
        items.append(EvalItem("pope", rid, text(row.get("question")), [], answer, _image(row, at), meta))
    return items


def _pope_split_from_path(path: Path) -> str:
    for part in reversed(Path(path).parts):
        for split in ("adversarial", "popular", "random"):
            if part.lower().startswith(split):
                return split
    return ""


def _mmbench(rows: list[dict], path: Path) -> list[EvalItem]:
    items = []
    for n, row in enumerate(rows, start=1):
        at = where(_source(row, path), row, n)
        choices = _options_from_columns(row, at)
        if len(choices) < 2:
            raise BenchmarkFileError(f"{at}: fewer than two option columns (A, B, ...) are filled")
        answer = _gold_letter(row.get("answer"), choices, at)
        hint = text(row.get("hint"))
        question = text(row.get("question"))
        index = text(row.get("index"))
        meta = {"instruction": LETTER_INSTRUCTION, **_meta(row, index=("index",), category=("category",),
                **{"l2-category": L2}, split=("split",), source=("source",))}
        # VLMEvalKit / lmms-eval files carry the circular copies as extra rows: index + k * 10^6 is the k-th copy
        # of question `index` (VLMEvalKit's `g_index` column says it explicitly where present).
        if index.isdigit():
            g = text(row.get("g_index"))
            group = int(float(g)) if g else int(index) % 1_000_000
            meta["circular_group"], meta["shift"] = f"mmbench/{group}", int(index) // 1_000_000
        items.append(EvalItem("mmbench", _id("mmbench", row, n, "index"), f"{hint}\n{question}" if hint else question,
                              choices, answer, _image(row, at), meta))
    return items


def _scienceqa(rows: list[dict], path: Path) -> list[EvalItem]:
    items = []
    for n, row in enumerate(rows, start=1):
        at = where(_source(row, path), row, n)
        # VLMEvalKit: option columns and a letter; lmms-eval: a `choices` list and a 0-based `answer`.
        choices = _options_from_list(row["choices"], at, "choices") if "choices" in row else _options_from_columns(row, at)
        if len(choices) < 2:
            raise BenchmarkFileError(f"{at}: fewer than two options")
        answer = _gold_letter(row.get("answer"), choices, at)
        image = _image(row, at, required=False)
        hint = text(row.get("hint"))
        question = text(row.get("question"))
        meta = {"has_image": image is not None, "instruction": LETTER_INSTRUCTION,
                **_meta(row, index=("index",), category=("category",), subject=("subject",), grade=("grade",),
                        topic=("topic",), skill=("skill",), task=("task",), split=("split",))}
        items.append(EvalItem("scienceqa", _id("scienceqa", row, n, "index", "id"),
                              f"Context: {hint}\n{question}" if hint else question, choices, answer,
                              image if image is not None else blank_image(), meta))
    return items


_MMVP_OPTION = re.compile(r"\(([a-z])\)\s*", re.IGNORECASE)


def _mmvp(rows: list[dict], path: Path) -> list[EvalItem]:
    def index_of(row):
        v = text(get(row, "index", "Index", "lndex", "Question ID"))  # "lndex": the original MMVP CSV's typo
        return int(float(v)) if re.fullmatch(r"\d+(\.0)?", v) else None

    if any(index_of(r) is None for r in rows):
        bad = next(n for n, r in enumerate(rows, 1) if index_of(r) is None)
        raise BenchmarkFileError(f"{where(_source(rows[bad - 1], path), rows[bad - 1], bad)}: column 'index' must be "
                                 f"an integer (MMVP pairs are consecutive indices)")
    # A pair is two consecutive questions in index order (VLMEvalKit: rows 2i, 2i+1; lmms-eval: (Index-1)//2).
    rows = sorted(rows, key=index_of)
    items = []
    for n, row in enumerate(rows, start=1):
        at = where(_source(row, path), row, n)
        if "Options" in row or "options" in row:  # lmms-eval: "(a) Open (b) Closed", answer "(a)"
            raw = text(get(row, "Options", "options"))
            parts = _MMVP_OPTION.split(raw)[1:]
            choices = [t.strip() for t in parts[1::2]]
            if len(choices) < 2:
                raise BenchmarkFileError(f"{at}: column 'Options': {raw!r} is not '(a) ... (b) ...'")
        else:
            choices = _options_from_columns(row, at)
        answer = _gold_letter(get(row, "answer", "Correct Answer"), choices, at,
                              "answer" if "answer" in row else "Correct Answer")
        pair = (n - 1) // 2
        meta = {"pair": f"mmvp/pair{pair}", "index": index_of(row), "instruction": LETTER_INSTRUCTION,
                **_meta(row, category=("category", "Type"))}
        items.append(EvalItem("mmvp", f"mmvp/{index_of(row)}", text(get(row, "question", "Question")), choices,
                              answer, _image(row, at), meta))
    for a, b in zip(items[0::2], items[1::2]):
        if a.question != b.question:
            raise BenchmarkFileError(f"{path.name}: rows index={a.meta['index']} and index={b.meta['index']} should "
                                     f"form an MMVP pair but ask different questions ({a.question!r} / {b.question!r})")
    return items


_INLINE_OPTIONS = re.compile(r"\n?\s*Options:\s*", re.IGNORECASE)


def split_inline_options(question: str) -> tuple[str, list[str]] | None:
    """MMStar's Hugging Face file writes the options into the question: "...?\\nOptions: A: x, B: y, C: z".

    Returns (question without the options, option texts), or None when there is no such block. Each option runs
    to ", <next letter>:" so commas inside an option survive."""
    m = _INLINE_OPTIONS.search(question)
    if not m:
        return None
    stem, block = question[:m.start()].strip(), question[m.end():].strip()
    starts = []
    pos = 0
    for L in LETTERS:
        pat = re.compile(rf"(?:^|[,;\n]\s*){L}\s*[:.]\s*")
        hit = pat.search(block, pos)
        if not hit:
            break
        starts.append((hit.start(), hit.end()))
        pos = hit.end()
    if len(starts) < 2 or starts[0][0] != 0:
        return None
    ends = [s for s, _ in starts[1:]] + [len(block)]
    return stem, [block[e:end].strip() for (_, e), end in zip(starts, ends)]


def _mmstar(rows: list[dict], path: Path) -> list[EvalItem]:
    items = []
    for n, row in enumerate(rows, start=1):
        at = where(_source(row, path), row, n)
        question = text(row.get("question"))
        choices = _options_from_columns(row, at)
        inline = split_inline_options(question)
        if inline:  # drop the inline copy either way: the prompt lists the options once
            question = inline[0]
            choices = choices or inline[1]
        if len(choices) < 2:
            raise BenchmarkFileError(f"{at}: no options: neither columns A, B, ... nor an 'Options: A: ..., B: ...' "
                                     f"block in column 'question'")
        meta = {"instruction": LETTER_INSTRUCTION, **_meta(row, index=("index",), category=("category",),
                **{"l2-category": L2}, bench=("bench",))}
        items.append(EvalItem("mmstar", _id("mmstar", row, n, "index"), question, choices,
                              _gold_letter(row.get("answer"), choices, at), _image(row, at), meta))
    return items


MMMU_VISION_QUESTION = "Answer the following multiple-choice question in the image."
_IMAGE_TAG = re.compile(r"<image (\d+)>")


def _mmmu_pro(setting: str) -> Callable[[list[dict], Path], list[EvalItem]]:
    """standard: question + 10 options as text, the question's images stitched; vision: only a screenshot that
    shows question and options (the options are kept in meta for answer matching, not shown as text)."""

    def read(rows: list[dict], path: Path) -> list[EvalItem]:
        items = []
        for n, row in enumerate(rows, start=1):
            at = where(_source(row, path), row, n)
            options = _options_from_list(row["options"], at, "options") if "options" in row else \
                _options_from_columns(row, at)
            question = text(row.get("question"))
            if setting == "standard" and len(options) < 2:
                raise BenchmarkFileError(f"{at}: fewer than two options")
            # A vision row may carry no option texts (they are in the screenshot): MMMU-Pro has up to 10.
            options = options or [""] * 10
            answer = _gold_letter(row.get("answer"), options, at)
            if "image" in row:
                image = _image(row, at)
            else:  # HF standard: image_1 ... image_7, the ones the question or its options mention, in order
                tags = sorted({int(k) for k in _IMAGE_TAG.findall(question + " ".join(options))})
                cols = [f"image_{k}" for k in tags] or [c for c in sorted(row) if c.startswith("image_")]
                parts = [_image(row, at, c, required=False) for c in cols]
                parts = [p for p in parts if p is not None]
                if not parts:
                    raise BenchmarkFileError(f"{at}: no image in columns {cols}")
                image = stitch(parts)
            meta = {"setting": setting, "instruction": "Answer with the option letter from the given choices directly.",
                    **_meta(row, index=("index",), subject=("subject", "category"), img_type=("img_type",),
                            topic_difficulty=("topic_difficulty",))}
            if setting == "vision":
                meta["options"] = options
                items.append(EvalItem("mmmu_pro", _id("mmmu_pro/vision", row, n, "index", "id"), MMMU_VISION_QUESTION,
                                      [], answer, image, meta))
            else:
                items.append(EvalItem("mmmu_pro", _id("mmmu_pro/standard", row, n, "index", "id"), question, options,
                                      answer, image, meta))
        return items

    return read


# ---------------------------------------------------------------------------------------------
# The refocus benchmark: this project's own trace Parquet (pipelines/sources/refocus.py)

REFOCUS_SPLITS = ("test", "hard")


def _refocus_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if sorted(root.glob("*.parquet")):  # the folder of one split
        return sorted(root.glob("*.parquet"))
    for base in (root / "refocus", root):  # <root>/refocus/<split>/ or a build's own <out>/<split>/
        files = [f for s in REFOCUS_SPLITS for f in sorted((base / s).glob("*.parquet"))]
        if files:
            return files
    return []


def _read_trace_rows(files: list[Path]) -> list[dict]:
    """The rows of trace Parquet files, through the pipelines' own reader; each row remembers its file."""
    from pipelines.io import read_trace_file

    rows = []
    for f in files:
        try:
            table = read_trace_file(str(f))
        except Exception as e:  # pyarrow raises several types for a file that is not trace Parquet
            raise BenchmarkFileError(f"{f}: not a readable trace Parquet file ({e})") from None
        rows.extend({**r, "_file": f} for r in table.to_pylist())
    return rows


def _read_refocus(root: Path) -> list[EvalItem]:
    files = _refocus_files(root)
    if not files:
        raise MissingBenchmarkFiles(
            f"refocus: no trace Parquet under {root}: expected {root}/refocus/{{test,hard}}/*.parquet (or a folder of "
            f".parquet files). Build it: lare-build-data --source refocus --out DIR (the refocus source is generated locally).")
    rows = _read_trace_rows(files)
    sources = {r.get("source") for r in rows}
    rows = [r for r in rows if r.get("source", "refocus") == "refocus"]  # a build may mix sources in one split
    if not rows:
        raise BenchmarkFileError(f"refocus: {len(files)} Parquet file(s) under {root} hold no rows with "
                                 f"source='refocus' (sources: {sorted(map(str, sources))})")
    items = []
    for n, row in enumerate(rows, start=1):
        at = f"{Path(row['_file']).name} record {row.get('id') or f'#{n}'}"
        meta_text = row.get("meta") or "{}"
        try:
            meta = json.loads(meta_text) if isinstance(meta_text, str) else dict(meta_text)
        except json.JSONDecodeError as e:
            raise BenchmarkFileError(f"{at}: column 'meta': not JSON ({e})") from None
        meta.pop("objects", None)  # the scene description is for analysis, not needed to score
        choices = [str(c) for c in (row.get("choices") or [])]
        answer = text(row.get("answer"))
        if not answer:
            raise BenchmarkFileError(f"{at}: column 'answer' is empty")
        if choices and answer not in choices:
            raise BenchmarkFileError(f"{at}: column 'answer': {answer!r} is not one of the choices {choices}")
        image = row.get("image")
        if not image and row.get("image_uri"):
            image = _read_uri(row["image_uri"], at)
        if not image:
            raise BenchmarkFileError(f"{at}: neither column 'image' nor 'image_uri' holds the image")
        meta.update(split=text(row.get("split")) or Path(row["_file"]).parent.name, family=meta.get("family", "unknown"),
                    step_boxes=[(st or {}).get("bbox") for st in row.get("steps") or []])  # for the gold_boxes oracle
        if choices:
            meta["answer_letter"] = LETTERS[choices.index(answer)]
        items.append(EvalItem("refocus", str(row.get("id") or f"refocus/{n}"), text(row.get("question")), choices,
                              answer, bytes(image), meta))
    return items


def _read_uri(uri: str, at: str) -> bytes:
    from lare.storage import read_bytes

    try:
        return read_bytes(uri)
    except (OSError, ValueError) as e:
        raise BenchmarkFileError(f"{at}: column 'image_uri': cannot read {uri!r} ({e})") from None


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Benchmark:
    name: str
    layouts: dict[str, tuple[Layout, Callable]]  # part -> where its files are, how its rows become items
    get_files: str                                 # where users get the files (said when they are missing)
    unit: Callable[[EvalItem], str] = lambda it: it.id       # what `limit` counts
    stratum: Callable[[EvalItem], str] = lambda it: ""       # `limit` applies within each stratum


_VLMEVAL = "https://opencompass.openxlab.space/utils"
BENCHMARKS: dict[str, Benchmark] = {
    "pope": Benchmark(
        "pope", {"": (Layout(("POPE.tsv",), ("POPE", "pope"), ("data/test-*.parquet", "Full/**/*.parquet",
                                                              "**/*.parquet")), _pope)},
        f"VLMEvalKit: {_VLMEVAL}/VLMEval/POPE.tsv; Hugging Face: lmms-lab/POPE",
        stratum=lambda it: it.meta["categories"][0]),
    "mmbench": Benchmark(
        "mmbench", {"": (Layout(("MMBench_DEV_EN.tsv",), ("MMBench", "MMBench_EN", "mmbench"),
                                ("en/dev-*.parquet", "data/dev-*.parquet", "dev-*.parquet")), _mmbench)},
        f"VLMEvalKit: {_VLMEVAL}/benchmarks/MMBench/MMBench_DEV_EN.tsv; Hugging Face: lmms-lab/MMBench (config en, "
        f"split dev)",
        unit=lambda it: it.meta.get("circular_group", it.id)),
    "scienceqa": Benchmark(
        "scienceqa", {"": (Layout(("ScienceQA_TEST.tsv", "ScienceQA_VAL.tsv"), ("ScienceQA", "ScienceQA-IMG", "scienceqa"),
                                  ("ScienceQA-FULL/test-*.parquet", "ScienceQA-IMG/test-*.parquet",
                                   "data/test-*.parquet", "test-*.parquet")), _scienceqa)},
        f"VLMEvalKit: {_VLMEVAL}/benchmarks/ScienceQA/ScienceQA_TEST.tsv (or ScienceQA_VAL.tsv); Hugging Face: "
        f"lmms-lab/ScienceQA (ScienceQA-FULL or ScienceQA-IMG, split test)"),
    "scienceqa_val": Benchmark(
        "scienceqa_val", {"": (Layout(("ScienceQA_VAL.tsv",), ("ScienceQA", "ScienceQA-IMG", "scienceqa"),
                                      ("ScienceQA-FULL/validation-*.parquet", "ScienceQA-IMG/validation-*.parquet",
                                       "data/validation-*.parquet")), _scienceqa)},
        f"VLMEvalKit: {_VLMEVAL}/benchmarks/ScienceQA/ScienceQA_VAL.tsv; Hugging Face: lmms-lab/ScienceQA (validation)"),
    "mmvp": Benchmark(
        "mmvp", {"": (Layout(("MMVP.tsv",), ("MMVP", "mmvp"), ("data/*.parquet", "*.parquet", "**/*.parquet")), _mmvp)},
        f"VLMEvalKit: {_VLMEVAL}/VLMEval/MMVP.tsv; Hugging Face: lmms-lab-eval/MMVP",
        unit=lambda it: it.meta["pair"]),
    "mmstar": Benchmark(
        "mmstar", {"": (Layout(("MMStar.tsv",), ("MMStar", "mmstar"), ("mmstar.parquet", "*.parquet", "**/*.parquet")),
                        _mmstar)},
        f"VLMEvalKit: {_VLMEVAL}/VLMEval/MMStar.tsv; Hugging Face: Lin-Chen/MMStar (mmstar.parquet)"),
    "mmmu_pro": Benchmark(
        "mmmu_pro", {
            "standard": (Layout(("MMMU_Pro_10c.tsv",), ("MMMU_Pro", "mmmu_pro"),
                                ("standard (10 options)/test-*.parquet", "standard (10 options)/**/*.parquet")),
                         _mmmu_pro("standard")),
            "vision": (Layout(("MMMU_Pro_V.tsv",), ("MMMU_Pro", "mmmu_pro"),
                              ("vision/test-*.parquet", "vision/**/*.parquet")), _mmmu_pro("vision"))},
        f"VLMEvalKit: {_VLMEVAL}/VLMEval/MMMU_Pro_10c.tsv and {_VLMEVAL}/VLMEval/MMMU_Pro_V.tsv; Hugging Face: "
        f"MMMU/MMMU_Pro (configs 'standard (10 options)' and 'vision')",
        stratum=lambda it: it.meta["setting"]),
    "refocus": Benchmark(
        "refocus", {}, "generated by this project: lare-build-data (source refocus, splits test and hard)",
        stratum=lambda it: it.meta["split"]),
}


def _read_files(bench: Benchmark, root: Path) -> list[EvalItem]:
    if bench.name == "refocus":
        return _read_refocus(root)
    items, missing = [], []
    for part, (layout, build) in bench.layouts.items():
        if root.is_file() and len(bench.layouts) > 1:
            raise MissingBenchmarkFiles(f"{bench.name}: data_root must be a folder (it reads several files), got {root}")
        found = _locate(root, bench.name, layout)
        if found is None:
            missing.append(f"{part + ': ' if part else ''}{_expected(root, bench.name, layout)}")
            continue
        fmt, files = found
        rows = read_tsv(files[0]) if fmt == "tsv" else read_parquet(files)
        if not rows:
            raise BenchmarkFileError(f"{bench.name}: {files[0]} has no rows")
        items += build(rows, files[0])
    if not items:
        raise MissingBenchmarkFiles(f"{bench.name}: no benchmark file under {root}. Expected "
                                    f"{'; '.join(missing)}. Get them from {bench.get_files}.")
    return items


def _limit(items: list[EvalItem], limit: int, bench: Benchmark) -> list[EvalItem]:
    """The first `limit` units (questions; MMBench circular groups; MMVP pairs) of each stratum
    (POPE category, MMMU-Pro setting, refocus split), so a small run still covers every part."""
    kept: dict[str, list[str]] = defaultdict(list)
    out = []
    for it in items:
        units = kept[bench.stratum(it)]
        u = bench.unit(it)
        if u not in units:
            if len(units) >= limit:
                continue
            units.append(u)
        out.append(it)
    return out


def read_benchmark(name: str, data_root: str | Path, limit: int | None = None) -> list[EvalItem]:
    """Every item of benchmark `name` found under `data_root` (see BENCHMARKS and docs/benchmarks.md)."""
    name = name.lower()
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    root = Path(data_root).expanduser()
    if not root.exists():
        raise MissingBenchmarkFiles(f"{name}: data root {root} does not exist. Get the files from {bench.get_files}.")
    items = _read_files(bench, root)
    seen: dict[str, EvalItem] = {}
    for it in items:
        if it.id in seen:
            raise BenchmarkFileError(f"{name}: two rows have the same id {it.id!r} (predictions are keyed by id)")
        seen[it.id] = it
    if limit is not None:
        items = _limit(items, int(limit), bench)
    return items


# ---------------------------------------------------------------------------------------------
# MMBench circular evaluation


def rotate(item: EvalItem, shift: int) -> EvalItem:
    """The item with its options shifted left by `shift` (new option j = old option (j + shift) mod n), gold remapped."""
    n = len(item.choices)
    gold = LETTERS.index(item.answer)
    meta = dict(item.meta, shift=shift, circular_group=item.meta.get("circular_group", item.id))
    return replace(item, id=item.id if shift == 0 else f"{item.id}@c{shift}",
                   choices=[item.choices[(j + shift) % n] for j in range(n)],
                   answer=LETTERS[(gold - shift) % n], meta=meta)


def expand_circular(items: list[EvalItem]) -> list[EvalItem]:
    """VLMEvalKit's circular evaluation: a question with n options is asked n times, its options rotated by
    0 .. n-1 places; it counts as right only if every copy is answered right.

    Groups that already hold several copies (the released MMBench files do: index + k * 10^6) are kept as they
    are; a single multiple-choice item becomes its n rotations, copy k with id "<id>@c<k>". Items without
    options pass through. Every returned item has meta["circular_group"] and meta["shift"]."""
    groups: dict[str, list[EvalItem]] = defaultdict(list)
    for it in items:
        groups[it.meta.get("circular_group", it.id)].append(it)
    out = []
    for group, members in groups.items():
        if len(members) > 1 or len(members[0].choices) < 2:
            out += [replace(m, meta=dict(m.meta, circular_group=group, shift=m.meta.get("shift", 0))) for m in members]
            continue
        base = members[0]
        if base.answer not in LETTERS[:len(base.choices)]:
            raise ValueError(f"{base.id}: gold {base.answer!r} is not an option letter; cannot rotate")
        out += [rotate(replace(base, meta=dict(base.meta, circular_group=group)), k) for k in range(len(base.choices))]
    return out
