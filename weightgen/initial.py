"""A new concept's initial LoRA, from one place for every caller (`weightgen sample`, `weightgen
finetune`, jobs/sample.py, the benchmark):

  generated  the generator's sample for the concept's text (sample.steps denoising steps)
  nearest    the training LoRA whose text is most similar (cosine of pooled text embeddings)
  mean       the mean training LoRA
  blended    sample.blend x generated + (1 - sample.blend) x nearest, value for value

Retrieval reads the training data set (`WeightBaselines.from_dataset`); every LoRA is a state dict
{name: tensor} in the data set's BlockLayout.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weightgen.blocks import BlockLayout, BlockStats
from weightgen.config import SampleConfig
from weightgen.errors import WeightgenError

INITS = ("generated", "nearest", "mean", "blended")


@dataclass
class WeightBaselines:
    """The training LoRAs of a data set, for retrieval: the nearest by text and the mean."""

    layout: BlockLayout
    mean_lora: dict[str, torch.Tensor]
    texts: np.ndarray  # (M, D) pooled, L2-normalised text embeddings of the training samples
    blocks: np.ndarray  # (M, N, S)
    concept_ids: list[str]
    std_lora: dict[str, torch.Tensor] | None = None  # per-value std over the training samples

    @classmethod
    def from_dataset(cls, uri: str) -> WeightBaselines:
        from weightgen.data import load_all, open_storage

        st = open_storage(uri)
        layout = BlockLayout.from_dict(json.loads(st.read_bytes("layout.json")))
        keys, blocks, texts, metas = load_all(uri, expected_layout_hash=layout.hash)
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "stats.safetensors"
            p.write_bytes(st.read_bytes("stats.safetensors"))
            stats = BlockStats.load(p, expected_layout_hash=layout.hash)
        # per-element stats: the mean of the data set's blocks is exactly the mean LoRA
        mean_lora = layout.from_blocks(stats.mean)
        std_lora = layout.from_blocks(stats.std)
        return cls(layout, mean_lora, texts, blocks, [m["concept_id"] for m in metas], std_lora)

    def _sims(self, pooled: torch.Tensor, exclude: str | None) -> np.ndarray:
        sims = self.texts @ pooled.numpy().astype(np.float32)
        if exclude is not None:
            sims = np.where(np.asarray(self.concept_ids) == exclude, -np.inf, sims)
            if not np.isfinite(sims).any():
                raise ValueError(f"no training sample left once {exclude!r} is excluded")
        return sims

    def lora(self, i: int) -> dict[str, torch.Tensor]:
        """Training sample i's LoRA."""
        return self.layout.from_blocks(torch.from_numpy(self.blocks[i]))

    def knn(
        self, pooled: torch.Tensor, k: int, exclude: str | None = None
    ) -> tuple[dict[str, torch.Tensor], list[tuple[str, float]]]:
        """The similarity-weighted mean of the k training LoRAs closest in text (weights: cosine
        similarity clipped at 0, uniform if all are 0), and [(concept id, similarity)] used."""
        sims = self._sims(pooled, exclude)
        k = min(k, int(np.isfinite(sims).sum()))
        top = np.argsort(-sims, kind="stable")[:k]
        w = np.clip(sims[top], 0.0, None)
        w = w / w.sum() if w.sum() > 0 else np.full(k, 1.0 / k)
        mixed = np.tensordot(w.astype(np.float32), self.blocks[top], axes=1)  # (N, S)
        used = [(self.concept_ids[i], float(sims[i])) for i in top]
        return self.layout.from_blocks(torch.from_numpy(np.ascontiguousarray(mixed))), used

    @torch.no_grad()
    def best_by_loss(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        exclude: str | None = None,
    ) -> tuple[dict[str, torch.Tensor], str, float]:
        """(LoRA, concept id, L1) of the training LoRA whose base + LoRA output is closest to y
        on the pairs (x, y) in [0, 1] (B,3,H,W): one forward pass per training sample. `model`:
        a base + LoRA generator (gan.build_concept_model("lora", ...)); its LoRA is left loaded
        with the winner."""
        from weightgen.gan import load_lora

        score = PairScorer(model, x, y, tokens, mask)
        best, best_i = float("inf"), -1
        for i, cid in enumerate(self.concept_ids):
            if cid == exclude:
                continue
            loss = score(self.lora(i))
            if loss < best:
                best, best_i = loss, i
        if best_i < 0:
            raise ValueError(f"no training sample left once {exclude!r} is excluded")
        winner = self.lora(best_i)
        load_lora(model, winner)
        return winner, self.concept_ids[best_i], best

    def nearest(
        self, pooled: torch.Tensor, exclude: str | None = None
    ) -> tuple[dict[str, torch.Tensor], str, float]:
        """(LoRA, concept id, cosine similarity) of the training sample with the closest text;
        `exclude` leaves one concept out (a training concept is its own nearest neighbour)."""
        sims = self._sims(pooled, exclude)
        i = int(np.argmax(sims))
        return self.lora(i), self.concept_ids[i], float(sims[i])


