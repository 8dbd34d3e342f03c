"""Figures out of raw counts: latency percentiles, the results file and the latency plot."""

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def bucket(us: int) -> int:
    """Round a latency (µs) down to 7 significant bits: histogram keys within 1/64 of the truth."""
    drop = max(0, us.bit_length() - 7)
    return (us >> drop) << drop


def percentiles(hist: Mapping[int, int], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float | None]:
    """Percentiles in ms of a {µs bucket: count} histogram (``p50``, ``p95``, ...)."""
    total = sum(hist.values())
    keys = sorted(hist)
    out: dict[str, float | None] = {}
    for q in qs:
        rank, seen, value = max(1, math.ceil(q / 100 * total)), 0, None
        for key in keys:
            seen += hist[key]
            if seen >= rank:
                value = round(key / 1000, 1)
                break
        out[f"p{q:g}"] = value
    return out


def rank_percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of plain values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)], 1)


def merge_hists(hists: Iterable[Mapping[Any, int]]) -> Counter[int]:
    """Sum worker histograms (keys come back from the pipe as ints)."""
    total: Counter[int] = Counter()
    for hist in hists:
        total.update({int(k): v for k, v in hist.items()})
    return total


def save(result: dict[str, Any], scenario: str, directory: Path = RESULTS) -> Path:
    """Write ``result`` to ``<directory>/<scenario>-<timestamp>.json``; return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def plot_latency(ramps: Mapping[str, list[dict[str, Any]]], path: Path, p99_max: float) -> Path:
    """Plot p99 latency against offered deliveries/s, one line per server (each a ramp's steps)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, steps in ramps.items():
        measured = [s for s in steps if s["latency_ms"]["p99"] is not None]
        ax.plot(
            [s["offered_per_s"] for s in measured], [s["latency_ms"]["p99"] for s in measured], marker="o", label=name
        )
        failed = [s for s in measured if not s["pass"]]
        ax.scatter(
            [s["offered_per_s"] for s in failed],
            [s["latency_ms"]["p99"] for s in failed],
            marker="x",
            s=80,
            color="black",
            zorder=3,
        )
    ax.axhline(p99_max, color="grey", linestyle="--", linewidth=1, label=f"p99 limit {p99_max:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Plain numbers (2,000 rather than 2×10³): each power of ten, and 2 and 5 times it.
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if f"{value:.0e}"[0] in "125" else "")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.set_xlabel("offered deliveries/s (clients × messages/s)")
    ax.set_ylabel("p99 latency, ms")
    ax.set_title("Room fan-out: p99 latency as the rate grows (× = step failed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
