"""PNG plots of the results (matplotlib, Agg backend): the ``bench`` optional dependency.

``make bench`` installs it; without it :func:`make_plots` returns no figures and says why, and the
rest of the benchmark is unaffected (``make test`` type-checks this module without matplotlib).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["make_plots"]

_SIZE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
_CHANGE_COLORS = {10: "#1f77b4", 100: "#ff7f0e", 1000: "#2ca02c"}


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def make_plots(results: dict[str, Any], outdir: Path, prefix: str) -> tuple[list[dict[str, str]], str | None]:
    """Write the figures as ``<outdir>/<prefix>-<name>.png``; return [(name, file, title)] and an error."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        return [], f"matplotlib is not installed ({e}); install the bench extra: pip install -e '.[bench]'"
    from matplotlib.ticker import NullLocator  # type: ignore[import-not-found,unused-ignore]

    outdir.mkdir(parents=True, exist_ok=True)
    figures: list[dict[str, str]] = []

    def xticks(ax: Any, values: Sequence[int]) -> None:
        """Ticks at the measured x values only, labelled as plain numbers (the axis is logarithmic)."""
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(list(values))
        ax.set_xticklabels([f"{v:,}" for v in values])

    def save(fig: Any, name: str, title: str) -> None:
        path = outdir / f"{prefix}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures.append({"name": name, "file": path.name, "title": title})

    # 1. latency distribution of deploys of a release already on disk
    series = [
        ("marker renamed", results.get("samples", {}).get("warm", {}).get("ext_touch_seen", [])),
        ("ConfigMap `..data` swap", results.get("samples", {}).get("configmap", {}).get("ext_touch_seen", [])),
        ("in-place `git checkout -f` (baseline)", results.get("samples", {}).get("baseline_ms", [])),
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, raw in series:
        vals = sorted(_finite(raw))
        if not vals:
            continue
        ys = [(i + 1) / len(vals) for i in range(len(vals))]
        ax.step(vals, ys, where="post", label=f"{label} (n={len(vals)})")
    for ms, what in ((5.0, "p50 target"), (20.0, "p99 target")):
        ax.axvline(ms, color="grey", linestyle=":", linewidth=1)
        ax.text(ms, 0.02, f" {what} {ms:g} ms", rotation=90, va="bottom", ha="right", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("marker written -> reload file touched (ms, log scale)")
    ax.set_ylabel("fraction of deploys (ECDF)")
    ax.set_title("Release already on disk: marker -> reload latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save(fig, "latency", "Latency distribution, release already on disk (ECDF)")

    newtag = results.get("newtag")
    if newtag and newtag.get("sizes"):
        sizes = newtag["sizes"]
        files = [s["files"] for s in sizes]
        changes = sorted({c["changed"] for s in sizes for c in s["cells"]})

        # 2. preparation time against repository size
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
        for c in changes:
            color = _CHANGE_COLORS.get(c)
            xs, ours, base = [], [], []
            for s in sizes:
                cell = next((x for x in s["cells"] if x["changed"] == c), None)
                if cell is None:
                    continue
                xs.append(s["files"])
                ours.append(cell["prepare_ms"]["p50"])
                base.append(cell["checkout_f_ms"]["p50"])
            ax1.plot(xs, ours, "o-", color=color, label=f"coordinator prepare, {c} changed")
            ax1.plot(xs, base, "s--", color=color, alpha=0.7, label=f"in-place `git checkout -f`, {c} changed")
        ax1.set_title("New tag, previous release on disk")
        first_lines = [
            ("prepare_ms", "coordinator prepare (full checkout)", "o-", "#d62728"),
            ("worktree_add_ms", "`git worktree add --detach`", "s--", "#9467bd"),
            ("archive_tar_ms", "`git archive | tar -x`", "^--", "#8c564b"),
            ("cp_al_ms", "`cp -al` of the release (link floor)", "x:", "#7f7f7f"),
        ]
        for key, label, style, color in first_lines:
            ax2.plot(files, [s["first"][key]["p50"] for s in sizes], style, color=color, label=label)
        ax2.set_title("First deploy (no previous release)")
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_yscale("log")
            xticks(ax, files)
            ax.set_xlabel("files in the repository (log)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
        ax1.set_ylabel("median time (ms, log)")
        fig.suptitle("Preparation time against repository size (medians)")
        fig.tight_layout()
        save(fig, "prepare-vs-size", "Preparation time against repository size")

        # 3. preparation and end-to-end time against change size
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
        for i, s in enumerate(sizes):
            color = _SIZE_COLORS[i % len(_SIZE_COLORS)]
            cells = sorted(s["cells"], key=lambda x: x["changed"])
            xs = [x["changed"] for x in cells]
            co = [x["checkout_f_ms"]["p50"] for x in cells]
            ax1.plot(xs, [x["prepare_ms"]["p50"] for x in cells], "o-", color=color, label=f"prepare, {s['files']}")
            ax1.plot(xs, co, "s--", color=color, alpha=0.7, label=f"`checkout -f`, {s['files']}")
            ax2.plot(xs, [x["e2e_ms"]["p50"] for x in cells], "o-", color=color, label=f"marker->reload, {s['files']}")
            ax2.plot(xs, co, "s--", color=color, alpha=0.7, label=f"`checkout -f`, {s['files']}")
        ax1.set_title("coordinator prepare phase vs in-place checkout")
        ax2.set_title("coordinator end to end (marker -> reloaded) vs in-place checkout")
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_yscale("log")
            xticks(ax, changes)
            ax.set_xlabel("files changed by the new tag (log)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best", ncol=2)
        ax1.set_ylabel("median time (ms, log)")
        fig.suptitle(f"New-tag deploys by change size (repositories of {', '.join(f'{n:,}' for n in files)} files)")
        fig.tight_layout()
        save(fig, "prepare-vs-changes", "Preparation and end-to-end time against change size")
    return figures, None
