"""The recipe study's picture: probe accuracy against pre-training minutes, one colour per row, drawn with Pillow.

Linear probe solid, k-NN dashed; each point is the mean over the seeds that have a curve at that step; the
raw-pixel baselines are grey horizontal lines (solid linear, dashed k-NN).
"""
from __future__ import annotations

import statistics
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207))
W, H, LEFT, RIGHT, TOP, BOTTOM = 900, 560, 70, 230, 40, 60


def curves(records: list[dict]) -> dict[str, list[tuple[float, float, float]]]:
    """Per row (budget runs only, not side-by-side screening): [(minutes, linear, knn)] averaged over seeds."""
    by_row: dict[str, dict[int, list[dict]]] = {}
    for r in records:
        if r.get("row") == "baselines" or r.get("threads") or len(r.get("curve", [])) < 2:
            continue
        for p in r["curve"]:
            by_row.setdefault(r["row"], {}).setdefault(p["step"], []).append(p)
    return {row: [(statistics.fmean(p["minutes"] for p in ps), statistics.fmean(p["linear"] for p in ps),
                   statistics.fmean(p["knn"] for p in ps)) for _, ps in sorted(steps.items())]
            for row, steps in by_row.items()}


def dashed(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill, width: int = 2, dash: float = 7.0):
    """A polyline drawn in dashes of ``dash`` pixels."""
    on, left = True, dash
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
        t = 0.0
        while t < length:
            step = min(left, length - t)
            a, b = t / length, (t + step) / length
            if on:
                draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                          fill=fill, width=width)
            t += step
            left -= step
            if left <= 0:
                on, left = not on, dash


def plot(records: list[dict], out: str | Path) -> Path:
    """Write the PNG; the axes fit the data (accuracy in %, minutes from the trainer's start)."""
    rows = curves(records)
    if not rows:
        raise SystemExit("error: no run with a curve to plot (run the study with --curve, without --threads)")
    base = next((r for r in records if r.get("row") == "baselines"), {}).get("raw_pixels")
    ys = [100 * v for pts in rows.values() for _, lin, knn in pts for v in (lin, knn)]
    ys += [100 * base["linear"], 100 * base["knn"]] if base else []
    y0, y1 = int(min(ys) // 5 * 5), int(-(-max(ys) // 5) * 5)
    x1 = max(m for pts in rows.values() for m, _, _ in pts) * 1.05
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    px = lambda m: LEFT + (W - LEFT - RIGHT) * m / x1  # noqa: E731
    py = lambda a: H - BOTTOM - (H - TOP - BOTTOM) * (a - y0) / max(1, y1 - y0)  # noqa: E731
    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    for a in range(y0, y1 + 1, 5):
        d.line([(LEFT, py(a)), (W - RIGHT, py(a))], fill=(225, 225, 225))
        d.text((LEFT - 30, py(a) - 6), f"{a}", fill="black")
    for m in range(0, int(x1) + 1, 2):
        d.text((px(m) - 4, H - BOTTOM + 6), f"{m}", fill="black")
    d.text((LEFT + (W - LEFT - RIGHT) // 2 - 80, H - 28), "pre-training wall-clock minutes", fill="black")
    d.text((8, TOP - 24), "test top-1 % (solid: linear probe, dashed: k-NN)", fill="black")
    if base:
        d.line([(LEFT, py(100 * base["linear"])), (W - RIGHT, py(100 * base["linear"]))], fill=(120, 120, 120))
        dashed(d, [(LEFT, py(100 * base["knn"])), (W - RIGHT, py(100 * base["knn"]))], (120, 120, 120))
    legend = [("raw pixels", (120, 120, 120))] if base else []
    for (row, pts), colour in zip(sorted(rows.items()), COLOURS):
        d.line([(px(m), py(100 * lin)) for m, lin, _ in pts], fill=colour, width=2)
        dashed(d, [(px(m), py(100 * knn)) for m, _, knn in pts], colour)
        for m, lin, knn in pts:
            d.ellipse([px(m) - 3, py(100 * lin) - 3, px(m) + 3, py(100 * lin) + 3], fill=colour)
        legend.append((row, colour))
    for i, (name, colour) in enumerate(legend):
        y = TOP + 10 + 22 * i
        d.line([(W - RIGHT + 15, y + 6), (W - RIGHT + 40, y + 6)], fill=colour, width=3)
        d.text((W - RIGHT + 48, y), name, fill="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
