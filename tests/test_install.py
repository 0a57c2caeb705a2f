"""The install as `make` does it: no name of ours shadows another distribution's top-level name.

The repository root lands first on `sys.path` in `python -c`/`python -m` run from it, under
`python -m pytest` and in Ray workers (their working directory). A folder there with an
`__init__.py` then wins over an installed distribution of the same name: `kernels/` once did, and
`transformers.integrations.hub_kernels` got our Triton kernels instead of Hugging Face's `kernels`.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# module names of ours that users run from the repository root (`python jobs/x.py`, `-m cluster.y`)
_IMPORT_RE = r"^\s*(?:from|import)\s+({names})(?:[\s.,]|$)"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _installed_top_levels() -> dict[str, set[str]]:
    """{top-level import name: distributions that install it}, weightgen itself left out."""
    tops: dict[str, set[str]] = defaultdict(set)
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name is None or name.lower() == "weightgen":
            continue
        for f in dist.files or ():
            head = f.parts[0] if f.parts else ""
            if head in ("..", "__pycache__") or head.endswith((".dist-info", ".egg-info", ".pth")):
                continue
            if head.endswith(".py"):
                head = head[:-3]
            elif "." in head and not head.endswith((".so", ".pyd")):
                continue
            tops[head.split(".")[0]].add(name)
    return tops


def _root_importables() -> set[str]:
    """Names the repository root makes importable as regular packages or modules."""
    names = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    names |= {p.stem for p in ROOT.glob("*.py")}
    return names


def _our_names() -> set[str]:
    """Every top-level name of ours: installed packages, regular packages at the root, and folders
    at the root (a namespace portion is harmless, but listing them keeps the check honest)."""
    installed = {p.split(".")[0] for p in _pyproject()["tool"]["setuptools"]["packages"]}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name.isidentifier()}
    return installed | _root_importables() | folders


def test_packages_list_matches_the_tree():
    """pyproject lists packages by hand (kernels/ installs under another name): every folder with an
    `__init__.py` under weightgen/, cluster/ and jobs/ is listed, and every listed one exists."""
    cfg = _pyproject()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("weightgen", "cluster", "jobs")
        for p in (ROOT / top).rglob("__init__.py")
    }
    on_disk.add("weightgen.configs")  # configs/ and kernels/ install under other names
    assert on_disk <= listed, f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    mapped = cfg.get("package-dir", {})
    for pkg in listed:
        head, rest = pkg, []  # the longest mapped prefix decides the folder
        while head and head not in mapped:
            head, _, last = head.rpartition(".")
            rest.insert(0, last)
        folder = ROOT / (mapped[head] if head else "") / "/".join(rest)
        assert folder.is_dir(), f"pyproject.toml lists {pkg} but {folder} does not exist"


def test_no_name_of_ours_is_another_distributions():
    tops = _installed_top_levels()
    installed = {p.split(".")[0] for p in _pyproject()["tool"]["setuptools"]["packages"]}
    clash = {n: sorted(tops[n]) for n in installed | _root_importables() if n in tops}
    assert not clash, f"our top-level names are also installed by: {clash}"
    # kernels/ is a folder of ours whose name another distribution owns: it must stay a folder
    # without __init__.py (a namespace portion never wins over an installed regular package)
    for name in _our_names() & set(tops):
        assert not (ROOT / name / "__init__.py").exists(), (
            f"{name}/__init__.py shadows {tops[name]}"
        )


def _dependents_importing(names: set[str]) -> list[str]:
    """Modules of installed distributions that import one of `names` (tests left out)."""
    site = Path(sysconfig.get_paths()["purelib"])
    pattern = re.compile(_IMPORT_RE.format(names="|".join(sorted(names))), re.M)
    found = []
    for path in site.rglob("*.py"):
        rel = path.relative_to(site)
        if rel.parts[0] in names or rel.parts[0].endswith(".dist-info"):
            continue  # the distribution that owns the name imports itself
        if any(p in ("tests", "test", "testing") or p.startswith("test_") for p in rel.parts):
            continue
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        if pattern.search(text):
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if all(p.isidentifier() for p in parts):
                found.append(".".join(parts))
    return sorted(found)


_PROBE = r"""
import importlib, importlib.util, json, sys, traceback
out = {"resolved": {}, "imports": {}}
for name in NAMES:
    spec = importlib.util.find_spec(name)
    out["resolved"][name] = None if spec is None else (spec.origin or list(spec.submodule_search_locations or []))
