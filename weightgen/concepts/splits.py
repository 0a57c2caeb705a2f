"""The recipe's concept splits (config section `[split]`), carved from the catalogue:

  novel       every concept whose program uses an operation of a `novel_families` family (that
              family's own concepts, and every composition using one of its operations), in both
              catalogue splits: no training-side stage ever sees one of these operations
  heldout     the catalogue's held-out concepts that are not novel (same families as training,
              unseen parameters and texts)
  validation  `validation_per_family` catalogue training concepts of every family left, never
              collected: where the benchmark tunes its choices (rates, k, blend, noise)
  train       the rest of the catalogue's training concepts: base pre-training draws from them,
              collection collects them
  family:F    the training-side concepts (train and validation) that use an operation of the
              training family F: left out of a generator's data set (derive_dataset's
              `drop_family`), they validate a choice for unseen families the way `novel` tests it

The four are disjoint; `train` and `validation` never use a novel operation (tests prove it from
the edit programs).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from weightgen.concepts.catalogue import FAMILIES, Concept, concepts, interleave, pick_base

SPLIT_NAMES = ("train", "validation", "heldout", "novel")


class SplitError(ValueError):
    """An unknown split or family (one line)."""


@dataclass(frozen=True)
class Splits:
    novel_families: tuple[str, ...] = ()
    validation_per_family: int = 0

    def __post_init__(self):
        object.__setattr__(self, "novel_families", tuple(self.novel_families))
        unknown = [f for f in self.novel_families if f not in FAMILIES]
        if unknown:
            raise SplitError(
                f"unknown novel families {unknown}; choose from: {', '.join(FAMILIES)}"
            )
        if self.validation_per_family < 0:
            raise SplitError("validation_per_family must be >= 0")

    @classmethod
    def of(cls, preset) -> Splits:
        """The splits of a recipe (its `[split]` section)."""
        return _splits(tuple(preset.split.novel_families), preset.split.validation_per_family)

    @functools.cached_property
    def novel_ops(self) -> frozenset[str]:
        """Every edit operation used by a novel family's programs."""
        return frozenset(
            e.op for c in concepts() if c.family in self.novel_families for e in c.program
        )

    def is_novel(self, c: Concept) -> bool:
        return c.family in self.novel_families or any(e.op in self.novel_ops for e in c.program)

    @functools.cached_property
    def _training_pool(self) -> tuple[Concept, ...]:
        return tuple(c for c in concepts("train") if not self.is_novel(c))

    @functools.cached_property
    def base(self) -> tuple[Concept, ...]:
        """N_BASE training concepts, round robin over the families left, spread within each."""
        return tuple(pick_base(self._training_pool))

    @functools.cached_property
    def validation(self) -> tuple[Concept, ...]:
        """Per family, `validation_per_family` training concepts spread over the family and never
        one of the base's; families in catalogue order."""
        if not self.validation_per_family:
            return ()
        base = set(self.base)
        out = []
        for fam in FAMILIES:
            pool = [c for c in self._training_pool if c.family == fam and c not in base]
            v = min(self.validation_per_family, max(0, len(pool) - 1))  # keep one to train on
            out += [pool[(2 * j + 1) * len(pool) // (2 * v)] for j in range(v)]
        return tuple(out)

    def family_ops(self, family: str) -> frozenset[str]:
        """The operations of training family `family` (SplitError for a novel or unknown one)."""
        if family not in FAMILIES or family in self.novel_families:
            raise SplitError(
                f"family:{family}: not a training family; choose from: "
                + ", ".join(f for f in FAMILIES if f not in self.novel_families)
            )
        return frozenset(e.op for c in concepts() if c.family == family for e in c.program)

    def concepts(self, name: str) -> list[Concept]:
        """The concepts of split `name`, in catalogue order."""
        if name.startswith("family:"):
            ops = self.family_ops(name.removeprefix("family:"))
            return [c for c in self._training_pool if any(e.op in ops for e in c.program)]
        if name == "train":
            held = set(self.validation)
            return [c for c in self._training_pool if c not in held]
        if name == "validation":
            return list(self.validation)
        if name == "heldout":
            return [c for c in concepts("heldout") if not self.is_novel(c)]
        if name == "novel":
            return [c for c in concepts() if self.is_novel(c)] if self.novel_families else []
        raise SplitError(
            f"unknown split {name!r}; choose from: {', '.join(SPLIT_NAMES)}, family:NAME"
        )

    def collection_order(self) -> list[Concept]:
        """The training concepts, families interleaved: any prefix (`collect.limit`) covers
        every family evenly."""
        return interleave(self.concepts("train"))

    def describe(self) -> dict:
        """What a report records about the splits."""
        return {
            "novel_families": list(self.novel_families),
            "novel_ops": sorted(self.novel_ops),
            "validation_per_family": self.validation_per_family,
            "sizes": {n: len(self.concepts(n)) for n in SPLIT_NAMES},
        }


@functools.lru_cache(maxsize=16)
def _splits(novel: tuple[str, ...], validation: int) -> Splits:
    return Splits(novel, validation)
