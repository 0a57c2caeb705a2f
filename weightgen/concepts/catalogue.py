"""The built-in concept catalogue: (id, family, text, paraphrases, edit program, split).

Deterministic: the same code gives the same concepts, ids and order. Ids are `{family}-{NNN}`,
numbered per family in definition order over both splits. Held-out concepts come from the same
families as training ones but use parameter values, colour pairs and compositions that no
training program uses, and texts that no training concept uses.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weightgen.concepts.edits import Edit

__all__ = [
    "FAMILIES",
    "SPLITS",
    "Concept",
    "UnknownConceptError",
    "base_concepts",
    "catalogue",
    "concepts",
    "get_concept",
    "interleave",
    "pick_base",
    "spread",
]

SPLITS = ("train", "heldout")
FAMILIES = (
    "tone",
    "tint",
    "colormap",
    "sepia",
    "posterize",
    "blur",
    "sharpen",
    "edges",
    "emboss",
    "cartoon",
    "vignette",
    "invert",
    "compose",
)
N_BASE = 20


@dataclass(frozen=True)
class Concept:
    id: str
    family: str
    text: str
    paraphrases: tuple[str, ...]
    program: tuple[Edit, ...]
    split: str

    @property
    def texts(self) -> tuple[str, ...]:
        """(text, *paraphrases)."""
        return (self.text, *self.paraphrases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "text": self.text,
            "paraphrases": list(self.paraphrases),
            "program": [e.to_dict() for e in self.program],
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Concept:
        return cls(
            id=d["id"],
            family=d["family"],
            text=d["text"],
            paraphrases=tuple(d["paraphrases"]),
            program=tuple(Edit.from_dict(e) for e in d["program"]),
            split=d["split"],
        )


class UnknownConceptError(KeyError):
    def __init__(self, concept_id: str) -> None:
        super().__init__(concept_id)
        self.concept_id = concept_id

    def __str__(self) -> str:
        return f"unknown concept {self.concept_id!r}; run `weightgen concepts list` to see ids"


# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.0),
    "gold": (1.0, 0.8, 0.2),
    "yellow": (1.0, 0.95, 0.2),
    "lime": (0.6, 0.9, 0.2),
    "green": (0.1, 0.6, 0.2),
    "forest green": (0.05, 0.3, 0.12),
    "mint": (0.7, 1.0, 0.85),
    "teal": (0.0, 0.5, 0.5),
    "cyan": (0.0, 0.85, 0.9),
    "light blue": (0.65, 0.85, 1.0),
    "blue": (0.1, 0.3, 0.9),
    "navy": (0.05, 0.08, 0.35),
    "indigo": (0.25, 0.05, 0.5),
    "purple": (0.5, 0.1, 0.6),
    "magenta": (0.9, 0.1, 0.7),
    "pink": (1.0, 0.55, 0.7),
    "crimson": (0.6, 0.0, 0.15),
    "maroon": (0.4, 0.05, 0.1),
    "brown": (0.4, 0.25, 0.1),
    "cream": (1.0, 0.95, 0.8),
    "peach": (1.0, 0.75, 0.6),
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
}

CMAP_WORDS: dict[str, str] = {
    "viridis": "viridis (dark blue through green to yellow)",
    "plasma": "plasma (deep purple through pink to yellow)",
    "cividis": "cividis (navy blue to khaki yellow)",
    "turbo": "turbo (blue through green to red)",
    "jet": "jet rainbow (blue, cyan, yellow, red)",
    "hot": "hot thermal (black through red and orange to white)",
    "bone": "bone (bluish gray)",
    "ocean": "ocean (green through deep blue to white)",
    "autumn": "autumn (red to yellow)",
    "winter": "winter (blue to green)",
    "summer": "summer (green to yellow)",
    "spring": "spring (magenta to yellow)",
    "cool": "cool (cyan to magenta)",
    "twilight": "twilight (pale, blue, dark purple, red, pale)",
}

# light direction of an emboss angle (see edits.emboss: 0 = light from the left, 90 = from the top)
LIGHT_FROM = {
    0: "the left",
    45: "the top left",
    90: "the top",
    135: "the top right",
    180: "the right",
    225: "the bottom right",
    270: "the bottom",
    315: "the bottom left",
}
CHANNEL = {"r": "red", "g": "green", "b": "blue"}


def _pct(v: float) -> str:
    return f"{round(abs(v) * 100)} percent"


def _amount(v: float, cuts: Sequence[float], words: Sequence[str]) -> str:
    """words[i] for the first cut with |v| <= cut, else words[-1]; len(words) == len(cuts) + 1."""
    for cut, word in zip(cuts, words):
        if abs(v) <= cut + 1e-9:
            return word
    return words[-1]


def _a(word: object) -> str:
    """'a word' or 'an word' by the sound of its first letter or number (8, 11, 18, 80...)."""
    w = str(word)
    vowel = w[:1].lower() in tuple("aeiou") or re.match(r"(8|11|18)(\D|$)|8\d", w) is not None
    return f"{'an' if vowel else 'a'} {w}"


def _fmt(v: float) -> str:
    return f"{v:g}"


# ----------------------------------------------------------------------------------------------
# Family builders: each yields (family, program, texts, split); texts[0] is the main text
# ----------------------------------------------------------------------------------------------

Spec = tuple[str, tuple[Edit, ...], tuple[str, ...], str]


def _e(op: str, **params: Any) -> Edit:
    return Edit.of(op, **params)


def _tone() -> Iterator[Spec]:
    def bright(d: float) -> tuple[str, ...]:
        adv = _amount(d, (0.05, 0.1, 0.2), ("very slightly", "slightly", "noticeably", "strongly"))
        if d > 0:
            return (
                f"brighten the photo {adv}, by about {_pct(d)}",
                f"raise the brightness by {_pct(d)}",
                f"make everything {_pct(d)} lighter",
            )
        return (
            f"darken the photo {adv}, by about {_pct(d)}",
            f"lower the brightness by {_pct(d)}",
            f"make everything {_pct(d)} darker",
        )

    def contr(f: float) -> tuple[str, ...]:
        if f > 1:
            adv = _amount(f - 1, (0.2, 0.5), ("a little", "clearly", "a lot"))
            return (
                f"increase the contrast {adv} (by {_pct(f - 1)})",
                f"make the image punchier with {_pct(f - 1)} more contrast",
                f"stretch the tones apart for {_a(_pct(f - 1))} contrast boost",
            )
        adv = _amount(1 - f, (0.2, 0.4), ("a little", "clearly", "a lot"))
        return (
            f"reduce the contrast {adv} (by {_pct(1 - f)})",
            f"flatten the image with {_pct(1 - f)} less contrast",
            f"pull the tones towards mid gray, cutting contrast by {_pct(1 - f)}",
        )

    def gam(g: float) -> tuple[str, ...]:
        if g < 1:
            adv = _amount(1 - g, (0.2, 0.35), ("gently", "clearly", "strongly"))
            return (
                f"{adv} lift the midtones (gamma {_fmt(g)})",
                f"brighten the shadows and midtones with a gamma of {_fmt(g)}",
                f"apply a gamma curve of {_fmt(g)} to open up the dark areas",
            )
        adv = _amount(g - 1, (0.3, 0.6), ("gently", "clearly", "strongly"))
        return (
            f"{adv} deepen the midtones (gamma {_fmt(g)})",
            f"darken the shadows and midtones with a gamma of {_fmt(g)}",
            f"apply a gamma curve of {_fmt(g)} for richer, darker tones",
        )

    def sat(f: float) -> tuple[str, ...]:
        if f == 0:
            return (
                "convert the photo to black and white",
                "remove all colour so only grayscale remains",
                "make it a monochrome gray image",
            )
        if f < 1:
            adv = _amount(1 - f, (0.3, 0.6), ("slightly", "noticeably", "heavily"))
            return (
                f"{adv} desaturate the colours (by {_pct(1 - f)})",
                f"mute the colours, keeping {_pct(f)} of the saturation",
                f"wash out the colours by {_pct(1 - f)}",
            )
        adv = _amount(f - 1, (0.3, 0.6), ("slightly", "noticeably", "hugely"))
        return (
            f"make the colours {adv} more vivid (saturation up {_pct(f - 1)})",
            f"boost the saturation by {_pct(f - 1)}",
            f"intensify every colour by {_pct(f - 1)}",
        )

    def hue_(deg: float) -> tuple[str, ...]:
        if abs(deg) == 180:
            return (
                "swap every colour for its opposite hue",
                "rotate the hues by 180 degrees",
                "turn each colour into its complementary colour",
            )
        way = "forwards" if deg > 0 else "backwards"
        return (
            f"rotate the hues {way} by {abs(deg):g} degrees",
            f"shift every colour {abs(deg):g} degrees {way} around the colour wheel",
            f"{_a(f'{abs(deg):g}')} degree hue shift {way}",
        )

    def temp(a: float) -> tuple[str, ...]:
        adv = _amount(a, (0.05, 0.1, 0.2), ("very slightly", "slightly", "noticeably", "strongly"))
        if a > 0:
            return (
                f"warm up the colours {adv} (by {_pct(a)})",
                f"shift the white balance {_pct(a)} towards orange",
                f"make the light feel {_pct(a)} warmer, like late afternoon sun",
            )
        return (
            f"cool down the colours {adv} (by {_pct(a)})",
            f"shift the white balance {_pct(a)} towards blue",
            f"make the light feel {_pct(a)} colder, like an overcast morning",
        )

    def grid(op, key, values, words, held):
        for v in values:
            yield "tone", (_e(op, **{key: v}),), words(v), "train"
        for v in held:
            yield "tone", (_e(op, **{key: v}),), words(v), "heldout"

    yield from grid(
        "brightness",
        "delta",
        (0.05, 0.1, 0.15, 0.2, 0.3, -0.05, -0.1, -0.15, -0.2, -0.3),
        bright,
        (0.25, -0.25),
    )
    yield from grid("contrast", "factor", (0.5, 0.7, 0.85, 1.2, 1.4, 1.7, 2.0), contr, (1.55,))
    yield from grid("gamma", "gamma", (0.5, 0.65, 0.8, 1.25, 1.5, 2.0), gam, (1.75,))
    yield from grid("saturation", "factor", (0.0, 0.25, 0.5, 0.75, 1.3, 1.6, 2.0), sat, (1.15,))
    yield from grid("hue", "degrees", (30, 60, 90, 120, 180, -30, -60, -90, -120), hue_, (45, -150))
    yield from grid(
        "temperature",
        "amount",
        (0.05, 0.1, 0.15, 0.2, 0.3, -0.05, -0.1, -0.15, -0.2, -0.3),
        temp,
        (-0.25,),
    )


def _tint() -> Iterator[Spec]:
    def tint_words(c: str, s: float) -> tuple[str, ...]:
        adj = _amount(s, (0.35, 0.5, 0.7), ("light", "medium", "strong", "very strong"))
        return (
            f"give the photo {_a(adj)} {c} tint",
            f"wash the image with {c} at {_pct(s)} strength",
            f"colour grade it towards {c}, {_pct(s)} of the way",
        )

    tint_colors = (
        "red",
        "orange",
        "gold",
        "green",
        "teal",
        "cyan",
        "blue",
        "purple",
        "magenta",
        "pink",
        "brown",
        "lime",
    )
    for c in tint_colors:
        for s in (0.3, 0.6):
            yield "tint", (_e("tint", color=COLORS[c], strength=s),), tint_words(c, s), "train"
    for c, s in (("orange", 0.45), ("blue", 0.45), ("pink", 0.8)):
        yield "tint", (_e("tint", color=COLORS[c], strength=s),), tint_words(c, s), "heldout"

    darks = (
        "navy",
        "black",
        "indigo",
        "purple",
        "crimson",
        "forest green",
        "maroon",
        "teal",
        "brown",
        "blue",
    )
    lights = (
        "yellow",
        "cream",
        "pink",
        "cyan",
        "orange",
        "gold",
        "mint",
        "light blue",
        "peach",
        "lime",
    )

    def duo_words(d: str, li: str) -> tuple[str, ...]:
        return (
            f"turn it into {_a(d)} and {li} duotone",
            f"map the shadows to {d} and the highlights to {li}",
            f"print the photo in two colours, {d} for dark areas and {li} for bright ones",
        )

    held_pairs = []
    for i, d in enumerate(darks):
        for j, li in enumerate(lights):
            prog = (_e("duotone", dark=COLORS[d], light=COLORS[li]),)
            if (7 * i + 3 * j) % 10 in (0, 1, 2):
                yield "tint", prog, duo_words(d, li), "train"
            elif (7 * i + 3 * j) % 10 == 5 and len(held_pairs) < 5:
                held_pairs.append((prog, duo_words(d, li)))
    for prog, words in held_pairs:
        yield "tint", prog, words, "heldout"

    def split_words(sh: str, hi: str, s: float) -> tuple[str, ...]:
        adj = _amount(s, (0.5, 0.8), ("subtle", "clear", "bold"))
        return (
            f"tint the image {sh} and {hi} with {_a(adj)} split tone",
            f"push the shadows towards {sh} and the highlights towards {hi} ({_pct(s)})",
            f"{_a(sh)}-and-{hi} colour grade at {_pct(s)} strength",
        )

    split_train = (
        ("teal", "orange"),
        ("blue", "yellow"),
        ("purple", "gold"),
        ("green", "magenta"),
        ("navy", "peach"),
        ("cyan", "red"),
    )
    for sh, hi in split_train:
        for s in (0.5, 1.0):
            prog = (_e("split_tone", shadows=COLORS[sh], highlights=COLORS[hi], strength=s),)
            yield "tint", prog, split_words(sh, hi, s), "train"
    for sh, hi, s in (("teal", "pink", 0.75), ("blue", "orange", 0.75)):
        prog = (_e("split_tone", shadows=COLORS[sh], highlights=COLORS[hi], strength=s),)
        yield "tint", prog, split_words(sh, hi, s), "heldout"


def _colormap() -> Iterator[Spec]:
    def words(name: str, mix: float, rev: bool) -> tuple[str, ...]:
        desc = CMAP_WORDS[name]
        inv = ", reversed so dark becomes the bright end" if rev else ""
        short = f"reversed {name}" if rev else name
        if mix >= 1:
            return (
                f"recolour the image with the {desc} colour map{inv}",
                f"false-colour the brightness using the {short} palette",
                f"map every gray level to {_a(short)} colour",
            )
        return (
            f"blend {_a(desc)} colour map{inv} over the photo at {_pct(mix)}",
            f"mix {_pct(mix)} of {short} false colour into the image",
            f"partly recolour the photo with the {short} palette ({_pct(mix)})",
        )

    names = tuple(CMAP_WORDS)
    for k, name in enumerate(names):
        for mix in (1.0, 0.5):
            prog = (_e("colormap", name=name, mix=mix, reverse=0.0),)
            yield "colormap", prog, words(name, mix, False), "train"
        if k % 2 == 0:
            prog = (_e("colormap", name=name, mix=1.0, reverse=1.0),)
            yield "colormap", prog, words(name, 1.0, True), "train"
    held = (
        ("viridis", 0.75, False),
        ("hot", 0.75, False),
        ("ocean", 0.75, False),
        ("plasma", 1.0, True),
        ("winter", 1.0, True),
    )
    for name, mix, rev in held:
        prog = (_e("colormap", name=name, mix=mix, reverse=float(rev)),)
        yield "colormap", prog, words(name, mix, rev), "heldout"


def _sepia() -> Iterator[Spec]:
    def program(s: float, f: float, v: float) -> tuple[Edit, ...]:
        prog = [_e("sepia", strength=s)]
        if f:
            prog.append(_e("fade", amount=f))
        if v:
            prog.append(_e("vignette", strength=v, radius=0.35, color=COLORS["black"]))
        return tuple(prog)

    def words(s: float, f: float, v: float) -> tuple[str, ...]:
        adj = _amount(s, (0.45, 0.75), ("light", "warm", "full"))
        extra = ""
        extra += f", faded by {_pct(f)}" if f else ""
        extra += f" with {_a(_pct(v))} dark vignette" if v else ""
        old = "an old photograph" if f or v else "an antique print"
        return (
            f"give the photo {_a(adj)} sepia tone ({_pct(s)}){extra}",
            f"make it look like {old}: sepia at {_pct(s)}{extra}",
            f"vintage brown toning, {_pct(s)} strength{extra}",
        )

    for s, f, v in itertools.product((0.4, 0.7, 1.0), (0.0, 0.25, 0.5), (0.0, 0.6)):
        yield "sepia", program(s, f, v), words(s, f, v), "train"
    for s, f, v in ((0.55, 0.35, 0.0), (0.85, 0.0, 0.6), (1.0, 0.5, 0.8)):
        yield "sepia", program(s, f, v), words(s, f, v), "heldout"

    def fade_words(f: float) -> tuple[str, ...]:
        adj = _amount(f, (0.3, 0.6), ("slightly", "clearly", "heavily"))
        return (
            f"give the photo {_a(adj)} faded matte look ({_pct(f)})",
            f"lift the blacks and dull the whites by {_pct(f)} for a film fade",
            f"wash the image out like an old print, fade {_pct(f)}",
        )

    for f in (0.2, 0.4, 0.6, 0.8):
        yield "sepia", (_e("fade", amount=f),), fade_words(f), "train"


def _posterize() -> Iterator[Spec]:
    def bits_words(b: int) -> tuple[str, ...]:
        n = 2**b
        return (
            f"posterise the photo to {b} bit{'s' if b > 1 else ''} per channel",
            f"reduce every colour channel to {n} levels",
            f"crush the colours into {_a(n)}-step palette per channel",
        )

    def level_words(k: int, mono: bool) -> tuple[str, ...]:
        if mono:
            return (
                f"reduce it to {k} flat shades of gray",
                f"quantise the brightness into {k} gray levels",
                f"a posterised grayscale with {k} tones",
            )
        return (
            f"posterise the colours to {k} levels per channel",
            f"quantise each colour channel into {k} flat bands",
            f"a poster look with {k} tones in every channel",
        )

    def thr_words(t: float) -> tuple[str, ...]:
        return (
            f"turn it into a pure black and white stencil at {_pct(t)} brightness",
            f"threshold the image: pixels brighter than {_pct(t)} become white, the rest black",
            f"two-tone black and white cutout with the cut at {_pct(t)}",
        )

    for b in (1, 2, 3, 4):
        yield "posterize", (_e("posterize", bits=b),), bits_words(b), "train"
    for k in (2, 3, 4, 5, 6, 8):
        for mono in (False, True):
            prog = (_e("levels", k=k, mono=float(mono)),)
            yield "posterize", prog, level_words(k, mono), "train"
    for t in (0.3, 0.4, 0.5, 0.6, 0.7):
        yield "posterize", (_e("threshold", level=t),), thr_words(t), "train"
    yield "posterize", (_e("levels", k=7, mono=0.0),), level_words(7, False), "heldout"
    yield "posterize", (_e("levels", k=7, mono=1.0),), level_words(7, True), "heldout"
    yield "posterize", (_e("threshold", level=0.45),), thr_words(0.45), "heldout"


def _blur() -> Iterator[Spec]:
    def words(s: float) -> tuple[str, ...]:
        adj = _amount(s, (0.9, 1.6, 2.5), ("very light", "soft", "strong", "heavy"))
        return (
            f"apply {_a(adj)} gaussian blur (sigma {_fmt(s)} pixels)",
            f"soften the whole image with {_a(_fmt(s))} pixel blur",
            f"make it out of focus, blur radius {_fmt(s)}",
        )

    direction = {0: "horizontal", 45: "diagonal rising", 90: "vertical", 135: "diagonal falling"}

    def motion_words(length: int, angle: int) -> tuple[str, ...]:
        adj = "short" if length <= 5 else ("medium" if length <= 7 else "long")
        return (
            f"add {_a(adj)} {direction[angle]} motion blur ({length} pixels)",
            f"smear the image {direction[angle]}ly as if moving fast, streak length {length}",
            f"{_a(length)} pixel {direction[angle]} camera shake blur",
        )

    for s in (0.6, 0.9, 1.2, 1.6, 2.0, 2.5, 3.0):
        yield "blur", (_e("blur", sigma=s),), words(s), "train"
    for length, angle in itertools.product((5, 9), (0, 45, 90, 135)):
        yield (
            "blur",
            (_e("motion_blur", length=length, angle=angle),),
            motion_words(length, angle),
            "train",
        )
    yield "blur", (_e("blur", sigma=1.4),), words(1.4), "heldout"
    yield "blur", (_e("blur", sigma=3.5),), words(3.5), "heldout"
    yield "blur", (_e("motion_blur", length=7, angle=90),), motion_words(7, 90), "heldout"


def _sharpen() -> Iterator[Spec]:
    def words(a: float, s: float) -> tuple[str, ...]:
        adj = _amount(a, (0.5, 1.0, 1.5), ("gently", "moderately", "strongly", "aggressively"))
        scale = _amount(s, (1.0, 1.6), ("fine details", "edges", "broad local contrast"))
        return (
            f"{adj} sharpen the {scale} (amount {_fmt(a)}, radius {_fmt(s)})",
            f"unsharp mask with strength {_pct(a)} and {_a(_fmt(s))} pixel radius",
            f"crisp up the {scale}, sharpening {_pct(a)} at radius {_fmt(s)}",
        )

    for a, s in itertools.product((0.5, 1.0, 1.5, 2.5), (0.8, 1.5, 2.5)):
        yield "sharpen", (_e("sharpen", amount=a, sigma=s),), words(a, s), "train"
    yield "sharpen", (_e("sharpen", amount=2.0, sigma=1.5),), words(2.0, 1.5), "heldout"
    yield "sharpen", (_e("sharpen", amount=1.0, sigma=2.0),), words(1.0, 2.0), "heldout"


def _edges() -> Iterator[Spec]:
    def words(strength: float, style: str) -> tuple[str, ...]:
        adj = _amount(strength, (1.5, 3.0), ("faint", "clear", "bold"))
        g = _fmt(strength)
        if style == "sketch":
            return (
                f"turn the photo into {_a(adj)} line sketch, dark lines on white (gain {g})",
                f"draw only the outlines in black on white paper, edge gain {g}",
                f"an inverted edge map with {adj} strokes, gain {g}",
            )
        if style == "glow":
            return (
                f"show only the edges as {adj} glowing white lines on black (gain {g})",
                f"a neon outline of the scene on a black background, gain {g}",
                f"detect the edges and light them up, {adj} strength {g}",
            )
        return (
            f"keep only the edges, drawn in the photo's own colours ({adj}, gain {g})",
            f"colourful outlines on black: the edges keep their colour, gain {g}",
            f"a coloured edge map with {adj} lines, gain {g}",
        )

    def pencil_words(s: float, d: float) -> tuple[str, ...]:
        width = _amount(s, (1.0, 2.0), ("fine", "medium", "broad"))
        tone = "light" if d <= 1 else "dark"
        return (
            f"make {_a(tone)} pencil sketch with {width} strokes (radius {_fmt(s)}, darkness {_fmt(d)})",
            f"redraw it as a graphite drawing, stroke radius {_fmt(s)} and shading {_fmt(d)}",
            f"{_a(width)}-stroke pencil drawing on white paper, {tone} shading {_fmt(d)}",
        )

    for strength, style in itertools.product((1.5, 3.0, 5.0), ("sketch", "glow", "color")):
        yield (
            "edges",
            (_e("edges", strength=strength, style=style),),
            words(strength, style),
            "train",
        )
    for s, d in itertools.product((1.0, 2.0, 4.0), (1.0, 2.5)):
        yield "edges", (_e("pencil", sigma=s, darkness=d),), pencil_words(s, d), "train"
    yield "edges", (_e("edges", strength=4.0, style="sketch"),), words(4.0, "sketch"), "heldout"
    yield "edges", (_e("edges", strength=2.2, style="glow"),), words(2.2, "glow"), "heldout"
    yield "edges", (_e("pencil", sigma=3.0, darkness=1.7),), pencil_words(3.0, 1.7), "heldout"


def _emboss() -> Iterator[Spec]:
    def words(strength: float, angle: int, color: float) -> tuple[str, ...]:
        adj = _amount(strength, (2.0, 3.0), ("", "deep ", "very deep "))
        frm = LIGHT_FROM[angle]
        if color == 0:
            return (
                f"emboss the image into {adj}gray relief lit from {frm} (depth {_fmt(strength)})",
                f"press it into a gray metal plate, light coming from {frm}, depth {_fmt(strength)}",
                f"{_a(adj)}stamped gray relief with the light at {frm}, depth {_fmt(strength)}",
            )
        if color == 1:
            return (
                f"emboss the photo in colour with {adj}relief lit from {frm} (depth {_fmt(strength)})",
                f"keep the colours but raise the edges into relief, light from {frm}, depth {_fmt(strength)}",
                f"a coloured {adj}embossed look with the light at {frm}, depth {_fmt(strength)}",
            )
        return (
            f"emboss the photo half in colour, half gray, lit from {frm} (depth {_fmt(strength)})",
            f"a relief with {_pct(color)} of the colour kept, light from {frm}, depth {_fmt(strength)}",
            f"semi-coloured embossing with the light at {frm}, depth {_fmt(strength)}",
        )

    for angle in LIGHT_FROM:
        for color in (0.0, 1.0):
            yield (
                "emboss",
                (_e("emboss", strength=2.0, angle=angle, color=color),),
                words(2.0, angle, color),
                "train",
            )
    for angle in (0, 90, 180, 270):
        yield (
            "emboss",
            (_e("emboss", strength=4.0, angle=angle, color=0.0),),
            words(4.0, angle, 0.0),
            "train",
        )
    for s, angle, color in ((3.0, 45, 0.0), (2.0, 90, 0.5), (4.0, 180, 1.0)):
        yield (
            "emboss",
            (_e("emboss", strength=s, angle=angle, color=color),),
            words(s, angle, color),
            "heldout",
        )


def _cartoon() -> Iterator[Spec]:
    def words(k: int, edge: float, smooth: float) -> tuple[str, ...]:
        lines = {0.0: "no outlines", 1.0: "thin black outlines", 2.0: "bold black outlines"}.get(
            edge, f"black outlines of weight {_fmt(edge)}"
        )
        soft = "lightly smoothed" if smooth <= 1.5 else "heavily smoothed"
        return (
            f"turn the photo into {_a(soft)} cartoon with {k} colour levels and {lines}",
            f"{_a(soft)} comic-book look: {k} flat colour bands, {lines}",
            f"cel-shade the image ({k} tones per channel, {lines}, smoothing {_fmt(smooth)})",
        )

    def paint_words(size: int, boost: float) -> tuple[str, ...]:
        brush = "small" if size <= 3 else "large"
        vivid = "" if boost == 1.0 else f", colours {_pct(boost - 1)} more saturated"
        return (
            f"make it look like an oil painting with {brush} brush strokes{vivid}",
            f"painterly filter, {size} pixel median brush{vivid}",
            f"repaint the photo with {brush} dabs of paint{vivid}",
        )

    for k, edge, smooth in itertools.product((3, 4, 6), (0.0, 1.0, 2.0), (1.5, 3.0)):
        yield (
            "cartoon",
            (_e("cartoon", levels=k, edge=edge, smooth=smooth),),
            words(k, edge, smooth),
            "train",
        )
    for size, boost in itertools.product((3, 5), (1.0, 1.4)):
        yield "cartoon", (_e("paint", size=size, boost=boost),), paint_words(size, boost), "train"
    for k, edge, smooth in ((5, 1.0, 1.5), (8, 2.0, 3.0)):
        yield (
            "cartoon",
            (_e("cartoon", levels=k, edge=edge, smooth=smooth),),
            words(k, edge, smooth),
            "heldout",
        )
    yield "cartoon", (_e("paint", size=5, boost=1.2),), paint_words(5, 1.2), "heldout"


def _vignette() -> Iterator[Spec]:
    def words(s: float, r: float, c: str) -> tuple[str, ...]:
        adj = _amount(s, (0.45, 0.75), ("soft", "medium", "strong"))
        reach = _amount(r, (0.3, 0.5), ("wide", "medium", "tight-to-the-corners"))
        if c == "black":
            return (
                f"add {_a(adj)} dark vignette ({_pct(s)}, {reach}, radius {_fmt(r)})",
                f"darken the corners and edges by {_pct(s)}, starting at radius {_fmt(r)}",
                f"{_a(reach)} black vignette of strength {_fmt(s)}",
            )
        if c == "white":
            return (
                f"add {_a(adj)} white vignette ({_pct(s)}, {reach}, radius {_fmt(r)})",
                f"fade the corners to white by {_pct(s)}, starting at radius {_fmt(r)}",
                f"{_a(reach)} bright, dreamy white border of strength {_fmt(s)}",
            )
        return (
            f"add {_a(adj)} {c} vignette ({_pct(s)}, radius {_fmt(r)})",
            f"fade the corners into {c} by {_pct(s)}",
            f"{_a(reach)} {c} border glow of strength {_fmt(s)}",
        )

    def prog(s: float, r: float, c: str) -> tuple[Edit, ...]:
        return (_e("vignette", strength=s, radius=r, color=COLORS[c]),)

    for s, r, c in itertools.product((0.4, 0.7, 1.0), (0.2, 0.45, 0.7), ("black", "white")):
        yield "vignette", prog(s, r, c), words(s, r, c), "train"
    for c in ("blue", "purple", "pink"):
        yield "vignette", prog(0.7, 0.45, c), words(0.7, 0.45, c), "train"
    for s, r, c in ((0.55, 0.35, "black"), (0.85, 0.55, "white"), (0.7, 0.45, "teal")):
        yield "vignette", prog(s, r, c), words(s, r, c), "heldout"


def _invert() -> Iterator[Spec]:
    yield (
        "invert",
        (_e("invert"),),
        (
            "invert all the colours like a film negative",
            "make a photographic negative of the image",
            "flip every colour to its opposite value",
        ),
        "train",
    )
    yield (
        "invert",
        (_e("invert_lightness"),),
        (
            "invert the lightness but keep the hues",
            "swap light and dark while preserving the colours",
            "a lightness-only negative: bright becomes dark, colours stay",
        ),
        "train",
    )
    for ch in ("r", "g", "b", "rg", "rb", "gb"):
        names = " and ".join(CHANNEL[c] for c in ch)
        plural = "channels" if len(ch) > 1 else "channel"
        yield (
            "invert",
            (_e("invert_channels", channels=ch),),
            (
                f"invert only the {names} {plural}",
                f"make a negative of just the {names} {plural}, leave the rest",
                f"flip the {names} {plural} upside down in value",
            ),
            "train",
        )

    def sol_words(t: float) -> tuple[str, ...]:
        return (
            f"solarise the photo above {_pct(t)} brightness",
            f"invert only the tones brighter than {_pct(t)}, a Sabattier effect",
            f"partial negative: solarisation threshold {_fmt(t)}",
        )

    for t in (0.25, 0.4, 0.5, 0.6, 0.75):
        yield "invert", (_e("solarize", threshold=t),), sol_words(t), "train"
    swaps = {
        "bgr": "swap the red and blue channels",
        "grb": "swap the red and green channels",
        "rbg": "swap the green and blue channels",
        "brg": "rotate the colour channels once (red gets blue, green gets red, blue gets green)",
        "gbr": "rotate the colour channels the other way (red gets green, green gets blue, blue gets red)",
    }
    for order, text in swaps.items():
        yield (
            "invert",
            (_e("channel_swap", order=order),),
            (
                text,
                f"reorder the colour channels as {order.upper()}",
                f"a channel shuffle to {'-'.join(order.upper())}",
            ),
            "train",
        )
    yield "invert", (_e("solarize", threshold=0.33),), sol_words(0.33), "heldout"
    yield "invert", (_e("solarize", threshold=0.67),), sol_words(0.67), "heldout"
    yield (
        "invert",
        (_e("invert"), _e("channel_swap", order="bgr")),
        (
            "make a negative and then swap the red and blue channels",
            "invert the colours, then exchange red with blue",
            "a BGR-ordered photographic negative",
        ),
        "heldout",
    )


# compose atoms: (edit, three phrasings); stage 0 = tone/colour, 1 = filter, 2 = finish
_ATOMS: tuple[tuple[tuple[Edit, tuple[str, str, str]], ...], ...] = (
    (
        (_e("contrast", factor=1.4), ("boost the contrast", "add punch", "make it more contrasty")),
        (_e("saturation", factor=0.0), ("make it black and white", "drop all colour", "go grayscale")),
        (_e("saturation", factor=1.6), ("make the colours vivid", "pump up the saturation", "intensify the colours")),
        (_e("temperature", amount=0.2), ("warm it up", "add warmth", "give it golden warmth")),
        (_e("temperature", amount=-0.2), ("cool it down", "add a cold blue cast", "make it chilly")),
        (_e("brightness", delta=0.15), ("brighten it", "lift the exposure", "make it lighter")),
        (_e("gamma", gamma=1.5), ("deepen the midtones", "darken the mids", "make the tones moodier")),
        (_e("hue", degrees=90), ("shift the hues by 90 degrees", "rotate the colours a quarter turn", "swing every hue 90 degrees")),
        (_e("sepia", strength=1.0), ("apply a sepia tone", "tone it brown like an old print", "go sepia")),
        (_e("invert"), ("invert the colours", "make it a negative", "flip it to a negative")),
    ),
    (
        (_e("blur", sigma=1.5), ("soften it with a blur", "blur it a bit", "take the focus off")),
        (_e("sharpen", amount=1.5, sigma=1.0), ("sharpen it", "crisp up the details", "add bite to the edges")),
        (_e("levels", k=4.0, mono=0.0), ("posterise to 4 levels", "flatten it into 4-tone bands", "reduce it to four tones per channel")),
        (_e("emboss", strength=2.0, angle=45, color=1.0), ("emboss it in colour", "raise the edges in relief", "give it an embossed surface")),
        (_e("cartoon", levels=5, edge=1.0, smooth=1.5), ("cartoonise it", "make it look like a comic", "cel-shade it")),
        (_e("paint", size=5, boost=1.0), ("make it painterly", "turn it into an oil painting", "repaint it with a brush")),
        (_e("motion_blur", length=9, angle=0), ("add horizontal motion blur", "streak it sideways", "smear it left to right")),
    ),
    (
        (_e("vignette", strength=0.7, radius=0.45, color=COLORS["black"]), ("add a dark vignette", "darken the corners", "frame it with shadowy edges")),
        (_e("vignette", strength=0.7, radius=0.45, color=COLORS["white"]), ("fade the corners to white", "add a white vignette", "give it a bright halo border")),
        (_e("fade", amount=0.4), ("give it a faded matte finish", "wash it out like old film", "lift the blacks for a matte look")),
    ),
)  # fmt: skip

N_COMPOSE_TRAIN = 80
N_COMPOSE_HELDOUT = 8


def _stable_hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _compose() -> Iterator[Spec]:
    candidates = []
    stages = [list(range(len(a))) for a in _ATOMS]
    for used in ((0, 1), (0, 2), (1, 2), (0, 1, 2)):
        for picks in itertools.product(*(stages[s] for s in used)):
            atoms = [_ATOMS[s][i] for s, i in zip(used, picks)]
            key = "|".join(f"{s}:{i}" for s, i in zip(used, picks))
            candidates.append((_stable_hash(key), atoms))
    candidates.sort(key=lambda c: c[0])

    def words(atoms) -> tuple[str, ...]:
        p = [a[1] for a in atoms]
        if len(p) == 2:
            return (
                f"{p[0][0]}, then {p[1][0]}",
                f"first {p[0][1]} and afterwards {p[1][1]}",
                f"{p[0][2]} and {p[1][2]}",
            )
        return (
            f"{p[0][0]}, then {p[1][0]}, then {p[2][0]}",
            f"first {p[0][1]}, next {p[1][1]}, and finally {p[2][1]}",
            f"{p[0][2]}, {p[1][2]} and {p[2][2]}",
        )

    for _, atoms in candidates[:N_COMPOSE_TRAIN]:
        yield "compose", tuple(a[0] for a in atoms), words(atoms), "train"
    for _, atoms in candidates[N_COMPOSE_TRAIN : N_COMPOSE_TRAIN + N_COMPOSE_HELDOUT]:
        yield "compose", tuple(a[0] for a in atoms), words(atoms), "heldout"


_BUILDERS: dict[str, Callable[[], Iterator[Spec]]] = {
    "tone": _tone,
    "tint": _tint,
    "colormap": _colormap,
    "sepia": _sepia,
    "posterize": _posterize,
    "blur": _blur,
    "sharpen": _sharpen,
    "edges": _edges,
    "emboss": _emboss,
    "cartoon": _cartoon,
    "vignette": _vignette,
    "invert": _invert,
    "compose": _compose,
}

# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _catalogue() -> tuple[Concept, ...]:
    out: list[Concept] = []
    for family in FAMILIES:
        for n, (fam, program, texts, split) in enumerate(_BUILDERS[family]()):
            assert fam == family and split in SPLITS and len(texts) >= 3
            out.append(
                Concept(
                    id=f"{family}-{n:03d}",
                    family=family,
                    text=texts[0],
                    paraphrases=tuple(texts[1:]),
                    program=tuple(program),
                    split=split,
                )
            )
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _by_id() -> dict[str, Concept]:
    return {c.id: c for c in _catalogue()}


def catalogue() -> list[Concept]:
    """All concepts, train then held-out interleaved in definition order (family by family)."""
    return list(_catalogue())


def concepts(split: str | None = None) -> list[Concept]:
    """split: None (all), 'train' or 'heldout'."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'heldout'")
    return [c for c in _catalogue() if split is None or c.split == split]


