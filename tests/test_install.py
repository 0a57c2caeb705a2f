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
import subprocess
import sys
import sysconfig
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
    assert on_disk <= listed, f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    mapped = cfg.get("package-dir", {})
    for pkg in listed:
        folder = ROOT / mapped.get(pkg, pkg.replace(".", "/"))
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
