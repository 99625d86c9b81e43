"""ablation_report: the variants side by side -> `report.html`, `report.json`, `report.md`.

Per variant: the corpus after each data stage, the train tokens, the tokens each model
trained on and so the epochs it saw, bits per byte on the held-out documents and the
choice accuracy (mean ± sample standard deviation over seeds), and the difference from
base. A difference counts as resolved when it is larger than twice the seed-to-seed
noise: sqrt((s_base² + s_variant²) / 2), the standard deviation of one model's figure
pooled over the two; for the choice accuracy the noise is at least the standard error
of one accuracy on that many questions, sqrt(p (1 - p) / items). With one seed there is
no spread to compare with and nothing is called resolved.

The page (inline SVG, no script, as tasks/report_page.py's): the table, bits per byte
and accuracy per variant as dots with ±1 standard deviation whiskers (base's mean and
chance dashed), the train loss curves of all variants overlaid (mean over seeds, by
tokens trained). report.md is the table for the Prefect UI (`publish`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from prefect import task

from fineflow.ablation import BASE, AblationSpec
from fineflow.progress import in_prefect_run
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.tasks.report_page import CSS, _cards, _e, _table, lines

STAGE_VERSION = 1
SIGMAS = 2.0  # a difference is resolved beyond this many noise standard deviations
DARK = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def compare(base: list[float], other: list[float], floor: float = 0.0) -> dict[str, Any]:
    """other - base, the noise it is judged against, and whether it stands out of it."""
    (mb, sb), (mo, so) = mean_std(base), mean_std(other)
    noise = max(math.sqrt((sb**2 + so**2) / 2), floor)
    seeds = min(len(base), len(other))
    resolved = seeds > 1 and abs(mo - mb) > SIGMAS * noise
    return {"delta": mo - mb, "noise": noise, "resolved": resolved}


def _curve(root: Path, train: Manifest) -> tuple[list[int], list[float]]:
    m = json.loads(train.path(root, "metrics.json").read_text())
    per_step = train.counts["tokens_seen"] / max(train.counts["steps"], 1)
    return [round(s * per_step) for s in m["step"]], m["train_loss"]


def summarize(
    root: Path, spec: AblationSpec, runs: list[Any], eval_set: Manifest, choices: Manifest
) -> dict[str, Any]:
    """report.json: the spec's figures per variant and against base."""
    items, chance = choices.counts["items"], choices.stats["chance"]
    rows = []
    for run in runs:
        bpb = [s.stats["bits_per_byte"] for s in run.scores]
        acc = [s.stats["choice_accuracy"] for s in run.scores]
        trained = [t.counts["tokens_seen"] for t in run.trains]
        curves = [_curve(root, t) for t in run.trains]
        xs = curves[0][0]
        mean_loss = [sum(c[1][i] for c in curves) / len(curves) for i in range(len(xs))]
        rows.append(
            {
                "variant": run.name,
                "funnel": run.funnel,
                "train_docs": run.shard.counts["train_docs"],
                "train_tokens": run.shard.counts["train_tokens"],
                "tokens_trained": trained,
                "epochs": round(sum(trained) / len(trained) / run.shard.counts["train_tokens"], 3),
                "bits_per_byte": bpb,
                "choice_accuracy": acc,
                "leaks": run.leaks.counts["same_id"] + run.leaks.counts["near_duplicate"],
                "curve": {"tokens": xs, "train_loss": [round(v, 5) for v in mean_loss]},
            }
        )
    base = next(r for r in rows if r["variant"] == BASE)
    for r in rows:
        p = mean_std(r["choice_accuracy"])[0]
        floor = math.sqrt(max(p * (1 - p), 1e-12) / items)
        r["vs_base"] = {
            "bits_per_byte": compare(base["bits_per_byte"], r["bits_per_byte"]),
            "choice_accuracy": compare(base["choice_accuracy"], r["choice_accuracy"], floor),
        }
    return {
        "name": spec.name,
        "seeds": spec.seeds,
        "tokens": spec.tokens,
        "tokenizer": spec.tokenizer,
        "eval": {
            "docs": eval_set.counts["docs"],
            "bytes": eval_set.counts["bytes"],
            "source": str(spec.eval.texts) if spec.eval.texts else f"fraction {spec.eval.fraction}",
        },
        "choice": {"items": items, "choices": spec.choice.choices, "chance": chance},
        "variants": rows,
    }


