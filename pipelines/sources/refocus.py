"""The refocus benchmark: a generated, seeded VQA set whose questions need a look at particular regions.

Every step has a box (the object, the objects, the quarter, or the whole image for a search that
finds nothing). Each image holds 6-12 small non-overlapping shapes (6 shapes x 8 colours, 10-28 px at 224 px; the
hard split has 12-18 objects of 8-18 px) on a lightly textured grey background. Six question
families, each answered in 1-3 steps that point at boxes:

  attribute        What colour is the star? / What shape is the red object?
  relation         What shape is directly right of the red circle? (find the anchor, then its neighbour)
  counting         How many blue shapes are in the top-left quarter?
  comparison       Is the square larger than the triangle?
  existence        Is there a red circle in the image? (POPE style: random, popular, adversarial negatives)
  multiple_choice  an attribute or relation question with four options

Benchmark v2 adds two families where looking again matters (families=all has all eight):

  chain            What colour is the object directly left of the object directly above the red object? (2-3 hops
                   in scenes of 10-16 objects; each next object is found only relative to the last)
  fine_detail      What shape is the small object in the top-left quarter? (rendered at 448 px with an object of
                   8-13 px: the base tokens see it downsampled to 4-6 px, a re-encoded crop sees it whole)

and a pretraining family that is never part of "all": grounding (jobs/pretrain.py stage B).

Answers are balanced by construction: the answer is drawn uniformly first and the scene is built
to make it true, so no question is answerable from its text alone (a test checks that a
question-only majority baseline stays near chance). Every sample has its own RNG derived from
(seed, split, index): rows do not depend on how the work is split across workers.
No object straddles the image's midlines, so "in the top-left quarter" is never ambiguous.

With the option colour_only, every question names objects by colour and place only and never asks for a
shape (the shapes are still drawn): What colour is the object in the top-left quarter? / What colour is the
object directly right of the red object? / Is there a red object in the top-left quarter? A vision tower that
starts from random weights learns colour within minutes on a CPU and shape identity only much later, so the
tiny demo trains on this variant; the full benchmark is the default.
"""

import numpy as np
from PIL import Image, ImageDraw

NOTE = "Generated here (no download): deterministic by seed; the default dataset of the demo and benchmarks."

# Bumped whenever the same seed and options draw other rows; the manifest records it and training refuses traces
# of another version (2: the rectangle replaced the hexagon).
VERSION = 2
SPLITS = ("train", "val", "test", "hard")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "hard": 3}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "rectangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "diamond": "diamonds", "rectangle": "rectangles"}
COLOURS = {  # saturated or bright, all far from the mid-grey background
    "red": (220, 35, 35), "green": (40, 175, 60), "blue": (40, 80, 235), "yellow": (245, 225, 40),
    "purple": (155, 60, 205), "orange": (250, 140, 25), "cyan": (40, 215, 225), "white": (250, 250, 250),
}
COLOUR_NAMES = tuple(COLOURS)
FAMILIES = ("attribute", "relation", "counting", "comparison", "existence", "multiple_choice")
V2_FAMILIES = ("chain", "fine_detail")  # benchmark v2: where looking again matters
ALL_FAMILIES = FAMILIES + V2_FAMILIES
POPE_TYPES = ("random", "popular", "adversarial")
DIRECTIONS = ("right", "left", "above", "below")
QUARTERS = ("top-left", "top-right", "bottom-left", "bottom-right")

DEFAULTS = {
    "num_train": 4000,  # rows per split; 0 skips the split
    "num_val": 256,
    "num_test": 512,
    "num_hard": 512,
    "image_size": 224,  # square images; object sizes scale with it (the ranges below are at 224)
    "families": "all",  # comma-separated subset of the families, or "all"
    "colour_only": False,  # questions name and ask colours and places only, never shapes (the tiny demo)
}

NORMAL = {"objects": (6, 12), "size": (10, 28), "max_count": 4}
HARD = {"objects": (12, 18), "size": (8, 18), "max_count": 5}
GAP = 3  # px of background kept between objects


class _Retry(Exception):
    """A random layout did not fit; the generator draws again from the same (seeded) RNG."""


