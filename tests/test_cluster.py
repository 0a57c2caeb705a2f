"""The collection ledger, idempotent tasks and the finaliser, without Ray: tasks are called in-process
(exactly what a Ray worker runs), training is replaced by `synthetic_job`."""

import json

import numpy as np
import pytest

from cluster.synthetic import synthetic_job
from weightgen.blocks import BlockLayout, BlockStats
from weightgen.collect.driver import PlannedJob, _collect_task, _meta, _open_dataset, plan
from weightgen.collect.finalize import CollectError, finalize
from weightgen.collect.job import lora_template, vet
from weightgen.collect.ledger import DONE, FAILED, REJECTED, Ledger
from weightgen.config import CollectConfig, ConceptTrainConfig, GANConfig, LoRAConfig, Preset
from weightgen.data import DatasetError, iter_samples, load_all, open_storage

IDS = ["tone-010", "tint-016", "blur-003"]


def _preset(**collect) -> Preset:
    return Preset(
        name="test",
        gan=GANConfig(image_size=32, channels=8),
        lora=LoRAConfig(rank=2),
        concept=ConceptTrainConfig(steps=5, eval_every=5, n_train_pairs=4, n_eval_pairs=2),
        collect=CollectConfig(**{"shard_maxcount": 2, **collect}),
    )


class Env:
    """A dataset root plus the context a Ray task receives."""

    def __init__(self, root, preset=None, runner=synthetic_job, base_sha="b" * 64):
        self.preset = preset or _preset()
        self.storage = open_storage(str(root))
        self.layout = BlockLayout.from_state_dict(lora_template(self.preset), block_size=256)
        self.base_sha = base_sha
        _open_dataset(self.storage, self.preset, self.layout, base_sha)
        self.ctx = {
            "storage": self.storage,
            "preset": self.preset.to_dict(),
            "layout": self.layout.to_dict(),
            "base_state": None,
            "runner": runner,
            "vet": vet,
        }

    def plan(self, ids=IDS, seeds=1) -> list[PlannedJob]:
        return plan(ids, seeds, self.preset, self.base_sha)

    def run(self, pj: PlannedJob) -> dict:
        rng = np.random.default_rng(0)
        text = (
            rng.standard_normal(384).astype(np.float32),
            rng.standard_normal((16, 384)).astype(np.float32),
            np.ones(16, bool),
        )
        return _collect_task(self.ctx, pj, _meta(pj, self.layout), text)


def test_plan_ids_are_content_hashes():
    p = _preset()
    a = plan(IDS, 2, p, "x" * 64)
    assert [j.key for j in a] == [f"{c}-s{s}" for c in IDS for s in (0, 1)]
    assert [j.id for j in a] == [j.id for j in plan(IDS, 2, _preset(max_in_flight=3), "x" * 64)]
    assert len({j.id for j in a}) == 6
    # anything that changes the result changes the id: base weights, training settings
    assert a[0].id != plan(IDS, 1, p, "y" * 64)[0].id
    p2 = _preset()
    p2.concept.steps = 6
    assert a[0].id != plan(IDS, 1, p2, "x" * 64)[0].id


def test_ledger_precedence_and_scan(tmp_path):
    led = Ledger(open_storage(str(tmp_path)))
    led.write("a", FAILED, reason="boom", attempts=3)
    led.write("b", REJECTED, reason="low PSNR")
    assert led.scan() == {"a": FAILED, "b": REJECTED}
    assert led.final_status("a") is None and led.final_status("b") == REJECTED
    led.write("a", DONE, shard="parts/a.tar")
    assert led.scan() == {"a": DONE, "b": REJECTED}
    assert not (tmp_path / "ledger" / "a.failed.json").exists()  # superseded
    led.start_attempt("a")
    led.start_attempt("a")
    assert led.attempts("a") == 2 and led.attempts("b") == 0
    assert led.read("a", DONE)["shard"] == "parts/a.tar" and led.read("zz", DONE) is None