def blend_loras(
    generated: dict[str, torch.Tensor], nearest: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """alpha * generated + (1 - alpha) * nearest for every LoRA tensor (A and B alike).

    Both share the collection's seeded A init, so their factors are aligned and the blend stays
    near both. The one-step generated LoRA deviates from that init up to 6x less than trained
    LoRAs do (attention most; measured on training concepts) and fine-tunes slower than a
    trained LoRA of equal step-0 quality; the blend keeps the trained scale (docs/results.md)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"blend weight must be in [0, 1], got {alpha}")
    if generated.keys() != nearest.keys():
        raise ValueError(
            f"LoRAs to blend differ in tensors: {sorted(set(generated) ^ set(nearest))}"
        )
    return {k: alpha * generated[k] + (1.0 - alpha) * nearest[k] for k in generated}


class PairScorer:
    """Mean L1 between base + LoRA's outputs and the targets on a concept's pairs, forward only:
    `PairScorer(model, x, y, tokens, mask)(lora)`. `model`: a base + LoRA generator
    (gan.build_concept_model("lora", ...)), left holding the last LoRA scored; x, y (B, 3, H, W) in
    [0, 1]; tokens (1, L, D) and mask (1, L) the concept's text."""

    def __init__(self, model, x, y, tokens, mask):
        from weightgen.gan.train import to_model

        self.model = model.eval()
        n = x.shape[0]
        self.xin, self.y = to_model(x), y
        self.tok, self.msk = tokens.expand(n, -1, -1), mask.expand(n, -1)

    @torch.no_grad()
    def __call__(self, lora: dict[str, torch.Tensor]) -> float:
        from weightgen.gan import load_lora
        from weightgen.gan.train import from_model

        load_lora(self.model, lora)
        return float((from_model(self.model(self.xin, self.tok, self.msk)) - self.y).abs().mean())


def scale_delta(lora: dict[str, torch.Tensor], s: float) -> dict[str, torch.Tensor]:
    """The LoRA with every B multiplied by `s`: each update B @ A scaled by exactly s, A (the
    basis the update is expressed in) kept."""
    return {k: v * s if ".lora_B." in k else v for k, v in lora.items()}


# The `pick` candidates besides the generated and the nearest LoRA: their blends, and the
# generated update enlarged (the one-step sample is shrunk toward the conditional mean). Set on
# the validation split (runs/tiny/levers), never on held-out or novel concepts.
PICK_BLENDS = (0.25, 0.5, 0.75)
PICK_SCALES = (1.5, 2.0)


def pick_candidates(
    generated: dict[str, torch.Tensor], nearest: dict[str, torch.Tensor] | None
) -> dict[str, dict[str, torch.Tensor]]:
    """{name: LoRA} of the starts `pick_by_pairs` chooses among: generated, nearest, generated
    blended with nearest at PICK_BLENDS, generated's update scaled by PICK_SCALES (without
    `nearest`, e.g. a model shipped without its training LoRAs: generated and its scalings)."""
    out = {"generated": generated}
    if nearest is not None:
        out["nearest"] = nearest
        out.update({f"blend{a:g}": blend_loras(generated, nearest, a) for a in PICK_BLENDS})
    out.update({f"scale{s:g}": scale_delta(generated, s) for s in PICK_SCALES})
    return out


def pick_by_pairs(
    candidates: dict[str, dict[str, torch.Tensor]], score: PairScorer
) -> tuple[str, dict[str, torch.Tensor], dict[str, float]]:
    """(name, LoRA) of the candidate with the lowest `score` on the concept's pairs, and every
    candidate's score; ties go to the first in `candidates`' order."""
    if not candidates:
        raise ValueError("pick_by_pairs: no candidates")
    losses = {name: score(lora) for name, lora in candidates.items()}
    best = min(losses, key=losses.get)  # first minimum in insertion order
    return best, candidates[best], losses


def initial_loras(
    init: str,
    texts: list[str],
    *,
    sample: SampleConfig,
    bundle=None,
    baselines: WeightBaselines | None = None,
    encoder=None,
    seed: int | None = None,
    pairs: list | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[dict]]:
    """The `init` LoRA of every text, and per text what it came from ({"nearest", "similarity"}
    for the retrieval methods). `bundle`: the generator (generated, blended); `baselines`: the
    training LoRAs (nearest, mean, blended); `seed` overrides sample.seed (batch seeds); `pairs`:
    per text a few (inputs, targets) of its edit, read by a generator trained with pair features
    (others generate from the text alone)."""
    if init not in INITS:
        raise WeightgenError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    if init in ("generated", "blended") and bundle is None:
        raise WeightgenError(f"init {init!r} needs a trained generator")
    if init != "generated" and baselines is None:
        raise WeightgenError(f"init {init!r} needs the training data set (retrieval)")
    gen = None
    if init in ("generated", "blended"):
        from weightgen.diffusion import generate_lora

        gen = generate_lora(
            bundle,
            texts,
            encoder=encoder,
            steps=sample.steps,
            guidance=sample.guidance,
            seed=sample.seed if seed is None else seed,
            pairs=pairs if pairs is not None and bundle.model.config.pair_dim else None,
        )
    if init == "generated":
        return gen, [{} for _ in texts]
    if init == "mean":
        return [baselines.mean_lora for _ in texts], [{} for _ in texts]
    if encoder is None:
        from weightgen.text import get_encoder

        encoder = get_encoder()
    pooled = encoder.encode(texts).pooled
    found = [baselines.nearest(pooled[i]) for i in range(len(texts))]
    info = [{"nearest": cid, "similarity": sim} for _, cid, sim in found]
    near = [lora for lora, _, _ in found]
    if init == "nearest":
        return near, info
    return [blend_loras(g, n, sample.blend) for g, n in zip(gen, near)], info
