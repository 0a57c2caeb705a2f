"""Image loss of the generator: how far the edit a generated LoRA makes is from the concept's edit.

The x0 loss compares weights value by value; even weighted by sensitivity it cannot see that a
LoRA acts through products B @ A, nor that many weight settings make the same image. This loss
decodes the generator's one-step output (t = T-1, pure noise: what sampling produces) into a LoRA,
runs the frozen base + that LoRA on collection photos and takes the pixel MSE against the
concept's exact edit (weightgen.concepts.make_pairs). Gradients reach the generator through the
merged LoRA weights (weightgen.gan.lora's fused forward under torch.func.functional_call).

Only catalogue concepts take part (a sample's key is "<concept id>-s<seed>"); photos come from the
collection split, so held-out evaluation photos stay unseen.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from weightgen.train.data import TrainData, TrainError


def concept_of_key(key: str) -> str:
    """A data set key "<concept id>-s<seed>" -> the concept id."""
    cid, sep, seed = key.rpartition("-s")
    return cid if sep and seed.isdigit() else key


class ImageLoss:
    """Pixel MSE ([0, 1] units) of base + generated LoRA against the exact edited photos.

    `crops` collection crops are shared by every concept (their targets differ); each call uses
    `per_call` of them per concept. `pick(n, generator)` draws which samples a step trains.
    The targets stay in memory: concepts x crops x 3 x H x W floats (395 x 16 x 3 x 64^2:
    310 MB).
    """

    def __init__(
        self,
        base_dir: str,
        data: TrainData,
        *,
        crops: int = 16,
        per_call: int = 4,
        seed: int = 0,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ):
        from weightgen.blocks import LayoutMismatchError
        from weightgen.concepts import concepts as list_concepts
        from weightgen.concepts.pairs import make_pairs
        from weightgen.gan.base import load_base
        from weightgen.gan.lora import lora_param_names, lora_state_dict
        from weightgen.gan.train import build_concept_model, to_model

        if crops < 1 or not 1 <= per_call <= crops:
            raise TrainError(f"image loss: need crops >= 1 and 1 <= per_call <= crops, got "
                             f"{crops} / {per_call}")  # fmt: skip
        try:
            base_state, preset = load_base(base_dir)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TrainError(f"image loss: cannot load the base {base_dir} ({first})") from None
        g = build_concept_model("lora", preset.gan, preset.lora, base_state).eval()
        try:
            data.layout.check_state_dict(lora_state_dict(g))
        except LayoutMismatchError as e:
            raise TrainError(
                f"image loss: the base {base_dir} does not fit the data set "
                f"({str(e).splitlines()[0]}); pass the base "
                "the data set was collected on"
            ) from None
        for p in g.parameters():
            p.requires_grad_(False)
        self.model = g.to(device)
        self.param_name = lora_param_names(g)  # layout names -> functional_call's names
        known = {c.id: c for c in list_concepts()}
        ids = [concept_of_key(k) for k in data.keys]
        self.usable = torch.tensor([i in known for i in ids])  # (M,) bool
        if not bool(self.usable.any()):
            raise TrainError(
                "image loss: no sample of the data set is a catalogue concept (keys "
                "'<concept id>-s<seed>'); train without --image-loss"
            )
        self.pool = torch.nonzero(self.usable).squeeze(1)  # (U,) the samples pick() draws from
        # one row of targets per concept (several seeds of a concept share it); -1: not usable
        row = {cid: r for r, cid in enumerate(dict.fromkeys(i for i in ids if i in known))}
        self.target_row = torch.tensor([row.get(i, -1) for i in ids])  # (M,)
        size = preset.gan.image_size
        ys = torch.zeros(len(row), crops, 3, size, size)  # (concepts, C, 3, H, W) in [0, 1]
        for cid, r in tqdm(row.items(), desc="image-loss pairs", disable=not progress):
            # the same crops for every concept (same n, size, seed, split); targets differ
            x, ys[r] = make_pairs(known[cid], crops, size=size, seed=seed, split="collect")
        self.x = to_model(x).to(device)  # (C, 3, H, W) in [-1, 1]
        self.y = ys.to(device)
        self.mean = data.stats.mean.to(device)  # (N, S)
        self.std = data.stats.std.to(device)
        self.valid = data.layout.valid_mask(device)
        self.layout = data.layout
        self.per_call = per_call
        self.tokens, self.mask = data.tokens.to(device), data.mask.to(device)

    def pick(self, n: int, generator: torch.Generator) -> Tensor:
        """(n,) int64: usable samples drawn uniformly (with replacement)."""
        return self.pool[torch.randint(0, len(self.pool), (n,), generator=generator)]

    def __call__(self, pred: Tensor, idx: Tensor, generator: torch.Generator) -> Tensor:
        """pred (K, N, S) normalised blocks for samples idx (K,) -> scalar mean pixel MSE."""
        from torch.func import functional_call

        from weightgen.gan.train import from_model

        raw = (pred.float() * self.std + self.mean) * self.valid  # (K, N, S) de-normalised
        loras = self.layout.from_blocks(raw)  # {name: (K, *shape)}
        C = self.x.shape[0]
        total = pred.new_zeros((), dtype=torch.float32)
        for k in range(pred.shape[0]):
            crops = torch.randperm(C, generator=generator)[: self.per_call].to(self.x.device)
            i = int(idx[k])
            params = {self.param_name[n]: t[k] for n, t in loras.items()}
            n = crops.shape[0]
            out = functional_call(
                self.model,
                params,
                (self.x[crops], self.tokens[i][None].expand(n, -1, -1),
                 self.mask[i][None].expand(n, -1)),
            )  # fmt: skip
            y = self.y[int(self.target_row[i]), crops]  # (n, 3, H, W)
            total = total + ((from_model(out) - y) ** 2).mean()
        return total / pred.shape[0]
