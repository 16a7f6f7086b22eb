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
    # version label → {"forgotten": (facts recalled exactly, facts), ...}
    recall: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    times: dict[str, float] = field(
        default_factory=dict
    )  # seconds: full_train, fast_path, exact_delete, typical_delete
    theoretical_fraction: float = 0.0
    request_id: str = ""
    forgotten_hash: str = ""
    summary_rows: list[tuple[str, str]] = field(default_factory=list)
    record_format: str = "text"  # chat: the people were conversations, scored on the assistant's answers

    @property
    def measured(self) -> str:
        """What recall and loss were measured on, in words."""
        if self.record_format == "chat":
            return (
                "Facts recalled exactly (the served mixture's greedy reply to the user's question starts with the "
                "assistant's answer) and the mean loss on the assistant's answer tokens (lower means the model "
                "remembers), "
                "per version. The people were fine-tuned as chat: the user asks about a person, the assistant "
                "answers."
            )
        return (
            "Facts recalled exactly (the served mixture's greedy completion starts with the answer) and the mean "
            "loss on the answer tokens (lower means the model remembers), per version."
        )


GROUPS = ("forgotten", "retained", "strangers")
_NAMES = {
    "forgotten": "forgotten person",
    "retained": "people still in the data",
    "strangers": "strangers (never trained on)",
}
_COLORS = {"forgotten": "#d62728", "retained": "#1f77b4", "strangers": "#7f7f7f"}


def _bars(ax, labels: list[str], values: dict[str, list[float]], fmt: str) -> None:
    width = 0.26
    for i, g in enumerate(GROUPS):
        xs = [j + (i - 1) * width for j in range(len(labels))]
        bars = ax.bar(xs, values[g], width, label=_NAMES[g], color=_COLORS[g])
        ax.bar_label(bars, fmt=fmt, fontsize=7, padding=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_memorization(rep: DemoReport, path: str) -> str:
    """Two panels per version: facts recalled exactly (share) and mean answer-token loss."""
    labels = list(rep.losses)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120)
    recall = {g: [_share(rep.recall.get(lab, {}).get(g)) for lab in labels] for g in GROUPS}
    _bars(left, labels, recall, "%.0f%%")
    left.set_ylim(0, 110)
    left.set_ylabel("facts recalled exactly (%)\nhigher = remembered")
    chat = rep.record_format == "chat"
    left.set_title(
        "Recall: greedy reply starts with the assistant's answer"
        if chat
        else "Recall: greedy completion starts with the answer",
        fontsize=9,
    )
    loss = {g: [rep.losses[lab].get(g) or 0.0 for lab in labels] for g in GROUPS}
    _bars(right, labels, loss, "%.2f")
    right.set_ylabel("mean answer-token loss (nats)\nlower = remembered")
    right.set_title("Loss on the assistant's answer tokens" if chat else "Loss on the answer tokens", fontsize=9)
    fig.suptitle(f"Memorization across model versions ({rep.model}, {rep.num_shards} shards)")
    handles, names = left.get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncols=3, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def _share(x: tuple[int, int] | None) -> float:
    return 0.0 if not x or not x[1] else 100.0 * x[0] / x[1]


def plot_times(rep: DemoReport, path: str) -> str:
    items = [
        ("full retrain\n(all shards)", rep.times.get("full_train")),
        ("dearest deletion\n(measured)", rep.times.get("exact_delete")),
        ("dearest deletion\n(theory: cost share)", rep.times.get("full_train", 0.0) * rep.theoretical_fraction),
        ("typical deletion\n(measured)", rep.times.get("typical_delete")),
        ("fast path\n(approximate)", rep.times.get("fast_path")),
    ]
    colors = dict(zip([k for k, _ in items], ["#7f7f7f", "#2ca02c", "#98df8a", "#1f77b4", "#ff7f0e"], strict=True))
    items = [(k, v) for k, v in items if v is not None]
    fig, ax = plt.subplots(figsize=(8.5, 4.0), dpi=120)
    bars = ax.bar([k for k, _ in items], [v for _, v in items], color=[colors[k] for k, _ in items])
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
    p1 = plot_memorization(rep, os.path.join(out_dir, "memorization_by_version.png"))
    p2 = plot_times(rep, os.path.join(out_dir, "deletion_time.png"))
    rows = "\n".join(f"| {k} | {v} |" for k, v in rep.summary_rows)
    loss_rows = "\n".join(f"| {lab} | " + " | ".join(_cell(rep, lab, g) for g in GROUPS) + " |" for lab in rep.losses)
    md = f"""# sisa demo report

Model {rep.model}, {rep.num_shards} shards, {rep.records} records. Deletion request `{rep.request_id}`
(the forgotten person appears here only as the keyed hash `{rep.forgotten_hash[:16]}…`).

## Memorization across versions

{rep.measured}

| version | forgotten person | people still in the data | strangers |
|---|---|---|---|
{loss_rows}

![recall and loss by version](memorization_by_version.png)

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
        f"<tr><td>{html.escape(lab)}</td>"
        + "".join(f"<td>{html.escape(_cell(rep, lab, g))}</td>" for g in GROUPS)
        + "</tr>"
        for lab in rep.losses
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sisa demo report</title>
<style>body{{font-family:sans-serif;max-width:860px;margin:2em auto}}
td,th{{border:1px solid #ccc;padding:4px 8px}}table{{border-collapse:collapse}}</style></head>
<body><h1>sisa demo report</h1>
<p>Model {html.escape(rep.model)}, {rep.num_shards} shards, {rep.records} records.
Deletion request <code>{html.escape(rep.request_id)}</code>
(the forgotten person appears only as the keyed hash <code>{html.escape(rep.forgotten_hash[:16])}…</code>).</p>
<h2>Memorization across versions</h2><p>{html.escape(rep.measured)}</p>
<table><tr><th>version</th><th>forgotten person</th><th>people still in the data</th><th>strangers</th></tr>
{html_loss}</table>
<p><img src="memorization_by_version.png" alt="recall and loss by version"></p>
<h2>Time</h2><p><img src="deletion_time.png" alt="deletion time"></p>
<table>{html_rows}</table></body></html>
"""
    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w") as f:
        f.write(page)
    return [p1, p2, md_path, html_path]


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _cell(rep: DemoReport, label: str, group: str) -> str:
    """`3/16 recalled, loss 0.412`, or the loss alone where recall was not measured."""
    r = rep.recall.get(label, {}).get(group)
    loss = _f(rep.losses[label].get(group))
    return f"loss {loss}" if r is None else f"{r[0]}/{r[1]} recalled, loss {loss}"