# ---------------------------------------------------------------------------------------------
# The driver side: one light raw row per sample.


def plan(opts: dict, seed: int) -> list[dict]:
    rows = []
    for split in SPLITS:
        for i in range(int(opts[f"num_{split}"])):
            rows.append({"source_id": f"{split}-{i:07d}", "split": split, "raw": {"split": split, "index": i}})
    return rows


def families_of(opts: dict) -> tuple:
    families = ALL_FAMILIES if opts["families"] == "all" else tuple(f.strip() for f in opts["families"].split(","))
    unknown = set(families) - set(ALL_FAMILIES) - set(PRETRAIN_FAMILIES)
    if unknown or not families:
        raise ValueError(f"refocus option 'families' has unknown families {sorted(unknown)}; "
                         f"choose from {ALL_FAMILIES + PRETRAIN_FAMILIES}")
    return families


def flag(opts: dict, key: str) -> bool:
    """A boolean option given as a bool (config) or as text (--option key=true on the command line)."""
    value = opts[key]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"refocus option {key!r} must be true or false, got {value!r}")
    return text in ("true", "1", "yes")


def check_options(opts: dict):
    """Called on the driver before any work: a bad option fails the job, not every row."""
    families_of(opts)
    flag(opts, "colour_only")
    if int(opts["image_size"]) < 112:
        raise ValueError(f"refocus option 'image_size' must be at least 112, got {opts['image_size']}")
    for split in SPLITS:
        if int(opts[f"num_{split}"]) < 0:
            raise ValueError(f"refocus option 'num_{split}' must be >= 0")


def convert(raw: dict, blob, opts: dict, seed: int) -> dict:
    return generate(raw["split"], raw["index"], seed=seed, size=int(opts["image_size"]), families=families_of(opts),
                    colour_only=flag(opts, "colour_only"))


# ---------------------------------------------------------------------------------------------
# Scenes: objects as (shape, colour, box) with box = (x1, y1, x2, y2) of the shape's square cell.


class Scene:
    def __init__(self, rng: np.random.Generator, size: int, hard: bool, colour_only: bool = False):
        self.rng, self.size, self.hard, self.colour_only = rng, size, hard, colour_only
        self.cfg = HARD if hard else NORMAL
        self.scale = size / 224
        self.objects: list[dict] = []

    def draw_size(self, lo: float | None = None, hi: float | None = None) -> int:
        a, b = self.cfg["size"]
        lo, hi = (a if lo is None else lo), (b if hi is None else hi)
        return int(round(self.rng.uniform(lo, hi) * self.scale))

    def free(self, box) -> bool:
        x1, y1, x2, y2 = box
        half = self.size / 2
        if x1 < 1 or y1 < 1 or x2 > self.size - 1 or y2 > self.size - 1:
            return False
        if x1 < half < x2 or y1 < half < y2:  # straddles a midline: quarters would be ambiguous
            return False
        return all(x2 + GAP <= o["box"][0] or o["box"][2] + GAP <= x1 or y2 + GAP <= o["box"][1] or o["box"][3] + GAP <= y1
                   for o in self.objects)

    def add(self, shape, colour, s, region=None, ok=None, tries=200) -> dict:
        """Place a shape of side s at a random free spot inside region (x1, y1, x2, y2), satisfying ok(box)."""
        rx1, ry1, rx2, ry2 = region or (0, 0, self.size, self.size)
        for _ in range(tries):
            x = int(self.rng.integers(rx1, max(rx1 + 1, rx2 - s + 1)))
            y = int(self.rng.integers(ry1, max(ry1 + 1, ry2 - s + 1)))
            box = (x, y, x + s, y + s)
            if self.free(box) and (ok is None or ok(box)):
                obj = {"shape": shape, "colour": colour, "s": s, "box": box}
                self.objects.append(obj)
                return obj
        raise _Retry

    def fill(self, n_total: int, allowed):
        """Add random distractors until n_total objects; allowed(shape, colour, box) vetoes ambiguous ones."""
        misses = 0
        while len(self.objects) < n_total and misses < 40:
            shape = SHAPES[self.rng.integers(len(SHAPES))]
            colour = COLOUR_NAMES[self.rng.integers(len(COLOUR_NAMES))]
            s = self.draw_size()
            try:
                self.add(shape, colour, s, ok=lambda b: allowed(shape, colour, b), tries=30)
            except _Retry:
                misses += 1
        if len(self.objects) < self.cfg["objects"][0]:
            raise _Retry

    def n_objects(self) -> int:
        lo, hi = self.cfg["objects"]
        return int(self.rng.integers(lo, hi + 1))

    def quarter_box(self, q: str):
        h = self.size // 2
        col, row = (0 if "left" in q else 1), (0 if "top" in q else 1)
        return (col * h, row * h, col * h + h, row * h + h)

    def quarter_of(self, box) -> str:
        """The quarter a placed box lies in (boxes never straddle a midline: free() refuses them)."""
        h = self.size / 2
        return QUARTERS[(box[0] >= h) + 2 * (box[1] >= h)]


