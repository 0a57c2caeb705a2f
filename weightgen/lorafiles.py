"""Sampled LoRA files, one scheme for `weightgen sample` and jobs/sample.py.

Text i of a run is written as `NNNNNNN-HHHHHHHHHH.safetensors` (the index, then 10 hex digits of the
text's sha256), atomically, with the text, the run's settings and the batch seed in the safetensors
metadata; `index.json` lists every text whose file exists, whichever run wrote it, so a re-run
skips what is done. The noise of a batch comes from (sample.seed, first index of the batch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from weightgen.config import SampleConfig
from weightgen.initial import initial_loras

INDEX_JSON = "index.json"
INDEX_DIR = "index"
SUFFIX = ".safetensors"


def file_name(index: int, text: str) -> str:
    """Text i -> its LoRA file name: index (7 digits) + 10 hex digits of sha256(text)."""
    return f"{index:07d}-{hashlib.sha256(text.encode()).hexdigest()[:10]}{SUFFIX}"


def batch_seed(seed: int, first_index: int) -> int:
    return (seed * 1_000_003 + first_index) % (2**63)


def write_loras(
    storage,
    items: list[tuple[int, str]],
    settings: dict,
    *,
    sample: SampleConfig,
    batch_size: int,
    init: str = "generated",
    bundle=None,
    baselines=None,
    encoder=None,
) -> list[dict]:
    """The `init` LoRA (weightgen.initial) of every (index, text) in `items`, `batch_size` texts a
    pass, written to `storage`; returns the index rows of the files written."""
    from safetensors.torch import save as st_save

    rows = []
    for b in range(0, len(items), batch_size):
        batch = items[b : b + batch_size]
        bseed = batch_seed(sample.seed, batch[0][0])
        loras, info = initial_loras(
            init, [t for _, t in batch], sample=sample, bundle=bundle, baselines=baselines,
            encoder=encoder, seed=bseed,
        )  # fmt: skip
        for (i, text), sd, extra in zip(batch, loras, info):
            meta = {**{k: str(v) for k, v in settings.items()}, "text": text, "init": init}
            meta.update(
                index=str(i), batch_seed=str(bseed), **{k: str(v) for k, v in extra.items()}
            )
            sd = {k: v.contiguous() for k, v in sd.items()}
            storage.write_bytes(file_name(i, text), st_save(sd, metadata=meta))
            rows.append({"index": i, "text": text, "file": file_name(i, text), "batch_seed": bseed})
    return rows


def write_index(storage, texts: list[str], settings: dict) -> dict:
    """index.json over every text whose file exists (rank 0 / the driver, after the writers)."""
    present = set(storage.list())
    entries = [
        {"index": i, "text": t, "file": file_name(i, t)}
        for i, t in enumerate(texts)
        if file_name(i, t) in present
    ]
    index = {**settings, "num_texts": len(texts), "num_done": len(entries), "entries": entries}
    storage.write_bytes(INDEX_JSON, json.dumps(index, indent=1).encode())
    return index


def sample_settings(generator: str, layout_hash: str, sample: SampleConfig, init: str) -> dict:
    """What a run's files record of how they were made (metadata and index.json)."""
    return {"generator": generator, "layout_hash": layout_hash, "init": init,
            **dataclasses.asdict(sample)}  # fmt: skip
