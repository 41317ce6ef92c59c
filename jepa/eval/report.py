"""The JSON report of an evaluation: where it goes, how results of several calls on one checkpoint merge, the table."""
from __future__ import annotations

import json
from pathlib import Path

from jepa.eval.probes.knn import KNN
from jepa.io import atomic_write_text

METHODS = {"pretrained": "pre-trained", "random_init": "random init", "raw_pixels": "raw pixels"}
REPORT_IDENTITY = ("checkpoint_sha256", "dataset", "test_split", "train_images", "test_images", "encoder", "features")


def report_path(checkpoint: Path, dataset: str) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.eval.{dataset}.json")


def write_report(report: dict, out: Path) -> dict:
    """Write ``report`` to ``out``, keeping the other protocols' results of a report there on the same checkpoint
    file and data (``REPORT_IDENTITY``); a report on anything else is replaced. Returns what was written."""
    try:
        old = json.loads(out.read_text()) if out.is_file() else None
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and all(old.get(k) == report.get(k) for k in REPORT_IDENTITY):
        results = {m: dict(r) for m, r in old.get("results", {}).items()}
        for method, r in report["results"].items():
            results[method] = {**results.get(method, {}), **r}
        runs = {**old.get("finetune_runs", {}), **report.get("finetune_runs", {})}
        report = {**old, **report, "results": results, **({"finetune_runs": runs} if runs else {})}
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    return report


def finetune_label(key: str) -> str:
    """Column name of a fine-tuning result: ``finetune``, ``finetune_shots10``, ``finetune_frac0.01``."""
    if key.startswith("finetune_shots"):
        return f"fine-tune {key[len('finetune_shots'):]}-shot"
    if key.startswith("finetune_frac"):
        return f"fine-tune {100 * float(key[len('finetune_frac'):]):g} %"
    return "full fine-tune"


def format_table(report: dict) -> str:
    """Markdown table: one row per feature source, a column per protocol in the report, top-1 in percent."""
    present = set().union(*(r.keys() for r in report["results"].values()))
    cols = [("linear", "linear probe top-1")] if "linear" in present else []
    if "knn" in present:
        ks = sorted({int(k) for r in report["results"].values() for k in r.get("knn_k", {})} or {KNN["k"]})
        cols += [(f"knn_k.{k}" if k != KNN["k"] else "knn", f"k-NN top-1 (k={k})") for k in ks]
    cols += [(c, h) for c, h in (("linear_sgd", "SGD linear probe top-1"), ("attentive", "attentive probe top-1"))
             if c in present]
    tuned = sorted((c for c in present if c.startswith("finetune")), key=lambda c: (c == "finetune", c))
    cols += [(c, finetune_label(c) + " top-1") for c in tuned]

    def cell(r, col):
        v = r.get("knn_k", {}).get(col.split(".")[1]) if col.startswith("knn_k.") else r.get(col)
        return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else "–"
    lines = ["| features | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---:|" * len(cols)]
    for method in ("raw_pixels", "random_init", "pretrained"):
        r = report["results"].get(method)
        if r is not None:
            lines.append(f"| {METHODS[method]} | " + " | ".join(cell(r, c) for c, _ in cols) + " |")
    return "\n".join(lines)