def interleave(items: Sequence[Concept]) -> list[Concept]:
    """Round robin over families (the first of each family, then the second, ...), so that any
    prefix (`collect --set collect.limit=N`, a data-scaling ablation) covers every family evenly."""
    by_family: dict[str, list[Concept]] = {}
    for c in items:
        by_family.setdefault(c.family, []).append(c)
    out, i = [], 0
    while len(out) < len(items):
        out += [v[i] for v in by_family.values() if i < len(v)]
        i += 1
    return out


def get_concept(id: str) -> Concept:
    try:
        return _by_id()[id]
    except KeyError:
        raise UnknownConceptError(id) from None


def spread(items: Sequence[Concept]) -> list[Concept]:
    """Up to five of `items` spread over them (middle, quarters, eighths), in that order."""
    n = len(items)
    seen: list[int] = []
    for i in (n // 2, n // 4, (3 * n) // 4, n // 8, (7 * n) // 8):
        if i not in seen and i < n:
            seen.append(i)
    return [items[i] for i in seen]


def pick_base(pool: Sequence[Concept]) -> list[Concept]:
    """N_BASE concepts of `pool`, round robin over its families (catalogue order), each family's
    spread over it: the base's pre-training set."""
    per_family: dict[str, list[Concept]] = {}
    for c in pool:
        per_family.setdefault(c.family, []).append(c)
    queues = {f: spread(v) for f, v in per_family.items()}
    picked: list[Concept] = []
    for r in range(5):
        for f in FAMILIES:
            if len(picked) < N_BASE and r < len(queues.get(f, ())):
                picked.append(queues[f][r])
    return picked


@functools.lru_cache(maxsize=1)
def _base() -> tuple[Concept, ...]:
    return tuple(pick_base(concepts("train")))


def base_concepts() -> list[Concept]:
    """N_BASE training concepts, round-robin over families, used to pre-train the base GAN when
    no family is held out (weightgen.concepts.splits.Splits.base in general)."""
    return list(_base())