for mod in MODULES:
    try:
        importlib.import_module(mod)
        out["imports"][mod] = "ok"
    except BaseException as e:
        out["imports"][mod] = type(e).__name__ + ": " + str(e).splitlines()[0][:200] if str(e) else type(e).__name__
print("PROBE" + json.dumps(out))
"""


def _probe(cwd: Path, names: list[str], modules: list[str]) -> dict:
    code = f"NAMES = {names!r}\nMODULES = {modules!r}\n" + _PROBE
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE")]
    assert line, f"probe in {cwd} failed:\n{r.stderr[-3000:]}"
    return json.loads(line[-1][len("PROBE") :])


@pytest.mark.slow
def test_dependencies_import_the_same_from_the_repository_root(tmp_path):
    """Every module of our dependencies that imports a name of ours imports from the repository
    root exactly as from an empty folder, and each such name resolves to the same file there."""
    ours = _our_names()
    modules = _dependents_importing(ours)
    assert "transformers.integrations.hub_kernels" in modules  # the scan sees the known case
    names = sorted(ours)
    here = _probe(ROOT, names, modules)
    away = _probe(tmp_path, names, modules)
    for name in names:
        if name in _installed_top_levels():
            assert here["resolved"][name] == away["resolved"][name], (
                f"from the repository root `import {name}` finds {here['resolved'][name]}, "
                f"elsewhere {away['resolved'][name]}"
            )
    diff = {m: (here["imports"][m], away["imports"][m]) for m in modules}
    diff = {m: v for m, v in diff.items() if v[0] != v[1]}
    assert not diff, f"imports that differ at the repository root (root, elsewhere): {diff}"
    assert here["imports"]["transformers.integrations.hub_kernels"] == "ok"


_RAY_DRIVER = r"""
import json, ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)

@ray.remote
def probe():
    import os
    import kernels, transformers.integrations.hub_kernels  # noqa: F401
    import weightgen_kernels.block_kernels as wk
    return {"cwd": os.getcwd(), "kernels": kernels.__file__, "ours": wk.__file__}

try:
    print("PROBE" + json.dumps(ray.get(probe.remote(), timeout=300)))
finally:
    ray.shutdown()
"""


@pytest.mark.ray
@pytest.mark.slow
def test_hub_kernels_imports_inside_a_ray_task():
    """A Ray worker started from the repository root imports Hugging Face's `kernels` (and ours
    under its own name)."""
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _RAY_DRIVER],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = [ln for ln in out.splitlines() if ln.startswith("PROBE")]
    assert line, f"Ray task failed:\n{err[-3000:]}"
    got = json.loads(line[-1][len("PROBE") :])
    assert Path(got["kernels"]).resolve().is_relative_to(Path(sysconfig.get_paths()["purelib"]))
    assert Path(got["ours"]).resolve() == ROOT / "kernels" / "block_kernels.py"


@pytest.mark.slow
def test_the_wheel_ships_kernels_and_configs_under_our_names(tmp_path):
    """A non-editable build: the kernels under weightgen_kernels, the DeepSpeed configs and recipes
    as package data, and no top-level name but ours."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.egg-info")
    for name in ("weightgen", "kernels", "configs", "cluster", "jobs"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("weightgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"weightgen", "weightgen_kernels", "cluster", "jobs"}
    shipped = [f"weightgen/configs/deepspeed/zero{s}.json" for s in (1, 2, 3)]
    shipped += ["weightgen_kernels/block_kernels.py", "weightgen_kernels/bench.py"]
    assert set(shipped) <= names, sorted(set(shipped) - names)


def test_a_missing_deepspeed_config_is_an_error_naming_it(monkeypatch, tmp_path):
    from weightgen.config import TrainConfig
    from weightgen.train import trainer
    from weightgen.train.data import TrainError

    assert json.loads(trainer.ds_config_file(2).read_text())["zero_optimization"]["stage"] == 2
    monkeypatch.setattr(trainer.importlib.resources, "files", lambda _pkg: tmp_path)
    with pytest.raises(TrainError, match=r"DeepSpeed config .*zero3\.json is missing"):
        trainer.ds_config_file(3)
    cfg = TrainConfig(zero_stage=1)
    with pytest.raises(TrainError, match=r"zero1\.json is missing"):
        trainer.deepspeed_config(cfg, world=1, bf16=False)
