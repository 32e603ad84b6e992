"""The report's charts, drawn with matplotlib's Agg backend (no display needed) into PNG bytes.

- KL divergence against bits per value, the Pareto front marked and the quality budgets drawn;
- tokens/s against depth (tg and pp), one line per configuration, log depth axis;
- memory at depth, one line per configuration, each host's memory limit as a line.

Each function takes rows from the report's SQL views (dicts, the views' column names) and a
colour per configuration, so a configuration has the same colour in every chart and the
report's tests can find its pixels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from kvsweep.analysis.formatting import fmt_bytes, fmt_depth  # noqa: E402

# Okabe-Ito and Tableau colours: distinguishable, also for colour-blind readers; a marker per
# configuration as well, so lines stay apart in greyscale.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C564B",
           "#7F7F7F", "#BCBD22", "#17BECF", "#1F3B73", "#9E1B32")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")
FAIL_MARKER = "x"
DPI = 100
SIZE = (6.4, 4.0)  # inches: 640 x 400 px, two side by side in the HTML page


@dataclass(frozen=True)
class Style:
    color: str
    marker: str


def styles(configs: list[str]) -> dict[str, Style]:
    """A fixed colour and marker per configuration, in report order."""
    return {c: Style(PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, c in enumerate(configs)}


@dataclass
class Chart:
    name: str  # file stem, e.g. "tg-tiny-llama-cpu"
    title: str
    png: bytes
    caption: str
    configs: list[str]  # configurations drawn (their colours are in the picture)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return palette_png(buf.getvalue())


def palette_png(png: bytes, colors: int = 256) -> bytes:
    """The same picture as a palette PNG: a chart or a page of text has few colours, and a
    palette makes the file about three times smaller (the HTML embeds every chart)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    # fast octree keeps small clusters of a distinct colour (a chart line) where median cut may
    # fold them into a neighbour
    image.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True)
    return out.getvalue()


def _depth_axis(ax, depths: list[int]) -> None:
    """Log depth axis that still shows depth 0: symlog, linear below the smallest depth > 0."""
    nonzero = sorted(d for d in depths if d > 0)
    if nonzero:
        ax.set_xscale("symlog", base=2, linthresh=nonzero[0], linscale=0.6)
    ax.set_xticks(sorted(set(depths)))
    ax.set_xticklabels([fmt_depth(d) for d in sorted(set(depths))])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("depth (tokens already in the context)")
    if depths:
        lo, hi = min(depths), max(depths)
        pad = 0.08 * (hi - lo) if not nonzero else 0
        ax.set_xlim(lo - (nonzero[0] * 0.25 if nonzero and lo == 0 else pad), hi * 1.25 if hi else 1)