def tight_box(obj) -> list[float]:
    """The shape's own extent (a star or rectangle does not fill its cell), in pixels."""
    pts = outline(obj)
    if pts is None:
        return [float(v) for v in obj["box"]]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [min(xs), min(ys), max(xs), max(ys)]


def union_box(objs) -> list[float] | None:
    if not objs:
        return None
    boxes = [tight_box(o) for o in objs]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def outline(obj):
    x1, y1, x2, y2 = obj["box"]
    s, cx, cy = x2 - x1, (x1 + x2) / 2, (y1 + y2) / 2
    shape = obj["shape"]
    if shape in ("circle", "square"):
        return None
    if shape == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if shape == "diamond":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    if shape == "rectangle":  # a lying bar, half as high as wide: at 8 px still apart from every other shape
        return [(x1, cy - s / 4), (x2, cy - s / 4), (x2, cy + s / 4), (x1, cy + s / 4)]
    # star: 5 points, pointing up, shifted down so its visual centre sits in the cell
    r_out, r_in = s / 2, s / 2 * 0.45
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r_out, r_in)
    dy = (s / 2 - r_out * np.cos(np.pi / 5)) / 2
    return [(cx + r * np.cos(a), cy + dy + r * np.sin(a)) for r, a in zip(radii, angles)]


def render(scene: Scene) -> Image.Image:
    rng, size = scene.rng, scene.size
    # Light texture: a random grey-ish tint plus smooth low-frequency blotches (cheap to encode as PNG).
    base = rng.integers(95, 135) + rng.integers(-8, 9, size=3)
    blotches = rng.uniform(-12, 12, size=(6, 6, 1)) + rng.uniform(-3, 3, size=(6, 6, 3))
    small = np.clip(base + blotches, 0, 255).astype(np.uint8)
    im = Image.fromarray(small, "RGB").resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(im)
    for obj in scene.objects:
        draw_object(draw, obj, COLOURS[obj["colour"]])
    return im


def draw_object(draw: ImageDraw.ImageDraw, obj: dict, fill) -> None:
    """One object's pixels, as render() draws them (pretraining draws its label map with the same shapes)."""
    x1, y1, x2, y2 = obj["box"]
    if obj["shape"] == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif obj["shape"] == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
    else:
        draw.polygon(outline(obj), fill=fill)


# ---------------------------------------------------------------------------------------------
# Question families. Each returns (question, answer, choices, steps, meta) on a scene it fills.
# steps are (text, objects or a pixel box or None).


def _pick(rng, seq, exclude=()):
    options = [x for x in seq if x not in exclude]
    return options[rng.integers(len(options))]


