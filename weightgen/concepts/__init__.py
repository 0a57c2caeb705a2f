"""Concept catalogue (text + edit program), source photos and paired-data generation."""

from weightgen.concepts.catalogue import (
    FAMILIES,
    SPLITS,
    Concept,
    UnknownConceptError,
    base_concepts,
    catalogue,
    concepts,
    get_concept,
    interleave,
)
from weightgen.concepts.edits import EDITS, Edit, apply_program
from weightgen.concepts.images import COLLECT_PHOTOS, EVAL_PHOTOS, load_photo, random_crops
from weightgen.concepts.pairs import EVAL_SEED_OFFSET, PAIR_SPLITS, make_pairs, save_concept_grid
from weightgen.concepts.splits import SPLIT_NAMES, SplitError, Splits

__all__ = [
    "COLLECT_PHOTOS",
    "EDITS",
    "EVAL_PHOTOS",
    "EVAL_SEED_OFFSET",
    "FAMILIES",
    "PAIR_SPLITS",
    "SPLITS",
    "SPLIT_NAMES",
    "Concept",
    "Edit",
    "SplitError",
    "Splits",
    "UnknownConceptError",
    "apply_program",
    "base_concepts",
    "catalogue",
    "concepts",
    "get_concept",
    "interleave",
    "load_photo",
    "make_pairs",
    "random_crops",
    "save_concept_grid",
]
