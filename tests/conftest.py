"""Shared test set-up. Environment first: Triton's interpreter must be chosen before any kernel
module is imported, DeepSpeed must not look for a GPU, Ray's token auth is off for local tests."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests of real components: under CI=true one of these that skips fails the run, so a broken
# install step (no `weed`, no moto, no Ray) cannot quietly remove their coverage.
REAL_COMPONENTS = ("s3", "ray", "dist")
_outcomes: dict[str, dict[str, int]] = {}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    marks = [m for m in REAL_COMPONENTS if m in item.keywords]
    if rep.skipped and marks and _in_ci():
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"CI=true: a test of a real component ({', '.join(marks)}) skipped: {reason}"
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        for m in marks or ("other",):
            counts = _outcomes.setdefault(m, {})
            counts[rep.outcome] = counts.get(rep.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not _outcomes:
        return
    terminalreporter.section("tests per marker")
    for m in (*REAL_COMPONENTS, "other"):
        counts = _outcomes.get(m, {})
        line = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"
        terminalreporter.write_line(f"{m}: {line}")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
