"""The fix search: when the check fails, try quantization recipes in order of what they give up, check
each on the same faces and pairs, and stop at the cheapest that passes.

The order (AIMET's AutoQuant applies its techniques the same way, cheapest first, until the accuracy
target is met): better calibration (every calibration face; percentile ranges), depthwise convs kept in
float (no rounding of their weights, at about 2 % of the size; where int8 depthwise kernels are slower
than float ones, as XNNPACK's are on x86, it is also the fastest int8; see docs/quantization.md), the
blocks the localisation names kept in float (one, then two, then three), int16 activations everywhere,
float16.
Each candidate is judged on the host at the tap and identity levels (the feature level is the slowest;
check the chosen recipe again for it) and priced in deploy size and batch-1 latency against float32,
timed on the board the search is told to price on (``--price-on``: int8 kernels that are slow on x86
can be fast on ARM).
LiteRT's 16x8 quantizer takes no per-block exceptions, so int16 for only the localised blocks is not a
candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import keras

from ..export import Recipe
from .boards import LocalBoard
from .judging import BoardResult
from .session import CheckSession

MAX_KEEP_FLOAT = 3


def candidates(base: Recipe, localisation: dict, calibration_faces: int,
               depthwise: bool = False) -> list[tuple[str, Recipe]]:
    """(what changed, recipe) in order of cost; recipes equal to ``base`` or to an earlier one are dropped.
    ``depthwise``: the model has depthwise convs (else keeping them in float changes nothing)."""
    out: list[tuple[str, Recipe]] = []
    if base.variant == "int8":
        more = max(base.calibration.count, calibration_faces)
        out.append(("calibration: every face", base.with_(calibration={"count": more})))
        for p in (99.99, 99.9):
            out.append((f"calibration: percentile {p:g} ranges",
                        base.with_(calibration={"count": more, "range_rule": "percentile", "percentile": p})))
        if depthwise:
            out.append(("depthwise convs in float",
                        base.with_(float_ops=tuple(dict.fromkeys((*base.float_ops, "DEPTHWISE_CONV_2D"))))))
        ranked = [localisation["first_broken_tap"]] if localisation.get("first_broken_tap") else []
        ranked += [r["tap"] for r in localisation["ranking"]]
        taps = list(dict.fromkeys(ranked))[:MAX_KEEP_FLOAT]
        for n in range(1, len(taps) + 1):
            kept = {**base.precision, **{t: "float32" for t in taps[:n]}}
            out.append((f"keep float: {', '.join(taps[:n])}", base.with_(precision=kept)))
    if base.variant in ("int8", "dynamic_int8"):
        out.append(("int16 activations everywhere",
                    Recipe("int16x8", calibration=replace(base.calibration, range_rule="minmax"))))
    if base.variant != "float16":
        out.append(("float16 weights", Recipe("float16")))
    unique, seen = [], [base]
    for name, recipe in out:
        if recipe not in seen:
            seen.append(recipe)
            unique.append((name, recipe))
    return unique


@dataclass(frozen=True)
class JudgedRecipe:
    """A recipe, its exported files and its host result; ``passed``: on every board it was judged on."""

    recipe: Recipe
    files: dict[str, Path]
    host: BoardResult
    passed: bool


def judge_recipe(session: CheckSession, recipe: Recipe, out: Path) -> JudgedRecipe:
    """Export ``recipe`` into ``out`` and judge it on the host at the tap and identity levels."""
    files = session.export([recipe], out)[recipe.variant]
    host = session.judge(LocalBoard(files["deploy"], files["probe"]), files)
    return JudgedRecipe(recipe, files, host, host.passed)


def price(files: dict, session: CheckSession) -> dict:
    """Deploy size and batch-1 latency against the float32 deploy file's, timed side by side where
    ``session.pricer`` measures (the host or a board)."""
    deploy, float32_deploy = Path(files["deploy"]), Path(session.float32["deploy"])
    size = deploy.stat().st_size
    return {"bytes": size, "size_ratio": size / float32_deploy.stat().st_size,
            **session.pricer(deploy, float32_deploy)}


def pareto(rows: list[dict]) -> None:
    """Mark the rows no other row beats in size, latency and verification drop at once."""
    def cost(r: dict) -> tuple[float, float, float]:
        return r["size_ratio"], -r["speedup_b1"], r["drop_pp"]

    for r in rows:
        mine = cost(r)
        r["pareto"] = not any(all(a <= b for a, b in zip(cost(o), mine, strict=True)) and cost(o) != mine
                              for o in rows if o is not r)


def search_recipes(session: CheckSession, checked: JudgedRecipe, exhaustive: bool = False) -> dict:
    """Try the candidates after ``checked`` in order until one passes (``exhaustive``: try them all, for the
    full table), each exported under ``session.out / "search"``; returns the table (the checked recipe
    first) priced where ``session.pricer`` measures, the best recipe (the first that passes; None when
    none does) and where it was written (``search/recipe.toml``)."""
    out, base = session.out / "search", checked.recipe
    rows = [{"name": "checked recipe", "recipe": base.to_dict(), "label": base.label(),
             **price(checked.files, session), "drop_pp": checked.host.drop_pp,
             "drop_se_pp": checked.host.drop_se_pp, "passed": checked.passed}]
    best = base if checked.passed else None
    depthwise = any(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in session.model.layers)
    tried = (candidates(base, checked.host.localisation, len(session.calibration), depthwise)
             if exhaustive or best is None else [])
    for i, (name, recipe) in enumerate(tried, 1):
        judged = judge_recipe(session, recipe, out / f"{i:02d}-{recipe.variant}")
        rows.append({"name": name, "recipe": recipe.to_dict(), "label": recipe.label(),
                     **price(judged.files, session), "drop_pp": judged.host.drop_pp,
                     "drop_se_pp": judged.host.drop_se_pp, "passed": judged.passed,
                     "failed_checks": judged.host.failed_checks,
                     "files": {k: str(v) for k, v in judged.files.items()}})
        if judged.passed and best is None:
            best = recipe
            if not exhaustive:
                break
    pareto(rows)
    written = str(best.save(out / "recipe.toml")) if best else None
    return {"rows": rows, "best": None if best is None else best.to_dict(),
            "best_label": None if best is None else best.label(), "recipe_file": written,
            "judged_at": ["taps", "identities"], "priced_on": session.pricer.name}
