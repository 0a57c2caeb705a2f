"""Benchmark of the dataset path on this machine (issue: foundation). Prints a table, writes JSON.

    python -m weightgen.eval.bench_dataset --base runs/demo/base --out runs/bench/dataset

Measures, side by side in one run:
- seconds per concept of `train_concept` (in-process, one thread);
- LoRA values and blocks per concept;
- collection throughput through a local Ray with 1 and 2 workers on the same concepts (ratio);
- shard read throughput (samples/s, sha256 verified);
- on held-out concepts, PSNR/SSIM of the base alone vs base + the collected LoRA, on evaluation
  photos never used in collection.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _collect(ids, base, out, workers):
    import ray

    from weightgen.collect import collect

    if ray.is_initialized():
        ray.shutdown()
    s = collect(out=str(out), base=base, concept_ids=ids, num_workers=workers, progress=False)
    ray.shutdown()
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="runs/demo/base")
    ap.add_argument("--out", default="runs/bench/dataset")
    ap.add_argument("--throughput-concepts", type=int, default=12)
    ap.add_argument(
        "--heldout", type=int, default=None, help="held-out concepts to check (default all)"
    )
    ap.add_argument("--eval-pairs", type=int, default=32)
    args = ap.parse_args(argv)

    from weightgen.blocks import BlockLayout
    from weightgen.collect.job import Job, run_job
    from weightgen.concepts import concepts, get_concept, make_pairs
    from weightgen.data import iter_samples, load_all
    from weightgen.gan import build_concept_model, evaluate, load_base
    from weightgen.text import get_encoder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_state, preset = load_base(args.base)
    enc = get_encoder(preset.text_model, preset.gan.max_text_tokens)
    res: dict = {"preset": preset.name, "base": str(args.base)}

    # 1. train_concept in-process, one thread
    torch.set_num_threads(1)
    train_ids = [c.id for c in concepts("train")[:3]]
    secs = []
    for cid in train_ids:
        t = enc.encode([get_concept(cid).text])
        t0 = time.perf_counter()
        run_job(
            Job(cid, 0), preset=preset, base_state=base_state, tokens=t.tokens[0], mask=t.mask[0]
        )
        secs.append(time.perf_counter() - t0)
    res["train_concept_seconds"] = {
        "median": statistics.median(secs),
        "all": secs,
        "steps": preset.concept.steps,
    }
    print(
        f"train_concept: {statistics.median(secs):.2f} s per concept ({preset.concept.steps} steps, 1 thread)"
    )

    heldout = [c.id for c in concepts("heldout")]
    heldout = heldout[: args.heldout] if args.heldout else heldout
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 2. collection throughput, same concepts, 1 then 2 workers
        ids = heldout[: args.throughput_concepts]
        runs = {}
        for w in (1, 2):
            s = _collect(ids, args.base, tmp / f"w{w}", w)
            runs[w] = s
            print(
                f"collect {len(ids)} concepts with {w} worker(s): {s.seconds:.1f} s, {s.concepts_per_minute:.1f} concepts/min"
            )
        res["lora_values"] = runs[1].lora_params
        res["blocks_per_concept"] = runs[1].num_blocks
        res["block_size"] = runs[1].block_size
        res["collect"] = {
            str(w): {
                "concepts": len(ids),
                "seconds": s.seconds,
                "concepts_per_minute": s.concepts_per_minute,
            }
            for w, s in runs.items()
        }
        res["collect"]["scaling_2_over_1"] = (
            runs[2].concepts_per_minute / runs[1].concepts_per_minute
        )
        print(f"scaling 2 workers / 1 worker: {res['collect']['scaling_2_over_1']:.2f}x")

        # 3. all held-out concepts (2 workers) for the quality check
        full = _collect(heldout, args.base, tmp / "heldout", 2)
        # 4. shard read throughput
        n, t0 = 0, time.perf_counter()
        for _ in range(5):
            for _s in iter_samples(str(tmp / "heldout")):
                n += 1
        read_sps = n / (time.perf_counter() - t0)
        res["shard_read_samples_per_s"] = read_sps
        print(
            f"shard read: {read_sps:.0f} samples/s (sha256 verified, {full.num_blocks}x{full.block_size} blocks)"
        )

        # 5. base alone vs base + LoRA on evaluation photos
        keys, blocks, _, metas = load_all(str(tmp / "heldout"))
        layout = BlockLayout.from_dict(json.loads((tmp / "heldout" / "layout.json").read_text()))
        base_only = build_concept_model(
            "lora", preset.gan, preset.lora, base_state
        )  # B = 0: the base
        rows = []
        for b, meta in zip(blocks, metas):
            c = get_concept(meta["concept_id"])
            t = enc.encode([c.text])
            ex, ey = make_pairs(
                c, args.eval_pairs, size=preset.gan.image_size, seed=0, split="eval"
            )
            p0, s0 = evaluate(base_only, ex, ey, t.tokens, t.mask)
            g = build_concept_model(
                "lora",
                preset.gan,
                preset.lora,
                base_state,
                init_lora=layout.from_blocks(torch.from_numpy(b)),
            )
            p1, s1 = evaluate(g, ex, ey, t.tokens, t.mask)
            rows.append(
                {
                    "id": c.id,
                    "family": c.family,
                    "base_psnr": p0,
                    "lora_psnr": p1,
                    "base_ssim": s0,
                    "lora_ssim": s1,
                }
            )
    gain = [r["lora_psnr"] - r["base_psnr"] for r in rows]
    res["heldout"] = {
        "concepts": len(rows),
        "rejected": full.rejected,
        "median_base_psnr": statistics.median(r["base_psnr"] for r in rows),
        "median_lora_psnr": statistics.median(r["lora_psnr"] for r in rows),
        "median_base_ssim": statistics.median(r["base_ssim"] for r in rows),
        "median_lora_ssim": statistics.median(r["lora_ssim"] for r in rows),
        "median_psnr_gain_db": statistics.median(gain),
        "min_psnr_gain_db": min(gain),
        "fraction_gain_over_1db": sum(g > 1.0 for g in gain) / len(gain),
        "per_concept": rows,
    }
    h = res["heldout"]
    print(
        f"held-out ({len(rows)} concepts, eval photos): base {h['median_base_psnr']:.2f} dB / SSIM {h['median_base_ssim']:.3f}"
        f" -> base+LoRA {h['median_lora_psnr']:.2f} dB / SSIM {h['median_lora_ssim']:.3f}; median gain "
        f"{h['median_psnr_gain_db']:.2f} dB, min {h['min_psnr_gain_db']:.2f} dB, {100 * h['fraction_gain_over_1db']:.0f}% gain > 1 dB"
    )
    (out / "bench_dataset.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out / 'bench_dataset.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