def q_attribute(sc: Scene, ask=None):
    rng = sc.rng
    if sc.colour_only:  # the place names the object: it is alone in its quarter
        quarter, colour = QUARTERS[rng.integers(4)], _pick(rng, COLOUR_NAMES)
        target = sc.add(_pick(rng, SHAPES), colour, sc.draw_size(), region=sc.quarter_box(quarter))
        sc.fill(sc.n_objects(), lambda sh, co, b: sc.quarter_of(b) != quarter)
        return (f"What colour is the object in the {quarter} quarter?", colour, [
            (f"Look at the {quarter} quarter; the object there is {colour}.", [target])], {"asks": "colour", "quarter": quarter})
    ask = ask or ("colour" if rng.random() < 0.5 else "shape")
    shape, colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    target = sc.add(shape, colour, sc.draw_size())
    if ask == "colour":  # the shape names the object: no other object has it
        sc.fill(sc.n_objects(), lambda sh, co, b: sh != shape)
        return (f"What colour is the {shape}?", colour, [
            (f"Find the {shape}; it is {colour}.", [target])], {"asks": "colour"})
    sc.fill(sc.n_objects(), lambda sh, co, b: co != colour)
    return (f"What shape is the {colour} object?", shape, [
        (f"Find the {colour} object; it is a {shape}.", [target])], {"asks": "shape"})


def _in_band(anchor_box, box, direction) -> bool:
    """box lies entirely on `direction` side of the anchor and overlaps its row (or column)."""
    ax1, ay1, ax2, ay2 = anchor_box
    x1, y1, x2, y2 = box
    if direction in ("right", "left"):
        overlaps = y1 < ay2 and y2 > ay1
        return overlaps and (x1 >= ax2 if direction == "right" else x2 <= ax1)
    overlaps = x1 < ax2 and x2 > ax1
    return overlaps and (y2 <= ay1 if direction == "above" else y1 >= ay2)


def _gap(anchor_box, box, direction) -> float:
    ax1, ay1, ax2, ay2 = anchor_box
    x1, y1, x2, y2 = box
    return {"right": x1 - ax2, "left": ax1 - x2, "above": ay1 - y2, "below": y1 - ay2}[direction]


def q_relation(sc: Scene, ask=None):
    rng = sc.rng
    ask = "colour" if sc.colour_only else ask or ("shape" if rng.random() < 0.5 else "colour")
    direction = DIRECTIONS[rng.integers(4)]
    a_shape, a_colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    t_shape, t_colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    if (t_shape, t_colour) == (a_shape, a_colour) or (sc.colour_only and t_colour == a_colour):
        raise _Retry
    anchor = sc.add(a_shape, a_colour, sc.draw_size())
    s = sc.draw_size()
    ax1, ay1, ax2, ay2 = anchor["box"]
    acx, acy = (ax1 + ax2) / 2, (ay1 + ay2) / 2
    jitter = anchor["s"] / 4
    # the neighbour's centre stays within a quarter of the anchor's size of the anchor's row/column
    target = sc.add(t_shape, t_colour, s, ok=lambda b: _in_band(anchor["box"], b, direction)
                    and abs(((b[1] + b[3]) / 2 if direction in ("right", "left") else (b[0] + b[2]) / 2)
                            - (acy if direction in ("right", "left") else acx)) <= jitter
                    and _gap(anchor["box"], b, direction) <= 70 * sc.scale)
    t_gap = _gap(anchor["box"], target["box"], direction)

    def allowed(sh, co, b):  # anchor stays unique; nothing else in the band nearer than the target
        if (sh, co) == (a_shape, a_colour) or (sc.colour_only and co == a_colour):
            return False
        return not (_in_band(anchor["box"], b, direction) and _gap(anchor["box"], b, direction) <= t_gap + 2)

    sc.fill(sc.n_objects(), allowed)
    where = {"right": "directly right of", "left": "directly left of", "above": "directly above", "below": "directly below"}[direction]
    look = {"right": "Look directly right of it", "left": "Look directly left of it", "above": "Look directly above it", "below": "Look directly below it"}[direction]
    steps = [(f"Find the {a_colour} {a_shape}.", [anchor]), (f"{look}: {_a(t_colour)} {t_shape}.", [target])]
    meta = {"direction": direction, "asks": ask}
    if sc.colour_only:  # the anchor is the only object of its colour
        steps = [(f"Find the {a_colour} object.", [anchor]), (f"{look}: {_a(t_colour)} object.", [target])]
        return f"What colour is the object {where} the {a_colour} object?", t_colour, steps, meta
    if ask == "shape":
        return f"What shape is {where} the {a_colour} {a_shape}?", t_shape, steps, meta
    return f"What colour is the shape {where} the {a_colour} {a_shape}?", t_colour, steps, meta