def test_tasks_are_idempotent_and_finalise_merges_runs(tmp_path):
    env = Env(tmp_path / "ds")
    jobs = env.plan()
    recs = [env.run(pj) for pj in jobs]
    assert [r["status"] for r in recs] == [DONE] * 3
    # a second run of a finished id (a Ray retry, another driver) writes nothing
    mtime = (tmp_path / "ds" / jobs[0].part).stat().st_mtime_ns
    again = env.run(jobs[0])
    assert again["duplicate"] and again["status"] == DONE
    assert (tmp_path / "ds" / jobs[0].part).stat().st_mtime_ns == mtime
    assert Ledger(env.storage).attempts(jobs[0].id) == 1

    m1 = finalize(env.storage)
    assert m1.num_samples == 3 and [s.samples for s in m1.shards] == [2, 1]  # maxcount 2
    assert finalize(env.storage) == m1  # nothing new: nothing rewritten

    # a larger plan: only new ids run; the full shard is kept, the partial one is repacked
    more = env.plan(IDS, seeds=2)
    new = [pj for pj in more if Ledger(env.storage).final_status(pj.id) is None]
    assert len(new) == 3
    for pj in new:
        env.run(pj)
    m2 = finalize(env.storage)
    assert m2.num_samples == 6 and m2.shards[0] == m1.shards[0]
    keys, blocks, _, metas = load_all(str(tmp_path / "ds"), expected_layout_hash=env.layout.hash)
    assert sorted(keys) == sorted(pj.key for pj in more)  # every id exactly once
    assert sorted(m["content_id"] for m in metas) == sorted(pj.id for pj in more)
    stats = BlockStats.load(tmp_path / "ds" / "stats.safetensors")
    valid = env.layout.valid_mask().numpy()
    np.testing.assert_allclose(stats.mean.numpy()[valid], blocks.mean(0)[valid], atol=1e-6)
    assert stats.count == 6


def test_rejected_and_failed_are_recorded(tmp_path):
    def bad_vet(result, cfg):
        return "weight magnitude 99 above the bound 20" if result["seed"] == 1 else None

    env = Env(tmp_path / "ds")
    env.ctx["vet"] = bad_vet
    jobs = env.plan(IDS[:1], seeds=2)
    assert env.run(jobs[1])["status"] == REJECTED
    assert env.run(jobs[1])["duplicate"]  # rejected is final too
    env.run(jobs[0])
    Ledger(env.storage).write("f" * 16, FAILED, key="other-s0", reason="task failed: X", attempts=3)
    finalize(env.storage)
    rejected = json.loads((tmp_path / "ds" / "rejected.json").read_text())
    assert rejected == [
        {"key": "other-s0", "reason": "task failed: X", "status": FAILED, "attempts": 3},
        {"key": jobs[1].key, "reason": "weight magnitude 99 above the bound 20"},
    ]


def test_corrupt_part_is_named_demoted_and_redone(tmp_path):
    env = Env(tmp_path / "ds")
    jobs = env.plan()
    for pj in jobs:
        env.run(pj)
    part = tmp_path / "ds" / jobs[1].part
    data = bytearray(part.read_bytes())
    data[700] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"{jobs[1].part}: sha256 differs"):
        finalize(env.storage)
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert Ledger(env.storage).scan()[jobs[1].id] == FAILED  # a re-run redoes it
    assert env.run(jobs[1])["status"] == DONE
    assert finalize(env.storage).num_samples == 3


def test_corrupt_packed_shard_is_named_by_reader_and_rebuilt(tmp_path):
    env = Env(tmp_path / "ds")
    for pj in env.plan():
        env.run(pj)
    m = finalize(env.storage)
    packed = tmp_path / "ds" / m.shards[0].name
    packed.write_bytes(packed.read_bytes()[:-1024])
    with pytest.raises(DatasetError, match=m.shards[0].name):
        list(iter_samples(str(tmp_path / "ds")))
    (tmp_path / "ds" / "manifest.json").unlink()  # a finaliser that rebuilds from the parts
    m2 = finalize(env.storage)
    assert m2.shards == m.shards  # same members: same name, same bytes
    assert len(list(iter_samples(str(tmp_path / "ds")))) == 3


def test_other_settings_and_legacy_datasets_are_refused(tmp_path):
    env = Env(tmp_path / "ds")
    other = _preset()
    other.concept.steps = 7
    with pytest.raises(CollectError, match="collected with other settings"):
        Env(tmp_path / "ds", preset=other)
    with pytest.raises(CollectError, match="collected with other settings.*base_sha256"):
        Env(tmp_path / "ds", base_sha="c" * 64)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text("{}")
    with pytest.raises(CollectError, match="without a collection ledger"):
        Env(legacy)
    with pytest.raises(CollectError, match="no job has passed vetting"):
        finalize(env.storage)


def test_cli_seeds_flag_and_errors(tmp_path, capsys):
    from weightgen.cli import main
    from weightgen.gan import E2GANGenerator, save_base

    p = _preset()
    save_base(tmp_path / "base", E2GANGenerator(p.gan).state_dict(), p, {})
    argv = ["collect", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "ds")]
    assert main([*argv, "--concept", "tone-010", "--set", "collect.seeds_per_concept=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weightgen: error: ") and "\n" not in err
    assert "collect.seeds_per_concept must be >= 1, got 0" in err
    assert main([*argv, "--concept", "tone-010", "--set", "gan.channels=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "collect takes --set collect.FIELD only ('gan.channels=4'" in err
    Env(tmp_path / "other", base_sha="c" * 64)  # a dataset of another base at this --out
    assert main([*argv[:-1], str(tmp_path / "other"), "--concept", "tone-010"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weightgen: error: ") and "collected with other settings" in err
    assert "\n" not in err
