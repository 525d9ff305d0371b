"""results.json (machine-readable) and results.md (a markdown table) of one probe run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from btcxr.engine.io import write_json, write_text
from btcxr.engine.run import PROBE_RESULTS


def write_results(results: dict[str, Any], out_dir: str | Path) -> None:
    """Write both files atomically (temporary file + rename), so a reader never sees half a table."""
    out_dir = Path(out_dir)
    write_json(out_dir / PROBE_RESULTS, results, allow_nan=False)
    write_text(out_dir / "results.md", results_markdown(results))


def results_markdown(results: dict[str, Any]) -> str:
    """Run facts, then one row per label with its val (selected epoch) and test AUROC, then the means."""
    n = results["n_images"]
    epoch = results["selected_epoch"]
    lines = [
        "# NIH classification probe",
        "",
        "| Setting | Value |",
        "|---|---|",
        f"| Backbone | {results['backbone']} ({results['arch']}) |",
        f"| Mode | {results['mode']}{' (cached features)' if results.get('cached_features') else ''} |",
        f"| Label fraction | {100 * results['fraction']:g} % (fraction seed {results['fraction_seed']}) |",
        f"| Seed | {results['seed']} |",
        f"| Images | train {n['train']}, val {n['val']}, test {n['test']} |",
        f"| Selected epoch | {epoch} of {results['epochs']} ({results['selection']}) |",
        "",
        f"| Label | Val AUROC (epoch {epoch}) | Test AUROC |",
        "|---|---:|---:|",
    ]
    val, test = results["val"], results["test"]
    for label in results["labels"]:
        lines.append(f"| {label} | {_cell(val['auroc'][label])} | {_cell(test['auroc'][label])} |")
    lines.append(f"| **Mean** | **{_cell(val['mean_auroc'])}** | **{_cell(test['mean_auroc'])}** |")
    lines += ["", "n/a: the split holds a single class of that label (AUROC undefined, left out of the mean)",
              ""]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"