def q_counting(sc: Scene):
    rng = sc.rng
    n = int(rng.integers(0, sc.cfg["max_count"] + 1))
    quarter = QUARTERS[rng.integers(4)]
    qbox = sc.quarter_box(quarter)
    by_colour = sc.colour_only or rng.random() < 0.5
    attr = _pick(rng, COLOUR_NAMES) if by_colour else _pick(rng, SHAPES)
    matches = (lambda sh, co: co == attr) if by_colour else (lambda sh, co: sh == attr)
    targets = []
    for _ in range(n):
        shape = _pick(rng, SHAPES) if by_colour else attr
        colour = attr if by_colour else _pick(rng, COLOUR_NAMES)
        targets.append(sc.add(shape, colour, sc.draw_size(), region=qbox))

    sc.fill(max(sc.n_objects(), n + 3), lambda sh, co, b: not (matches(sh, co) and sc.quarter_of(b) == quarter))
    what = f"{attr} shapes" if by_colour else PLURALS[attr]
    one = f"{attr} shape" if by_colour else attr
    count_text = f"There are no {what} in it." if n == 0 else f"There is 1 {one} in it." if n == 1 else f"There are {n} {what} in it."
    quarter_px = [float(v) for v in qbox]
    steps = [(f"Look at the {quarter} quarter.", quarter_px), (count_text, targets or quarter_px)]
    return f"How many {what} are in the {quarter} quarter?", str(n), steps, {"quarter": quarter, "by": "colour" if by_colour else "shape"}


def q_comparison(sc: Scene):
    rng = sc.rng
    vocab = COLOUR_NAMES if sc.colour_only else SHAPES  # what names the two objects
    a = _pick(rng, vocab)
    b = _pick(rng, vocab, exclude=(a,))
    word = "larger" if rng.random() < 0.5 else "smaller"
    yes = rng.random() < 0.5
    lo, hi = sc.cfg["size"]
    big = sc.draw_size(lo + 0.55 * (hi - lo), hi)
    small = sc.draw_size(lo, max(lo, big / sc.scale / 1.45))
    if big < small * 1.4:  # the difference must be plain to see
        raise _Retry
    a_big = yes == (word == "larger")
    if sc.colour_only:
        oa = sc.add(_pick(rng, SHAPES), a, big if a_big else small)
        ob = sc.add(_pick(rng, SHAPES), b, small if a_big else big)
        sc.fill(sc.n_objects(), lambda sh, co, bx: co not in (a, b))
        a, b = f"{a} object", f"{b} object"
    else:
        oa = sc.add(a, _pick(rng, COLOUR_NAMES), big if a_big else small)
        ob = sc.add(b, _pick(rng, COLOUR_NAMES), small if a_big else big)
        sc.fill(sc.n_objects(), lambda sh, co, bx: sh not in (a, b))
    verdict = f"the {a} is {'larger' if a_big else 'smaller'}"
    steps = [(f"Find the {a}.", [oa]), (f"Compare it with the {b}: {verdict}.", [ob])]
    return f"Is the {a} {word} than the {b}?", "yes" if yes else "no", steps, {"relation": word}


def q_existence_in_quarter(sc: Scene):
    """Colour-only existence: Is there a red object in the top-left quarter? Negatives: the colour is
    nowhere (random), the quarter is busy with other colours (popular), or the colour is only elsewhere
    (adversarial: a binding of colour and place)."""
    rng = sc.rng
    pope, yes = POPE_TYPES[rng.integers(3)], rng.random() < 0.5
    colour, quarter = _pick(rng, COLOUR_NAMES), QUARTERS[rng.integers(4)]
    qbox = sc.quarter_box(quarter)
    question, meta = f"Is there a {colour} object in the {quarter} quarter?", {"pope_type": pope, "quarter": quarter}
    if yes:
        target = sc.add(_pick(rng, SHAPES), colour, sc.draw_size(), region=qbox)
        sc.fill(sc.n_objects(), lambda sh, co, b: True)
        return question, "yes", [(f"Look at the {quarter} quarter: there is {_a(colour)} object.", [target])], meta
    look = (f"Look at the {quarter} quarter: there is no {colour} object.", [float(v) for v in qbox])
    if pope == "random":
        sc.fill(sc.n_objects(), lambda sh, co, b: co != colour)
        return question, "no", [look], meta
    if pope == "popular":
        for _ in range(2):
            sc.add(_pick(rng, SHAPES), _pick(rng, COLOUR_NAMES, exclude=(colour,)), sc.draw_size(), region=qbox)
        sc.fill(sc.n_objects(), lambda sh, co, b: co != colour)
        return question, "no", [look], meta
    elsewhere = _pick(rng, QUARTERS, exclude=(quarter,))
    other = sc.add(_pick(rng, SHAPES), colour, sc.draw_size(), region=sc.quarter_box(elsewhere))
    sc.fill(sc.n_objects(), lambda sh, co, b: co != colour or sc.quarter_of(b) != quarter)
    return question, "no", [look, (f"The {colour} object is in the {elsewhere} quarter.", [other])], meta


