"""The config tree: shipped recipes, `extends`, typed overrides, one-line errors, the resolved copy."""

import json

import pytest
from _configs import PLAIN

from weightgen.cli import main
from weightgen.config import (
    SECTIONS,
    ConfigError,
    Preset,
    config_names,
    load_config,
    only_sections,
    override,
)


def test_shipped_recipes_load_and_hold_the_measured_chain():
    assert config_names() == ["demo", "paper", "tiny"]
    tiny, demo, paper = load_config("tiny"), load_config("demo"), load_config("paper")
    # the v10/v11 chain: 16-channel base, 8,000 base steps, sensitivity loss, image loss from
    # step 4,500 of 5,500, text noise 0.5, paraphrases, blend 0.5
    assert (tiny.gan.channels, tiny.base.steps) == (16, 8000)
    g = tiny.generator
    assert (g.max_steps, g.loss_weight, g.image_loss, g.image_loss_start) == (
        5500,
        "sensitivity",
        5.0,
        4500,
    )
    assert g.text_noise == 0.5 and g.paraphrases and tiny.sample.blend == 0.5
    assert tiny.bench.blend == (0.25, 0.5, 0.75)  # candidates, chosen on validation
    # demo extends tiny: its own cuts, the rest inherited
    assert demo.name == "demo" and demo.gan == tiny.gan and demo.generator.text_noise == 0.5
    assert (demo.collect.limit, demo.generator.max_steps, demo.bench.concepts) == (20, 200, 2)
    assert demo.split == tiny.split and demo.bench.blend == () and demo.generator.image_loss == 0
    assert paper.gan.image_size == 256 and paper.generator.zero_stage == 2
    for p in (tiny, demo, paper):  # every section typed, and a saved copy reads back the same
        assert all(isinstance(getattr(p, k), kind) for k, kind in SECTIONS.items())
        assert Preset.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_plain_is_every_default():
    assert load_config(PLAIN) == Preset(name="plain")


def test_extends_files_and_errors(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b"\n[generator]\nmax_steps = 7\n')
    (tmp_path / "b.toml").write_text(
        'extends = "tiny"\n[gan]\nchannels = 8\n[generator]\nlr = 0.01\n'
    )
    a = load_config(str(tmp_path / "a.toml"))
    assert a.name == "a" and a.gan.channels == 8  # b's, over tiny's 16
    assert (a.generator.max_steps, a.generator.lr) == (7, 0.01)
    assert a.generator.loss_weight == "sensitivity"  # tiny's, through b
    (tmp_path / "loop.toml").write_text('extends = "loop"\n')
    (tmp_path / "bad.toml").write_text("[gan\nchannels = 8\n")
    (tmp_path / "typo.toml").write_text("[generator]\nmax_stepz = 8\n")
    (tmp_path / "kind.toml").write_text('[generator]\nmax_steps = "many"\n')
    for name, needle in [
        ("loop.toml", "extends itself"),
        ("bad.toml", "is not valid TOML"),
        ("typo.toml", r"unknown generator config keys: \['max_stepz'\]"),
        ("kind.toml", "generator.max_steps: 'many' is not a valid int"),
        ("none.toml", "no config file"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            load_config(str(tmp_path / name))


def test_override_values_are_toml_typed_by_their_field():
    p = load_config(
        "tiny",
        [
            "generator.base=runs/x/base",  # not TOML: the text itself
            "bench.lrs={scratch = 0.002}",
            "bench.sweep_lrs=[1e-3, 3e-3]",
            "bench.refine_strength=0.5",
            "bench.concepts=none",
            "generator.bf16=true",
            "generator.lr=1",  # an int where a float goes
            "text_model=all-MiniLM-L6-v2",
        ],
    )
    assert p.generator.base == "runs/x/base" and p.bench.lrs == {"scratch": 0.002}
    assert p.bench.sweep_lrs == (1e-3, 3e-3) and p.bench.refine_strength == 0.5
    assert p.bench.concepts is None and p.generator.bf16 is True
    assert p.generator.lr == 1.0 and isinstance(p.generator.lr, float)
    assert override(p, ["generator.max_steps=3", "generator.max_steps=4"]).generator.max_steps == 4
    for bad, needle in [
        ("generator.bf16=maybe", "'maybe' is not a valid bool"),
        ("bench.lrs=3", "not a valid dict"),
        ("bench.blend=2", "blend must be in"),
        ("generator.zero_stage=4", "zero_stage must be 1, 2 or 3"),
        ("sample.steps=0", "sample.steps must be >= 1"),
        ("collect.limit=0", "collect.limit must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            override(p, [bad])
    only_sections(["collect.limit=3"], ("collect",), "collect")
    with pytest.raises(ConfigError, match="collect takes --set collect.FIELD only"):
        only_sections(["gan.channels=8"], ("collect",), "collect")


def test_commands_save_the_resolved_config(tmp_path, capsys):
    """`weightgen sample` on a bad generator fails in one line before writing; `weightgen base`
    with a bad override too; a base command's resolved copy is read back as its config."""
    rc = main(["base", "--out", str(tmp_path / "r"), "--set", "generator.max_stepz=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no field 'max_stepz'" in err[0]
    rc = main(["base", "--out", str(tmp_path / "r"), "--config", PLAIN,
               "--set", "base.steps=2", "--set", "gan.image_size=16",
               "--set", "base.pairs_per_concept=2", "--set", "base.batch_size=2"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "r" / "base" / "resolved-config.json").read_text())
    assert saved["source"] == PLAIN and saved["overrides"][0] == "base.steps=2"
    assert Preset.from_dict(saved["config"]) == load_config(PLAIN, saved["overrides"])
    assert Preset.load(tmp_path / "r" / "base" / "config.json") == Preset.from_dict(saved["config"])
