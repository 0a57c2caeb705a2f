"""Retrieval as conditioning: the bank of training LoRAs a retrieval-augmented BlockDiT reads.

The bank holds one entry per training concept (its first sample): the normalised blocks
(M, N, S) the generator trains on and the L2-normalised pooled text embedding (M, Dt) of the
concept's text. A query (a concept's pooled text embedding) gets the K entries most similar in
text (cosine), best first, and their similarities.

In training a sample never retrieves its own concept (`exclude="concept"`), and with
TrainConfig.neighbor_family_drop it sometimes retrieves nothing of its own family
(`exclude="family"`): the situation of a concept from a family no training stage saw.

Stored beside an exported generator as `neighbors.safetensors` (blocks, texts; ids and families
in the metadata), so sampling needs no data set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

BANK_FILE = "neighbors.safetensors"
EXCLUDE = ("concept", "family")


@dataclass
class NeighborBank:
    blocks: Tensor  # (M, N, S) float32, normalised with the generator's block statistics
    texts: Tensor  # (M, Dt) float32, L2-normalised pooled text embeddings
    concept_ids: list[str]
    families: list[str]

    def __post_init__(self):
        m = self.blocks.shape[0]
        if not (self.texts.shape[0] == len(self.concept_ids) == len(self.families) == m):
            raise ValueError("neighbour bank: blocks, texts, ids and families differ in length")
        if len(set(self.concept_ids)) != m:
            raise ValueError("neighbour bank: one entry per concept")

    @property
    def size(self) -> int:
        return self.blocks.shape[0]

    @classmethod
    def from_samples(
        cls, x0: Tensor, pooled: Tensor, concept_ids: list[str], families: list[str]
    ) -> tuple[NeighborBank, Tensor]:
        """The bank of a training set (x0 (M, N, S) normalised, pooled (M, Dt)) and, for every
        sample, its concept's bank row (M,) long."""
        first: dict[str, int] = {}
        for i, c in enumerate(concept_ids):
            first.setdefault(c, i)
        rows = torch.tensor(list(first.values()), dtype=torch.long)
        bank = cls(
            x0[rows].float().contiguous(),
            F.normalize(pooled[rows].float(), dim=-1),
            list(first),
            [families[i] for i in rows.tolist()],
        )
        pos = {c: j for j, c in enumerate(first)}
        return bank, torch.tensor([pos[c] for c in concept_ids], dtype=torch.long)

    def query(
        self, pooled: Tensor, k: int, exclude_rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """pooled (B, Dt) -> (rows (B, k) long, similarities (B, k)), most similar first;
        `exclude_rows` (B, M) bool masks entries a query may not retrieve."""
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be in [1, {self.size}] (the bank's concepts), got {k}")
        sims = F.normalize(pooled.float(), dim=-1) @ self.texts.T  # (B, M)
        if exclude_rows is not None:
            left = (~exclude_rows).sum(dim=1).min()
            if int(left) < k:
                raise ValueError(f"fewer than k={k} bank entries left once excluded")
            sims = sims.masked_fill(exclude_rows, float("-inf"))
        top = torch.topk(sims, k, dim=1, sorted=True)
        return top.indices, top.values

    def training_index(
        self, own_rows: Tensor, k: int, family: bool = False
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """For every training sample (its concept's bank row, (M,)): the k neighbours retrieved
        without its own concept ("concept") and, with `family`, without its own family
        ("family"), each (rows (M, k), similarities (M, k))."""
        codes = {f: j for j, f in enumerate(dict.fromkeys(self.families))}
        fam = torch.tensor([codes[f] for f in self.families])  # (M_bank,)
        out = {}
        for what in EXCLUDE[: 2 if family else 1]:
            if what == "concept":
                excl = own_rows[:, None] == torch.arange(self.size)[None]  # (M, M_bank)
            else:
                excl = fam[own_rows][:, None] == fam[None]  # (M, M_bank)
            out[what] = self.query(self.texts[own_rows], k, excl)
        return out

    def gather(self, rows: Tensor) -> Tensor:
        """rows (B, k) -> neighbour blocks (B, k, N, S)."""
        return self.blocks[rows]

    # -- files --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        meta = {"concept_ids": json.dumps(self.concept_ids), "families": json.dumps(self.families)}
        save_file({"blocks": self.blocks.contiguous(), "texts": self.texts.contiguous()},
                  str(path), meta)  # fmt: skip
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeighborBank:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            blocks, texts = f.get_tensor("blocks"), f.get_tensor("texts")
        return cls(blocks, texts, json.loads(meta["concept_ids"]), json.loads(meta["families"]))


__all__ = ["BANK_FILE", "EXCLUDE", "NeighborBank"]
