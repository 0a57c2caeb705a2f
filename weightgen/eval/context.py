"""What the benchmark loads once (base, generator, text encoder, training-set baselines) and the
step-0 table of every initialisation on the held-out concepts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm


class BenchContext:
    """Everything loaded once: base, generator, encoder, training-set baselines."""

    def __init__(self, run: Path, generator: Path | None = None, empty_text: bool = False):
        from weightgen.diffusion import load_generator
        from weightgen.gan import load_base
        from weightgen.initial import WeightBaselines
        from weightgen.text import get_encoder

        self.run = run
        self.base_state, self.preset = load_base(run / "base")
        self.bundle = load_generator(generator or run / "generator")
        self.enc = get_encoder(self.preset.text_model, self.preset.gan.max_text_tokens)
        self.baselines = WeightBaselines.from_dataset(str(run / "dataset"))
        self.empty_text = empty_text

    def with_generator(self, generator: Path, empty_text: bool | None = None) -> BenchContext:
        """The same base, encoder and baselines with another generator (ablations)."""
        from weightgen.diffusion import load_generator

        other = object.__new__(BenchContext)
        other.__dict__.update(self.__dict__)
        other.bundle = load_generator(generator)
        if empty_text is not None:
            other.empty_text = empty_text
        return other

    def generate(
        self,
        texts: list[str],
        steps: int,
        init: list[dict] | None = None,
        strength: float = 1.0,
        concepts: Sequence | None = None,
    ) -> tuple[list[dict], float]:
        """LoRAs for `texts` and the seconds per concept (text encoding included, batched);
        with `init`, those LoRAs refined from noise level `strength` (`sample_blocks`). A
        generator trained with pair features also reads 8 training pairs of each of `concepts`
        (the pairs fine-tuning uses; describing them is timed, making them is not)."""
        from weightgen.eval.newconcept import timed_generate, train_pairs

        # empty text: the generator's learned null condition (trained by text dropout), i.e.
        # classifier-free guidance 0 -- the text encoder itself refuses an empty string
        kw = {"guidance": 0.0} if self.empty_text else {}
        if init is not None:
            kw.update(init=init, strength=strength)
        if concepts is not None:
            # a retrieval-augmented generator never retrieves the concept itself (a tuning
            # concept from the training set is in its bank)
            kw["exclude"] = [c.id for c in concepts]
            if self.bundle.model.config.pair_dim and not self.empty_text:
                kw["pairs"] = [tuple(t[:8] for t in train_pairs(c, self.preset)) for c in concepts]
        loras, seconds = timed_generate(self.bundle, texts, encoder=self.enc, steps=steps, **kw)
        return loras, seconds / len(texts)


def find_nearest(ctx: BenchContext, held: Sequence, tb) -> dict[str, dict]:
    """{concept: {"lora", "concept", "similarity"}}: the training LoRA closest in text (never the
    concept's own, should the data set hold it)."""
    out = {}
    for i, c in enumerate(held):
        nl, nid, sim = ctx.baselines.nearest(tb.pooled[i], exclude=c.id)
        out[c.id] = {"lora": nl, "concept": nid, "similarity": sim}
    return out


def step0_table(
    ctx: BenchContext,
    held: Sequence,
    gen: list[dict],
    tb,
    nearest: dict[str, dict],
    extra: dict[str, list[dict]] | None = None,
) -> dict:
    """{concept: {method: {"psnr", "ssim"}}} at step 0. One base + LoRA model per concept, the
    LoRA swapped in place. `tb`: the held-out texts' TextBatch; `nearest`: `find_nearest`'s
    answer for them; `extra`: more {method: one LoRA per held-out concept (None: no row for
    that concept)} rows."""
    from weightgen.eval.newconcept import eval_pairs
    from weightgen.gan import build_concept_model, evaluate, load_lora

    g = build_concept_model("lora", ctx.preset.gan, ctx.preset.lora, ctx.base_state).eval()
    zero_b = _a_init(g)  # shared-seed A, B = 0: the base's own output
    step0 = {}
    for i, c in enumerate(tqdm(held, desc="step 0", unit="concept")):
        x, y = eval_pairs(c, ctx.preset)
        row = {}
        for name, lora in (
            ("base", zero_b),
            ("generated", gen[i]),
            ("nearest", nearest[c.id]["lora"]),
            ("mean", ctx.baselines.mean_lora),
            *((k, v[i]) for k, v in (extra or {}).items() if v[i] is not None),
        ):
            load_lora(g, lora)
            p, s = evaluate(g, x, y, tb.tokens[i][None], tb.mask[i][None])
            row[name] = {"psnr": p, "ssim": s}
        row["lora-zero"] = dict(row["base"])  # B = 0: exactly the base's output
        step0[c.id] = row
    return step0


def _a_init(g) -> dict[str, torch.Tensor]:
    from weightgen.gan.lora import lora_state_dict

    return {k: v.clone() for k, v in lora_state_dict(g).items()}