def q_existence(sc: Scene):
    rng = sc.rng
    if sc.colour_only:
        return q_existence_in_quarter(sc)
    pope = POPE_TYPES[rng.integers(3)]
    yes = rng.random() < 0.5
    shape, colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    question = f"Is there a {colour} {shape} in the image?"
    meta = {"pope_type": pope}
    if yes:
        target = sc.add(shape, colour, sc.draw_size())
        sc.fill(sc.n_objects(), lambda sh, co, b: (sh, co) != (shape, colour))
        return question, "yes", [(f"Look for a {colour} {shape}: there is one.", [target])], meta
    if pope == "random":
        sc.fill(sc.n_objects(), lambda sh, co, b: (sh, co) != (shape, colour))
        whole = [0.0, 0.0, float(sc.size), float(sc.size)]  # the search covers the whole image
        return question, "no", [(f"Look for a {colour} {shape}: there is none.", whole)], meta
    if pope == "popular":  # the shape is common in the image, just never in that colour
        same_shape = [sc.add(shape, _pick(rng, COLOUR_NAMES, exclude=(colour,)), sc.draw_size()) for _ in range(2)]
        sc.fill(sc.n_objects(), lambda sh, co, b: sh != shape)
        colours = _and(sorted({o["colour"] for o in same_shape}))
        return question, "no", [(f"The {PLURALS[shape]} here are {colours}; none is {colour}.", same_shape)], meta
    # adversarial: the colour and the shape are both present, never together (a binding test)
    other = sc.add(shape, _pick(rng, COLOUR_NAMES, exclude=(colour,)), sc.draw_size())
    coloured = sc.add(_pick(rng, SHAPES, exclude=(shape,)), colour, sc.draw_size())
    sc.fill(sc.n_objects(), lambda sh, co, b: sh != shape and co != colour)
    return question, "no", [(f"The {colour} shape is a {coloured['shape']}.", [coloured]),
                            (f"The {shape} is {other['colour']}: there is no {colour} {shape}.", [other])], meta


