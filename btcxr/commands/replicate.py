"""`btcxr replicate`: independent runs of one experiment side by side, with the conclusions they all support."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Compare two or more independent runs of one experiment (the same file with disjoint seeds, e.g.
`btcxr reproduce --config synthetic --out runs/a` and `... --out runs/b "seeds=[4, 5, 6, 7]"`). For every
arm and setting it prints each run's paired difference to the baseline (mean over seeds, 95 % interval,
paired t-test, the smallest difference the run could detect) and a verdict: "replicated: higher" or
"replicated: lower" where every run found the difference (p < alpha) with the same sign, "no difference
found in any run", else "not replicated". State a conclusion only where a verdict says replicated.
"""

EPILOG = """\
examples:
  btcxr replicate runs/synthetic-a runs/synthetic-b --baseline random
  btcxr replicate a/results.csv b/results.csv --name "seeds 0-3" --name "seeds 4-7" --baseline random \\
                  --out replication.md
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("replicate", help="independent runs of one experiment side by side: what replicates",
                            description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="an experiment folder of `btcxr reproduce` (its results.csv) or a results.csv")
    parser.add_argument("--name", action="append", metavar="NAME",
                        help="name of each RUN, in order (default: the folder name)")
    parser.add_argument("--baseline", required=True, metavar="INIT", help="the init every arm is compared with")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of each run's test")
    parser.add_argument("--out", metavar="FILE.md", help="also write the table there (and FILE.csv beside it)")
    parser.set_defaults(func=run)


def read_results(path: str) -> tuple[str, object]:
    """(default name, table) of a run given as its folder or its results.csv."""
    import pandas as pd

    from btcxr.errors import BtcxrError, cut
    from btcxr.experiment.results import RESULTS

    p = Path(path)
    csv = p / RESULTS if p.is_dir() else p
    if not csv.is_file():
        raise BtcxrError(f"{path}: no {RESULTS} there (give an experiment folder of btcxr reproduce or its "
                         f"{RESULTS})")
    try:
        table = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise BtcxrError(f"{csv}: not a readable results table ({cut(str(exc))})") from exc
    return (p.name if p.is_dir() else p.parent.name), table


def run(args: argparse.Namespace) -> int:
    from btcxr.engine.escape import csv_table
    from btcxr.engine.io import write_text
    from btcxr.errors import BtcxrError
    from btcxr.report.replication import compare_runs, replication_markdown

    if args.name and len(args.name) != len(args.runs):
        raise BtcxrError(f"{len(args.name)} --name for {len(args.runs)} runs: give one per run, in order")
    if not 0 < args.alpha < 1:
        raise BtcxrError(f"--alpha must be in (0, 1), got {args.alpha}")
    read = [read_results(r) for r in args.runs]
    names = args.name or [name for name, _ in read]
    if len(set(names)) != len(names):
        raise BtcxrError(f"the runs need distinct names (got {', '.join(names)}): use --name")
    table = compare_runs(dict(zip(names, (t for _, t in read))), args.baseline, args.alpha)
    text = replication_markdown(table, names, args.baseline)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        write_text(out, text)
        write_text(out.with_suffix(".csv"), csv_table(table).to_csv(index=False))
    return 0
