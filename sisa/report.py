"""The demo's report: PNG plots and a Markdown + HTML page. The one module that imports matplotlib.

It holds numbers only: losses, times, version numbers, keyed hashes. No record text and no raw
id of a forgotten person goes into it, since it is logged to MLflow and kept under the store.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class DemoReport:
    model: str
    num_shards: int
    records: int
    # version label → {"forgotten": loss, "retained": loss, "strangers": loss}
    losses: dict[str, dict[str, float | None]] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)  # seconds: full_train, fast_path, exact_delete, ...
    theoretical_fraction: float = 0.0
    request_id: str = ""
    forgotten_hash: str = ""
    summary_rows: list[tuple[str, str]] = field(default_factory=list)


def plot_losses(rep: DemoReport, path: str) -> str:
    labels = list(rep.losses)
    groups = ("forgotten", "retained", "strangers")
    names = {"forgotten": "forgotten person", "retained": "people still in the data", "strangers": "strangers (never trained on)"}
    colors = {"forgotten": "#d62728", "retained": "#1f77b4", "strangers": "#7f7f7f"}
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    width = 0.26
    for i, g in enumerate(groups):
        ys = [rep.losses[lab].get(g) or 0.0 for lab in labels]
        xs = [j + (i - 1) * width for j in range(len(labels))]
        bars = ax.bar(xs, ys, width, label=names[g], color=colors[g])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("mean answer-token loss (nats)\nlower = remembered")
    ax.set_title(f"Memorization across model versions ({rep.model}, {rep.num_shards} shards)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_times(rep: DemoReport, path: str) -> str:
    items = [
        ("full retrain\n(all shards)", rep.times.get("full_train")),
        ("exact deletion\n(measured)", rep.times.get("exact_delete")),
        ("exact deletion\n(theory: cost share)", rep.times.get("full_train", 0.0) * rep.theoretical_fraction),
        ("fast path\n(approximate)", rep.times.get("fast_path")),
    ]
    items = [(k, v) for k, v in items if v is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=120)
    bars = ax.bar([k for k, _ in items], [v for _, v in items], color=["#7f7f7f", "#2ca02c", "#98df8a", "#ff7f0e"][: len(items)])
    ax.bar_label(bars, fmt="%.1f s", fontsize=8, padding=2)
    ax.set_ylabel("seconds")
    ax.set_title("Time to honour one deletion request vs retraining everything")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(rep: DemoReport, out_dir: str) -> list[str]:
    """Write the plots, report.md and report.html into out_dir; return the file paths."""
    os.makedirs(out_dir, exist_ok=True)
    p1 = plot_losses(rep, os.path.join(out_dir, "loss_by_version.png"))
    p2 = plot_times(rep, os.path.join(out_dir, "deletion_time.png"))
    rows = "\n".join(f"| {k} | {v} |" for k, v in rep.summary_rows)
    loss_rows = "\n".join(
        f"| {lab} | {_f(v.get('forgotten'))} | {_f(v.get('retained'))} | {_f(v.get('strangers'))} |" for lab, v in rep.losses.items()
    )
    md = f"""# sisa demo report

Model {rep.model}, {rep.num_shards} shards, {rep.records} records. Deletion request `{rep.request_id}`
(the forgotten person appears here only as the keyed hash `{rep.forgotten_hash[:16]}…`).

## Memorization across versions

Mean loss on the answer tokens of each person's facts (lower means the model remembers).

| version | forgotten person | people still in the data | strangers |
|---|---|---|---|
{loss_rows}

![loss by version](loss_by_version.png)

## Time

![deletion time](deletion_time.png)

| | |
|---|---|
{rows}
"""
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as f:
        f.write(md)
    html_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rep.summary_rows)
    html_loss = "".join(
        f"<tr><td>{html.escape(lab)}</td><td>{_f(v.get('forgotten'))}</td><td>{_f(v.get('retained'))}</td><td>{_f(v.get('strangers'))}</td></tr>"
        for lab, v in rep.losses.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sisa demo report</title>
<style>body{{font-family:sans-serif;max-width:860px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:4px 8px}}table{{border-collapse:collapse}}</style></head>
<body><h1>sisa demo report</h1>
<p>Model {html.escape(rep.model)}, {rep.num_shards} shards, {rep.records} records. Deletion request <code>{html.escape(rep.request_id)}</code>
(the forgotten person appears only as the keyed hash <code>{html.escape(rep.forgotten_hash[:16])}…</code>).</p>
<h2>Memorization across versions</h2><p>Mean loss on the answer tokens of each person's facts (lower means the model remembers).</p>
<table><tr><th>version</th><th>forgotten person</th><th>people still in the data</th><th>strangers</th></tr>{html_loss}</table>
<p><img src="loss_by_version.png" alt="loss by version"></p>
<h2>Time</h2><p><img src="deletion_time.png" alt="deletion time"></p>
<table>{html_rows}</table></body></html>
"""
    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w") as f:
        f.write(page)
    return [p1, p2, md_path, html_path]


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
