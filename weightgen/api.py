"""The Python API, in the ecosystem's idiom (`from weightgen import WeightGenerator, Base, LoRA`):

    gen = WeightGenerator.from_pretrained("runs/demo")          # a run or models/NAME
    lora = gen.generate("give the photo a warm sepia tone")     # one text -> one LoRA
    base = Base.from_pretrained("runs/demo")
    edited = base.apply(lora, ["photo.jpg"])                   # [(3, H, W) tensors in [0, 1]]
    lora.save_pretrained("sepia-adapter")                      # PEFT adapter folder
    same = LoRA.from_pretrained("sepia-adapter")

A path is a model folder (base/ and generator/ inside: a run or a shipped model) or the base or
generator folder itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from weightgen.errors import WeightgenError


def _sub(path: str | os.PathLike, name: str, marker: str) -> Path:
    p = Path(path).expanduser()
    if (p / marker).is_file():
        return p
    if (p / name / marker).is_file():
        return p / name
    raise WeightgenError(f"no {name} at {p}: expected {p / name / marker} or {p / marker}")


@dataclass
class LoRA:
    """One concept's LoRA: {name: tensor} with adapter-free names, and the text it edits by."""

    state: dict[str, Tensor]
    text: str | None = None
    info: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """weightgen's flat .safetensors file (the text in its metadata)."""
        from safetensors.torch import save_file

        meta = {k: str(v) for k, v in self.info.items()} | (
            {"text": self.text} if self.text else {}
        )
        save_file({k: v.contiguous() for k, v in self.state.items()}, str(path), meta)
        return Path(path)

    def save_pretrained(self, path: str | os.PathLike, lora_config=None) -> Path:
        """A PEFT adapter folder (adapter_config.json, adapter_model.safetensors), loadable by
        `peft.PeftModel.from_pretrained(base_generator, path)`."""
        from weightgen.adapter import save_adapter
        from weightgen.config import LoRAConfig

        info = dict(self.info) | ({"text": self.text} if self.text else {})
        return save_adapter(self.state, path, lora_config or LoRAConfig(), info)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> LoRA:
        """From a .safetensors file or a PEFT adapter folder."""
        from weightgen.adapter import read_lora

        state, info = read_lora(path)
        return cls(state, info.get("text"), {k: v for k, v in info.items() if k != "text"})


class WeightGenerator:
    """The trained block diffusion generator: text -> LoRA."""

    def __init__(self, bundle, encoder):
        self.bundle, self.encoder = bundle, encoder

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> WeightGenerator:
        from weightgen.diffusion import load_generator
        from weightgen.gan import load_base
        from weightgen.text import get_encoder

        bundle = load_generator(_sub(path, "generator", "generator.json"))
        root = Path(path)
        text_model, tokens = None, None
        try:  # the encoder the base was trained with (the run's recipe)
            _, preset = load_base(_sub(root, "base", "generator.safetensors"))
            text_model, tokens = preset.text_model, preset.gan.max_text_tokens
        except WeightgenError:
            pass
        enc = get_encoder(text_model, tokens) if text_model else get_encoder()
        return cls(bundle, enc)

    @property
    def reads_pairs(self) -> bool:
        """Whether the generator was trained with pair features (it reads example pairs)."""
        return bool(self.bundle.model.config.pair_dim)

    def generate(
        self, texts: str | Sequence[str], pairs=None, *, steps: int = 1, seed: int = 0
    ) -> LoRA | list[LoRA]:
        """One LoRA per text (one DDIM step by default, the paper's); a str gives one LoRA.

        `pairs` (a generator with `reads_pairs` only): the edit's examples, per text a pairs
        folder (pix2pix layout) or an (inputs, targets) pair of (n, 3, H, W) tensors in [0, 1];
        for one text, the folder or tensors themselves."""
        from weightgen.diffusion import generate_lora

        one = isinstance(texts, str)
        batch = [texts] if one else list(texts)
        if pairs is not None:
            if not one and _pairs_given(pairs):
                raise WeightgenError("several texts: pass a list with one pair set per text")
            per_text = [pairs] if one else list(pairs)
            if len(per_text) != len(batch):
                raise WeightgenError(f"{len(per_text)} pair sets for {len(batch)} texts")
            pairs = [_pairs(p) for p in per_text]
        states = generate_lora(
            self.bundle, batch, encoder=self.encoder, steps=steps, seed=seed, pairs=pairs
        )
        loras = [LoRA(s, t, {"init": "generated", "seed": seed}) for s, t in zip(states, batch)]
        return loras[0] if one else loras


def _pairs_given(p) -> bool:
    """Whether `p` is one (inputs, targets) pair of tensors."""
    return isinstance(p, tuple | list) and len(p) == 2 and all(isinstance(t, Tensor) for t in p)


def _pairs(p) -> tuple[Tensor, Tensor] | None:
    """A pairs folder, or (inputs, targets) tensors, or None -> (inputs, targets) or None."""
    if p is None:
        return None
    if _pairs_given(p):
        return p[0], p[1]
    from weightgen.concepts.sources import open_pair_folder

    src = open_pair_folder(p, "pairs")  # the text is unused here: only the images are read
    return src.pairs(min(8, len(src.names)), 64, seed=0, split="collect")


class Base:
    """The frozen base generator that LoRAs edit with."""

    def __init__(self, state: dict[str, Tensor], preset):
        self.state, self.preset = state, preset
        self._encoder = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Base:
        from weightgen.gan import load_base

        state, preset = load_base(_sub(path, "base", "generator.safetensors"))
        return cls(state, preset)

    def editor(self, lora: LoRA, text: str | None = None, device=None):
        """weightgen.apply.Editor for `lora`, conditioned on `text` (default: the LoRA's), run on
        `device` (default: CUDA when there is one, else the CPU)."""
        from weightgen.apply import Editor
        from weightgen.gan import build_concept_model
        from weightgen.text import get_encoder

        text = text or lora.text
        if not text:
            raise WeightgenError("this LoRA carries no text: pass text= (the concept's sentence)")
        if self._encoder is None:
            self._encoder = get_encoder(self.preset.text_model, self.preset.gan.max_text_tokens)
        tb = self._encoder.encode([text])
        g = build_concept_model("lora", self.preset.gan, self.preset.lora, self.state, lora.state)
        return Editor(g, tb.tokens[:1], tb.mask[:1], self.preset.gan.image_size, device=device)

    @torch.no_grad()
    def apply(
        self,
        lora: LoRA,
        images: Sequence[str | os.PathLike | Tensor],
        *,
        text: str | None = None,
        mode: str = "tile",
    ) -> list[Tensor]:
        """Each image (a path, or a (3, H, W) tensor in [0, 1]) edited by base + `lora`, at its
        own size (weightgen.apply: `tile` or `resize`)."""
        from weightgen.apply import load_image

        ed = self.editor(lora, text)
        return [
            ed.edit(im if isinstance(im, Tensor) else load_image(Path(im)), mode) for im in images
        ]
