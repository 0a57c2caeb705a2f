"""Shared by the session 11 probes."""

import numpy as np
import torch


def top_nearest(baselines, sims_i: np.ndarray, k: int) -> list[dict]:
    """The training LoRAs of the k distinct concepts closest in text; sims_i: (M,) cosine
    similarities of the M training samples to one held-out text."""
    ids, loras = [], []
    for j in np.argsort(-sims_i):
        cid = baselines.concept_ids[j]
        if cid in ids:
            continue
        ids.append(cid)
        loras.append(baselines.layout.from_blocks(torch.from_numpy(baselines.blocks[j])))
        if len(loras) == k:
            break
    return loras