def _a(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def _and(words):
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _where(direction: str) -> str:
    return {"right": "directly right of", "left": "directly left of", "above": "directly above", "below": "directly below"}[direction]


OPPOSITE = {"right": "left", "left": "right", "above": "below", "below": "above"}
CHAIN_OBJECTS = {False: (10, 16), True: (14, 18)}  # (normal, hard split): busier scenes than the other families


def q_chain(sc: Scene):
    """A chain of 2-3 hops named by colour: What colour is the object directly left of the object directly above
    the red object? Each next object is the nearest one in its direction's band from the last, so it is found only
    relative to the last: the reasoning must look again after every hop."""
    rng = sc.rng
    sc.cfg = dict(sc.cfg, objects=CHAIN_OBJECTS[sc.hard])
    hops = 2 + int(rng.random() < 0.5)
    directions = [DIRECTIONS[rng.integers(4)]]
    while len(directions) < hops:
        d = DIRECTIONS[rng.integers(4)]
        if d != OPPOSITE[directions[-1]]:  # no straight way back
            directions.append(d)
    ask = "colour" if sc.colour_only or rng.random() < 0.5 else "shape"
    a_colour = _pick(rng, COLOUR_NAMES)
    answer = _pick(rng, COLOUR_NAMES, exclude=(a_colour,)) if ask == "colour" else _pick(rng, SHAPES)
    chain = [sc.add(_pick(rng, SHAPES), a_colour, sc.draw_size())]
    hops_done: list[tuple[dict, str, float]] = []  # (from, direction, gap to the next)

    def keeps_hops(b, exclude=()):  # b may not be nearer than a hop's target in that hop's band
        return not any(_in_band(src["box"], b, d) and _gap(src["box"], b, d) <= g + 2
                       for src, d, g in hops_done if src not in exclude)

    for i, d in enumerate(directions):
        cur = chain[-1]
        last = i == hops - 1
        colour = answer if (last and ask == "colour") else _pick(rng, COLOUR_NAMES, exclude=(a_colour,))
        shape = answer if (last and ask == "shape") else _pick(rng, SHAPES)
        cx, cy = (cur["box"][0] + cur["box"][2]) / 2, (cur["box"][1] + cur["box"][3]) / 2
        jitter = cur["s"] / 4

        def ok(b, cur=cur, d=d, cx=cx, cy=cy, jitter=jitter):
            if not (_in_band(cur["box"], b, d) and _gap(cur["box"], b, d) <= 50 * sc.scale):
                return False
            centre = (b[1] + b[3]) / 2 if d in ("right", "left") else (b[0] + b[2]) / 2
            if abs(centre - (cy if d in ("right", "left") else cx)) > jitter:
                return False
            g = _gap(cur["box"], b, d)
            nearer = any(_in_band(cur["box"], o["box"], d) and _gap(cur["box"], o["box"], d) <= g + 2
                         for o in sc.objects if o is not cur)
            return not nearer and keeps_hops(b)

        nxt = sc.add(shape, colour, sc.draw_size(), ok=ok)
        hops_done.append((cur, d, _gap(cur["box"], nxt["box"], d)))
        chain.append(nxt)

    sc.fill(sc.n_objects(), lambda sh, co, b: co != a_colour and keeps_hops(b))
    phrase = f"the {a_colour} object"
    for d in directions:
        phrase = f"the object {_where(d)} {phrase}"
    question = f"What {ask} is {phrase}?"
    describe = lambda o: f"{_a(o['colour'])} {'object' if sc.colour_only else o['shape']}"  # noqa: E731
    hop_steps = [(f"{_where(d).capitalize()} it: {describe(o)}.", [o]) for d, o in zip(directions, chain[1:])]
    if hops == 2:
        steps = [(f"Find the {a_colour} object.", [chain[0]])] + hop_steps
    else:  # three steps at most: the anchor and the first hop share one
        steps = [(f"Find the {a_colour} object; {_where(directions[0])} it is {describe(chain[1])}.", chain[:2])] + hop_steps[1:]
    return question, answer, steps, {"hops": hops, "directions": directions, "asks": ask}


FINE_SIZE = (8, 13)  # px at 448: 4-6 px once the image is resized to the 224-px token budget


def q_fine_detail(sc: Scene):
    """Fine detail at 448 px: one small object alone in a quarter, larger ones elsewhere. The base visual tokens see
    the image downsampled to the model's pixel budget (4-6 px for the small object); a re-encoded crop sees it whole."""
    rng = sc.rng
    quarter = QUARTERS[rng.integers(4)]
    ask = "colour" if sc.colour_only else "shape"
    shape, colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    side = int(rng.integers(FINE_SIZE[0], FINE_SIZE[1] + 1))
    target = sc.add(shape, colour, side, region=sc.quarter_box(quarter))
    sc.fill(sc.n_objects(), lambda sh, co, b: sc.quarter_of(b) != quarter)
    answer = colour if ask == "colour" else shape
    return (f"What {ask} is the small object in the {quarter} quarter?", answer,
            [(f"Look closely at the {quarter} quarter: the small object is {colour if ask == 'colour' else _a(shape)}.", [target])],
            {"asks": ask, "quarter": quarter, "image_size": sc.size})


def q_multiple_choice(sc: Scene):
    rng = sc.rng
    base = "attribute" if rng.random() < 0.5 else "relation"
    question, answer, steps, meta = (q_attribute if base == "attribute" else q_relation)(sc)
    vocab = COLOUR_NAMES if answer in COLOURS else SHAPES
    options = [answer] + [str(x) for x in rng.choice([v for v in vocab if v != answer], size=3, replace=False)]
    order = rng.permutation(4)
    return question, answer, steps, dict(meta, base_family=base, choices=[options[i] for i in order])


def q_grounding(sc: Scene):
    """Paradigm-neutral grounding for pretraining (jobs/pretrain.py stage B), not a benchmark family: name what is
    in a box, give the box of a named object, or list a quarter's objects with their boxes. Boxes are written as the
    processor's grounding text on the 0..1000 grid."""
    from lare.processor import format_box

    rng = sc.rng
    kind = ("what_is_at", "where_is", "list_quarter")[rng.integers(3)]
    norm = lambda obj: format_box([v / sc.size for v in tight_box(obj)])  # noqa: E731
    if kind == "list_quarter":
        quarter = QUARTERS[rng.integers(4)]
        sc.fill(sc.n_objects(), lambda *_: True)
        inside = sorted((o for o in sc.objects if sc.quarter_of(o["box"]) == quarter), key=lambda o: (o["box"][1], o["box"][0]))
        answer = "; ".join(f"{o['colour']} {o['shape']} {norm(o)}" for o in inside) or "nothing"
        qbox = [float(v) for v in sc.quarter_box(quarter)]
        return (f"List the objects in the {quarter} quarter.", answer,
                [(f"Look at the {quarter} quarter.", qbox)], {"grounding": kind, "quarter": quarter})
    shape, colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
    target = sc.add(shape, colour, sc.draw_size())
    sc.fill(sc.n_objects(), lambda sh, co, b: (sh, co) != (shape, colour))
    step = [(f"Look at the {colour} {shape}.", [target])]
    if kind == "where_is":
        return f"Where is the {colour} {shape}?", norm(target), step, {"grounding": kind}
    return f"What is at {norm(target)}?", f"{colour} {shape}", step, {"grounding": kind}


# Pretraining families: generated like the others, never part of "all" (the benchmark).
PRETRAIN_FAMILIES = ("grounding",)

FAMILY_FNS = {"grounding": q_grounding, "attribute": q_attribute, "relation": q_relation, "counting": q_counting,
              "comparison": q_comparison, "existence": q_existence, "multiple_choice": q_multiple_choice,
              "chain": q_chain, "fine_detail": q_fine_detail}


def generate(split: str, index: int, *, seed: int = 0, size: int = 224, families=ALL_FAMILIES, colour_only: bool = False,
             render_image: bool = True) -> dict:
    """One sample as a draft trace: deterministic in (seed, split, index).

    meta["objects"] lists every object as [shape, colour, x1, y1, x2, y2] (tight box, normalised), so
    evaluation and tests can check any answer against the scene."""
    if split not in SPLIT_CODES:
        raise ValueError(f"refocus split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])
    hard = split == "hard"
    family = families[rng.integers(len(families))]
    scene_size = 2 * size if family == "fine_detail" else size
    for _ in range(100):
        sc = Scene(rng, scene_size, hard, colour_only)
        try:
            question, answer, steps, meta = FAMILY_FNS[family](sc)
            break
        except _Retry:
            continue
    else:  # pragma: no cover - would mean the layout constraints are unsatisfiable
        raise RuntimeError(f"refocus: no layout found for {split}/{index} family {family}")
    choices = meta.pop("choices", [])
    trace_steps = []
    for text, where in steps:
        if where is None:
            box = None
        elif isinstance(where[0], dict):
            box = union_box(where)
        else:
            box = list(where)
        trace_steps.append({"text": text, "bbox_px": box})
    objects = [[o["shape"], o["colour"]] + [round(v / scene_size, 5) for v in tight_box(o)] for o in sc.objects]
    meta = dict(meta, family=family, hard=hard, colour_only=colour_only, seed=int(seed), index=int(index), objects=objects)
    image = render(sc) if render_image else None
    return {"question": question, "answer": answer, "choices": choices, "steps": trace_steps, "meta": meta, "image_pil": image}