def _plain_log_labels(ax) -> None:
    """Log y labels as plain numbers (2000, not 2×10³); on a short range also 2s and 5s between
    the powers of ten, so there is more than one label to read."""
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    lo, hi = ax.get_ylim()
    if lo > 0 and math.log10(hi / lo) < 2:
        def minor(v, _):
            lead = round(v / 10 ** math.floor(math.log10(v)), 6)
            return f"{v:g}" if lead in (2, 5) else ""
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(minor))
    else:
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _legend_below(ax) -> None:
    """One row of configurations under the plot: it never hides a line."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=8, ncol=min(len(labels), 6), loc="upper center",
                  bbox_to_anchor=(0.5, -0.2), frameon=False, handletextpad=0.4, columnspacing=1.2)


def _finish(fig, ax, name: str, title: str, caption: str, configs: list[str], legend: bool = True) -> Chart:
    """Every chart ends alike: title, grid, legend under the plot, tight layout, PNG."""
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        _legend_below(ax)
    fig.tight_layout()
    return Chart(name, title, _png(fig), caption, configs)


def _fail_marks(ax, xs: list[int], style: Style, y: float | None = None) -> None:
    """Depths that did not run mark the bottom of the plot (or the given y) with an x."""
    if not xs:
        return
    if y is None:
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(xs, [0.03] * len(xs), transform=trans, marker=FAIL_MARKER, s=70,
                   color=style.color, linewidths=2.2, zorder=5, clip_on=False)
    else:
        ax.scatter(xs, [y] * len(xs), marker=FAIL_MARKER, s=70, color=style.color,
                   linewidths=2.2, zorder=5)


def speed_vs_depth(kind: str, test: str, model: str, host_class: str, rows: list[dict],
                   style: dict[str, Style], name: str) -> Chart:
    """rows: depth_status (config, n_depth, status/fits, tg_ts/tg_sd or pp_ts/pp_sd)."""
    value, sd = f"{kind}_ts", f"{kind}_sd"
    fig, ax = plt.subplots(figsize=SIZE)
    configs = [c for c in style if any(r["config"] == c for r in rows)]
    failed_any = False
    for c in configs:
        mine = sorted((r for r in rows if r["config"] == c), key=lambda r: r["n_depth"])
        ok = [r for r in mine if r[value] is not None]
        if ok:
            # on a log axis a bar below zero has no place: the lower bar stops at 10% of the value
            lower = [min(r[sd] or 0, 0.9 * r[value]) for r in ok]
            ax.errorbar([r["n_depth"] for r in ok], [r[value] for r in ok],
                        yerr=[lower, [r[sd] or 0 for r in ok]], color=style[c].color, marker=style[c].marker,
                        markersize=6, linewidth=1.8, capsize=3, label=c)
        failed = [r["n_depth"] for r in mine if r[value] is None]
        failed_any |= bool(failed)
        _fail_marks(ax, failed, style[c])
    _depth_axis(ax, [r["n_depth"] for r in rows])
    if any(r[value] for r in rows):
        ax.set_yscale("log")
        _plain_log_labels(ax)
    else:  # nothing was measured here (e.g. every cell predicted out of memory): say so
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no measurements", transform=ax.transAxes, ha="center", va="center",
                fontsize=11, color="#667085")
    ax.set_ylabel(f"{test} tokens/s (± sd)")
    what = "Generation" if kind == "tg" else "Prompt processing"
    title = f"{what} ({test}) vs depth: {model} on {host_class}"
    caption = (f"{what} speed by depth, log axes; error bars are ± the standard deviation over "
               "repetitions (a lower bar longer than 90% of the value is cut there)."
               + (" x at the bottom: that depth did not run (OOM, skipped or failed)." if failed_any else ""))
    return _finish(fig, ax, name, title, caption, configs)


def memory_vs_depth(model: str, host_class: str, rows: list[dict], hosts: list[dict],
                    style: dict[str, Style], name: str) -> Chart:
    """rows: depth_status (config, n_depth, fits, memory_bytes, memory_source);
    hosts: host_memory (host, device_memory_total) of this host class."""
    fig, ax = plt.subplots(figsize=SIZE)
    configs = [c for c in style if any(r["config"] == c for r in rows)]
    limits = [h for h in hosts if h["device_memory_total"]]
    top = max((h["device_memory_total"] for h in limits), default=None)
    sources = set()
    failed_any = False
    for c in configs:
        mine = sorted((r for r in rows if r["config"] == c), key=lambda r: r["n_depth"])
        known = [r for r in mine if r["memory_bytes"] is not None]
        if known:
            ax.plot([r["n_depth"] for r in known], [r["memory_bytes"] for r in known],
                    color=style[c].color, marker=style[c].marker, markersize=6, linewidth=1.8, label=c)
            sources |= {r["memory_source"] for r in known}
        # a depth that did not fit, with no memory figure: on the limit line, where it hit
        unknown = [r["n_depth"] for r in mine if r["memory_bytes"] is None and not r["fits"]]
        failed_any |= bool(unknown)
        _fail_marks(ax, unknown, style[c], y=top)
    for i, h in enumerate(limits):
        ax.axhline(h["device_memory_total"], color="#b42318", linestyle="--", linewidth=1.3)
        ax.annotate(f"{h['host']}: {fmt_bytes(h['device_memory_total'])}",
                    xy=(0.01, h["device_memory_total"]), xycoords=("axes fraction", "data"),
                    xytext=(0, 3 + 11 * i), textcoords="offset points", fontsize=8, color="#b42318")
    _depth_axis(ax, [r["n_depth"] for r in rows])
    values = [r["memory_bytes"] for r in rows if r["memory_bytes"]] + ([top] if top else [])
    if values:
        ax.set_yscale("log", base=2)
        lo, hi = min(values) / 2, max(values) * 3
        ax.set_ylim(lo, hi)
        ax.set_yticks(_binary_ticks(lo, hi))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt_bytes(v)))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    which = ("the memory planner's prediction" if sources == {"predicted"} else
             "the KV buffer llama.cpp reported" if sources <= {"kv_bytes"} else
             "the planner's prediction where recorded, else the KV buffer llama.cpp reported")
    ax.set_ylabel("memory (log)")
    title = f"Memory at depth: {model} on {host_class}"
    caption = (f"Memory by depth: {which}. Dashed red: each host's memory limit."
               + (" x on the limit line: that depth did not fit." if failed_any else ""))
    return _finish(fig, ax, name, title, caption, configs)


def _binary_ticks(lo: float, hi: float, most: int = 7) -> list[float]:
    """Powers of two (1 KiB, 16 KiB, ...) between lo and hi, at most `most` of them, so byte
    ticks read as round binary sizes."""
    first, last = math.ceil(math.log2(lo)), math.floor(math.log2(hi))
    step = max(1, math.ceil((last - first + 1) / most))
    start = first + (-first) % step if step > 1 else first
    return [2.0 ** e for e in range(start, last + 1, step)]


def kl_vs_bits(model: str, n_ctx: int, baseline: str, rows: list[dict], budgets: list[tuple[str, float]],
               style: dict[str, Style], name: str) -> Chart:
    """rows: kl_vs_bits (config, bits_per_value, kld_mean, kld_unc, on_front);
    budgets: (name, max_kld) lines to draw."""
    fig, ax = plt.subplots(figsize=SIZE)
    drawn = [r for r in rows if r["bits_per_value"] is not None and r["kld_mean"] is not None]
    configs = [c for c in style if any(r["config"] == c for r in drawn)]
    positive = [r["kld_mean"] for r in drawn if r["kld_mean"] > 0]
    # symlog so that a KL of exactly 0 (the baseline, or a cache computed at its precision)
    # still has a place; linear below a decade under the smallest positive value
    linthresh = 10 ** math.floor(math.log10(min(positive))) / 10 if positive else 1e-4
    ax.set_yscale("symlog", linthresh=linthresh, linscale=0.5)
    for r in drawn:
        s = style.get(r["config"], Style("#333333", "o"))
        ax.errorbar([r["bits_per_value"]], [r["kld_mean"]], yerr=[r["kld_unc"] or 0],
                    color=s.color, marker=s.marker, markersize=8, capsize=3, linestyle="none",
                    label=r["config"], zorder=3)
        ax.annotate(r["config"] + (" (baseline)" if r["config"] == baseline else ""),
                    (r["bits_per_value"], r["kld_mean"]), xytext=(6, 6), textcoords="offset points",
                    fontsize=8)
    front = sorted((r for r in drawn if r["on_front"]), key=lambda r: r["bits_per_value"])
    if front:
        ax.plot([r["bits_per_value"] for r in front], [r["kld_mean"] for r in front],
                color="#444444", linestyle="-", linewidth=1, zorder=2, label="Pareto front")
        ax.scatter([r["bits_per_value"] for r in front], [r["kld_mean"] for r in front], s=230,
                   facecolors="none", edgecolors="#444444", linewidths=1.2, zorder=2)
    for bname, kld in budgets:
        ax.axhline(kld, color="#7a7a7a", linestyle=":", linewidth=1.2)
        ax.annotate(f"{bname}: KL ≤ {kld:g}", xy=(0.99, kld), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", ha="right", fontsize=8, color="#555555")
    ax.set_xlabel("bits per value (mean of K and V)")
    ax.set_ylabel(f"mean KL divergence vs {baseline} (symlog)")
    xs = [r["bits_per_value"] for r in drawn]
    if xs:
        ax.set_xlim(min(xs) - 1.5, max(xs) + 4)
    # room above the highest point for its label
    ax.set_ylim(0, max(positive) * 4 if positive else 1)
    title = f"Quality vs storage: {model}, n_ctx {n_ctx}"
    missing = [r["config"] for r in rows if r["bits_per_value"] is None]
    caption = ("Mean KL divergence against bits per value; circled and joined: the Pareto front "
               "(nothing is both cheaper and closer). Dotted: the quality budgets."
               + (f" Not drawn (bits per value unknown): {', '.join(missing)}." if missing else ""))
    # points are labelled in place: no legend
    return _finish(fig, ax, name, title, caption, configs, legend=False)


def kl_vs_position(model: str, n_ctx: int, baseline: str, rows: list[dict], style: dict[str, Style],
                   name: str) -> Chart:
    """rows: quality_by_position (config, bucket_lo, bucket_hi, kld_mean, kld_unc) of one model,
    n_ctx and baseline: mean KL per position bucket, log position axis, one line per configuration."""
    fig, ax = plt.subplots(figsize=SIZE)
    configs = [c for c in style if c != baseline and any(r["config"] == c for r in rows)]
    positive = []
    for c in configs:
        mine = sorted((r for r in rows if r["config"] == c), key=lambda r: r["bucket_lo"])
        # a bucket [lo, hi] is drawn at its geometric middle; a mean KL of 0 has no place on a log axis
        pts = [(math.sqrt(r["bucket_lo"] * r["bucket_hi"]), r["kld_mean"], r["kld_unc"] or 0)
               for r in mine if r["kld_mean"] and r["kld_mean"] > 0]
        if not pts:
            continue
        xs, ys, us = zip(*pts)
        positive += ys
        low = [min(u, 0.9 * y) for y, u in zip(ys, us)]
        s = style[c]
        ax.errorbar(xs, ys, yerr=(low, us), color=s.color, marker=s.marker, markersize=5,
                    capsize=2, linewidth=1.6, label=c)
    ax.set_xscale("log", base=2)
    if positive:
        ax.set_yscale("log")
        _plain_log_labels(ax)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt_depth(int(round(v)))))
    ax.set_xlabel("position in the chunk (power-of-two buckets)")
    ax.set_ylabel(f"mean KL divergence vs {baseline}")
    title = f"{model}: KL by position, n_ctx {n_ctx}"
    caption = (f"Mean KL divergence against the {baseline} cache per position bucket [lo, 2·lo) of the "
               "scored tokens, one line per configuration; bars are one standard error.")
    return _finish(fig, ax, name, title, caption, configs)
