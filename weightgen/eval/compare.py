"""Methods compared over the fine-tuned concepts, for one target at a time: quartiles of time and
steps to the target with the count that never reached it, speed-ups over scratch and LoRA-from-
zero with a bootstrap interval of their median, and a paired sign test of `generated` against every
other method.

Input rows: `per_concept[cid]["methods"][method]` with `time_to_<target>_s` and
`steps_to_<target>` (None = never reached within the method's budget).
"""

from __future__ import annotations

import math

from weightgen.eval.stats import bootstrap_median, quartiles, ratios, sign_test

TARGETS = {
    "paper": "scratch's plateau quality (the paper's target)",
    "hard": "LoRA-from-zero's plateau quality (what a full E2GAN run reaches)",
}
REFERENCE = "generated"  # the method every other one is sign-tested against


def _times(per_concept: dict, method: str, key: str) -> list[float | None]:
    return [row["methods"].get(method, {}).get(key) for row in per_concept.values()]


def target_table(
    per_concept: dict, methods: list[str], target: str, *, reference: str = REFERENCE, seed: int = 0
) -> dict:
    """{method: {...}} for `target` ("paper" or "hard") over the concepts every method ran on."""
    t_key, s_key = f"time_to_{target}_s", f"steps_to_{target}"
    rows = {
        cid: row
        for cid, row in per_concept.items()
        if all(m in row["methods"] for m in methods) and row.get(f"{target}_target_psnr")
    }
    out = {}
    for m in methods:
        times = _times(rows, m, t_key)
        entry = {
            "time_s": quartiles(times),
            "steps": quartiles(_times(rows, m, s_key)),
            "reached": sum(t is not None for t in times),
            "concepts": len(times),
        }
        for slow, name in (("scratch", "vs_scratch"), ("lora-zero", "vs_lora_zero")):
            if slow in methods and slow != m:
                r = ratios(_times(rows, slow, t_key), times)
                q = quartiles(r)  # +inf (slow never) reads as None: a lower bound
                entry[name] = {
                    "median": _finite(_median(r)),
                    "q1": q["q1"],
                    "q3": q["q3"],
                    "n": len(r),
                    "ci95": bootstrap_median(r, seed=seed),
                }
        if reference in methods and m != reference:
            entry[f"{reference}_vs_this"] = sign_test(_times(rows, reference, t_key), times)
        out[m] = entry
    return {"target": TARGETS[target], "concepts": len(rows), "methods": out}


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def table_markdown(table: dict, *, reference: str = REFERENCE) -> list[str]:
    """One markdown table for one target's `target_table`."""

    def num(v, nd=1):
        return "—" if v is None else f"{v:.{nd}f}"

    def iqr(q):
        return f"{num(q['median'])} [{num(q['q1'])}, {num(q['q3'])}]"

    def speed(e):
        if not e:
            return "—"
        ci = e["ci95"]
        x = "×" if e["median"] is not None else ""
        return f"{num(e['median'])}{x} ({num(ci['low'])}–{num(ci['high'])})"

    lines = [
        f"Target: {table['target']}; {table['concepts']} concepts every method ran on. "
        "Times: median [quartiles] in seconds, '—' where it falls on a concept never reached; "
        "speed-ups: median per-concept ratio (bootstrap 95% interval); "
        f"sign test: {reference}'s wins/losses/ties against the row, two-sided p.",
        "",
        "| method | time to target (s) | steps | never | × vs scratch | × vs lora-zero "
        f"| {reference} vs this: W/L/T | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, e in table["methods"].items():
        st = e.get(f"{reference}_vs_this")
        sign = f"{st['wins']}/{st['losses']}/{st['ties']}" if st else "—"
        p = f"{st['p']:.3g}" if st else "—"
        lines.append(
            f"| {m} | {iqr(e['time_s'])} | {iqr(e['steps'])} | {e['time_s']['never']} "
            f"| {speed(e.get('vs_scratch'))} | {speed(e.get('vs_lora_zero'))} | {sign} | {p} |"
        )
    return lines + [""]