def _pm(values: list[float], digits: int) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def _delta(row: dict[str, Any], key: str, digits: int) -> str:
    if row["variant"] == BASE:
        return "(base)"
    c = row["vs_base"][key]
    mark = "resolved" if c["resolved"] else "within noise"
    return f"{c['delta']:+.{digits}f} ({mark})"


HEAD = [
    "variant", "responses", "url_filter", "extract", "filter", "dedup", "train tokens",
    "epochs", "bits/byte", "Δ bits/byte", "choice acc.", "Δ acc.", "leaks",
]  # fmt: skip


def table_rows(rep: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in rep["variants"]:
        f = r["funnel"]
        out.append(
            [
                r["variant"],
                *(f"{f[k]:,}" for k in ("responses", "url_filter", "extract", "filter", "dedup")),
                f"{r['train_tokens']:,}",
                f"{r['epochs']:.2f}",
                _pm(r["bits_per_byte"], 4),
                _delta(r, "bits_per_byte", 4),
                _pm(r["choice_accuracy"], 3),
                _delta(r, "choice_accuracy", 3),
                str(r["leaks"]),
            ]
        )
    return out


def _intro(rep: dict[str, Any]) -> str:
    ev, ch = rep["eval"], rep["choice"]
    return (
        f"{len(rep['variants'])} variants x {rep['seeds']} seeds, {rep['tokens']:,} training"
        f" tokens per model, {rep['tokenizer']} tokenizer. Yardstick: {ev['docs']:,} held-out"
        f" documents ({ev['bytes']:,} bytes, {ev['source']}) in bits per byte, and"
        f" {ch['items']} {ch['choices']}-way continuation questions (chance {ch['chance']:.3f})."
        f" Resolved: |Δ| > {SIGMAS:g} x the seed-to-seed noise."
    )


def render_md(rep: dict[str, Any]) -> str:
    rows = table_rows(rep)
    out = [f"# fineflow ablation: {rep['name']}", "", _intro(rep), ""]
    out.append("| " + " | ".join(HEAD) + " |")
    out.append("|" + "---|" * len(HEAD))
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def dots(
    rows: list[tuple[str, float, float]], ref: list[tuple[str, float]], x_label: str, digits: int
) -> str:
    """One row per variant: its mean as a dot, ±1 std as a whisker; `ref` dashed lines."""
    width, label_w, row_h, pad_r = 640, 130, 26, 90
    lo = min([m - s for _, m, s in rows] + [v for _, v in ref])
    hi = max([m + s for _, m, s in rows] + [v for _, v in ref])
    span = (hi - lo) or abs(hi) or 1.0
    lo, hi = lo - 0.08 * span, hi + 0.08 * span
    plot_w = width - label_w - pad_r
    height = row_h * len(rows) + 40

    def px(v: float) -> float:
        return label_w + plot_w * (v - lo) / (hi - lo)

    out = [f'<svg class="dots" width="{width}" height="{height}" role="img">']
    for t in (lo + (hi - lo) * k / 4 for k in range(5)):
        out.append(
            f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="4" y2="{height - 30}" stroke="#f3f4f6"/>'
            f'<text x="{px(t):.1f}" y="{height - 16}" text-anchor="middle" class="small">'
            f"{t:.{digits}f}</text>"
        )
    for name, v in ref:
        out.append(
            f'<line x1="{px(v):.1f}" x2="{px(v):.1f}" y1="4" y2="{height - 30}" stroke="#9ca3af"'
            f' stroke-dasharray="5 4"><title>{_e(name)} {v:.{digits}f}</title></line>'
        )
    for i, (name, m, s) in enumerate(rows):
        y = 4 + i * row_h + row_h / 2
        color = DARK[i % len(DARK)]
        out.append(
            f"<g><title>{_e(name)}: {m:.{digits}f} ± {s:.{digits}f}</title>"
            f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end">{_e(name)}</text>'
            f'<line x1="{px(m - s):.1f}" x2="{px(m + s):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<line x1="{px(m - s):.1f}" x2="{px(m - s):.1f}" y1="{y - 5:.1f}" y2="{y + 5:.1f}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<line x1="{px(m + s):.1f}" x2="{px(m + s):.1f}" y1="{y - 5:.1f}" y2="{y + 5:.1f}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<circle cx="{px(m):.1f}" cy="{y:.1f}" r="5" fill="{color}"/>'
            f'<text x="{width - pad_r + 8}" y="{y + 4:.1f}" class="small">{m:.{digits}f}</text></g>'
        )
    out.append(
        f'<text x="{label_w + plot_w / 2}" y="{height - 2}" text-anchor="middle">{_e(x_label)}'
        "</text></svg>"
    )
    return "".join(out)


def render_html(rep: dict[str, Any]) -> str:
    vs = rep["variants"]
    base = next(r for r in vs if r["variant"] == BASE)
    bpb = [(r["variant"], *mean_std(r["bits_per_byte"])) for r in vs]
    acc = [(r["variant"], *mean_std(r["choice_accuracy"])) for r in vs]
    curves = [
        (r["variant"], r["curve"]["tokens"], r["curve"]["train_loss"], DARK[i % len(DARK)])
        for i, r in enumerate(vs)
    ]
    resolved = [
        f"{r['variant']}: {key.replace('_', ' ')} {r['vs_base'][key]['delta']:+.4f}"
        for r in vs
        if r["variant"] != BASE
        for key in ("bits_per_byte", "choice_accuracy")
        if r["vs_base"][key]["resolved"]
    ]
    said = (
        "Larger than the seed-to-seed noise: " + "; ".join(resolved) + "."
        if resolved
        else "No difference from base is larger than the seed-to-seed noise"
        + (" (one seed: no spread to compare with)." if rep["seeds"] < 2 else ".")
    )
    cards = [
        ("variants", str(len(vs))),
        ("seeds", str(rep["seeds"])),
        ("tokens per model", f"{rep['tokens']:,}"),
        ("held-out documents", f"{rep['eval']['docs']:,}"),
        ("choice questions", str(rep["choice"]["items"])),
    ]
    numeric = set(range(1, len(HEAD) - 5)) | {len(HEAD) - 1}
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>fineflow ablation {_e(rep['name'])}</title><style>{CSS}</style></head>"
        f"<body><main><header><h1>Ablation: {_e(rep['name'])}</h1>"
        f"<p>{_e(_intro(rep))}</p></header>{_cards(cards)}"
        f"<section><h2>Variants</h2>{_table(HEAD, table_rows(rep), numeric)}"
        f"<p>{_e(said)}</p></section>"
        "<section><h2>Bits per byte on the held-out documents (lower is better)</h2>"
        + dots(bpb, [("base", mean_std(base["bits_per_byte"])[0])], "bits per byte", 4)
        + "</section><section><h2>Choice accuracy (higher is better)</h2>"
        + dots(
            acc,
            [("chance", rep["choice"]["chance"]), ("base", mean_std(base["choice_accuracy"])[0])],
            "accuracy",
            3,
        )
        + '<p class="small">Dots: the mean over seeds; whiskers: ±1 standard deviation; dashed:'
        " base's mean (and chance).</p>"
        + "</section><section><h2>Train loss, mean over seeds</h2>"
        + lines(curves, x_label="tokens trained", y_label="nats / token", points=False)
        + "</section></main></body></html>\n"
    )


@task(name="ablation_report", task_run_name="ablation_report")
def report_ablation(
    root: str, spec: AblationSpec, runs: list[Any], eval_set: Manifest, choices: Manifest
) -> Manifest:
    """The ablation's report (module docstring)."""
    key = stage_key(STAGE_VERSION, spec, runs, eval_set, choices)
    rep = summarize(Path(root), spec, runs, eval_set, choices)
    with ArtifactWriter(Path(root), "ablation", key) as out:
        out.path("report.json").write_text(json.dumps(rep, indent=1, sort_keys=True) + "\n")
        out.path("report.md").write_text(render_md(rep))
        out.path("report.html").write_text(render_html(rep))
        return out.commit(spec, counts={"variants": len(runs), "models": spec.seeds * len(runs)})


def publish(root: Path, report: Manifest) -> None:
    """The report's table as a Prefect markdown artifact (inside a Prefect run only)."""
    if not in_prefect_run():
        return
    from prefect.artifacts import create_markdown_artifact

    md = report.path(root, "report.md").read_text()
    html = report.path(root, "report.html").as_uri()
    create_markdown_artifact(
        markdown=md + f"\nThe page with the charts: {html}\n",
        key="fineflow-ablation",
        description="ablation: variants against base on one yardstick",
    )
