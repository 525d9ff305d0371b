"""What Barlow Twins learns on the synthetic NIH phantoms, and whether a recipe makes it beat random features,
judged only on validation and label-free numbers (the NIH test split is never read).

    .venv/bin/python benchmarks/phantom_ssl.py                          # every variant, seed 0
    .venv/bin/python benchmarks/phantom_ssl.py --variants shipped supervised --seeds 0 1 2

The phantoms and their cache are the synthetic experiment's (`configs/experiments/synthetic.yaml`: 1,200 NIH
phantoms at 256 px, half with findings, seed 0; cache at 128 px). Every variant pre-trains a ResNet-18 with
`btcxr pretrain` from a random init drawn with the seed (the shipped file starts from the dead-leaves
stand-in; a random init keeps this self-contained and pairs each run with its own init), 140 steps of 64,
monitors every 20 steps. Read-outs of the final backbone and of its init (the random-features arm), on the
train and val images' centre views:
- `cv_auroc`: a linear probe's validation mean AUROC, 5-fold cross-validation on train + val (logistic
  regression on standardised features, C = 0.1; labels with at least 10 positives);
- `pc1_exposure`: |correlation| of the features' first principal component with the image's mean
  intensity (how much the dominant direction of the features is exposure);
- the monitors' RankMe of backbone and projector and the embedding spread at the init, their lowest, and
  the last step (`btcxr/pretrain/monitor.py`).
Printed: a row per variant and seed; per variant over the seeds, the mean difference to random features
with the paired t-test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASE = ["optim.epochs=10", "optim.batch_size=64", "model.size=96", "model.projector=[512, 512]",
        "model.init=random", "monitor_every=20", "corr_every_steps=0", "tensorboard=false", "backbone_steps=[0]",
        "data.workers=0", "device=cpu"]
# name -> (overrides, why it was tried)
VARIANTS = {
    "shipped": ([], "the shipped synthetic.yaml recipe (demo learning rates 2.0 / 0.05, trust 0.02)"),
    "lr0.5": (["optim.lr_weights=0.5"], "the sanity benchmark's learning rate: less collapse?"),
    "size128": (["optim.lr_weights=0.5", "model.size=128"], "findings are a few pixels wide at 96 px"),
    "small-crops": (["optim.lr_weights=0.5", "views.radiograph.crop_scale=[0.08, 0.5]"],
                    "crops that cut the shared frame (collimation, markers, anatomy outline): local features"),
    "lambda0.05": (["optim.lr_weights=0.5", "views.radiograph.crop_scale=[0.08, 0.5]", "lambd=0.05"],
                   "a 10x heavier redundancy term against the dimensional collapse"),
    "strong-jitter": (["optim.lr_weights=0.5", "views.radiograph.crop_scale=[0.08, 0.5]",
                       "views.radiograph.brightness=0.6", "views.radiograph.contrast=0.6",
                       "views.radiograph.gamma=[0.5, 2.0]", "views.radiograph.jitter_p=1.0"],
                      "exposure dominates the features: make the views disagree on it"),
    "more-steps": (["optim.lr_weights=0.5", "views.radiograph.crop_scale=[0.08, 0.5]", "optim.epochs=40"],
                   "4x the steps (560) with the best of the above on validation"),
    "supervised": (["method=supervised"], "the positive control, the same backbone trained with the labels"),
}


def make_cache(root: Path) -> Path:
    """The synthetic experiment's NIH phantoms, prepared at 128 px, through the CLI."""
    btcxr = [sys.executable, "-m", "btcxr", "-q"]
    subprocess.run([*btcxr, "synth", "--out", str(root / "synth"), "--layout", "nih", "--n", "1200", "--size",
                    "256", "--seed", "0", "--normal-fraction", "0.5", "--no-contact-sheet"], check=True)
    subprocess.run([*btcxr, "prepare", "nih", "--root", str(root / "synth"), "--out", str(root / "cache"),
                    "--size", "128"], check=True)
    return root / "cache"


class Readout:
    """The train + val centre views of the cache at one size, their labels and mean intensities."""

    def __init__(self, cache: Path, size: int):
        from btcxr.data.cache_format import read_manifest
        from btcxr.data.nih import labels_multihot
        from btcxr.pretrain.monitor import centre_views

        rows = read_manifest(cache).sort_values("image_id")
        rows = rows[rows["split"].isin(["train", "val"])]
        self.images = centre_views(cache, rows, len(rows), size)
        self.labels = labels_multihot(rows["labels"])
        self.exposure = self.images.float().mean(dim=(1, 2, 3)).numpy()

    @torch.no_grad()
    def measure(self, backbone_file: Path) -> dict[str, float]:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        from btcxr.backbones import build_resnet
        from btcxr.pretrain.monitor import pooled_features

        model = build_resnet("resnet18", init=str(backbone_file)).eval()
        x = pooled_features(model, self.images).numpy()
        x = StandardScaler().fit_transform(x)
        pc1 = PCA(1).fit_transform(x)[:, 0]
        return {"cv_auroc": cv_mean_auroc(x, self.labels),
                "pc1_exposure": abs(float(np.corrcoef(pc1, self.exposure)[0, 1]))}


def cv_mean_auroc(x: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    aurocs = []
    for j in range(y.shape[1]):
        if y[:, j].sum() < 10:
            continue
        scores = np.zeros(len(y))
        for train, held in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y[:, j]):
            probe = LogisticRegression(C=0.1, max_iter=2000).fit(x[train], y[train, j])
            scores[held] = probe.decision_function(x[held])
        aurocs.append(roc_auc_score(y[:, j], scores))
    return float(np.mean(aurocs))


def run(variant: str, seed: int, cache: Path, out: Path, readouts: dict[int, Readout]) -> dict:
    from btcxr.config import load_config
    from btcxr.config_files import resolve_config
    from btcxr.engine.runlog import read_metrics
    from btcxr.pretrain.config import PretrainConfig
    from btcxr.pretrain.run import pretrain

    cfg = load_config(PretrainConfig, resolve_config("demo", "pretrain"),
                      [f"data.cache={cache}", f"seed={seed}", *BASE, *VARIANTS[variant][0]])
    backbone = pretrain(cfg, out)
    size = cfg.model.size
    if size not in readouts:
        readouts[size] = Readout(cache, size)
    random, trained = (readouts[size].measure(f) for f in (out / "backbone_step0.pth", backbone))
    mon = read_metrics(out, "monitor")
    row = {"variant": variant, "seed": seed, "random": random["cv_auroc"], "trained": trained["cv_auroc"],
           "pc1_exposure_random": random["pc1_exposure"], "pc1_exposure": trained["pc1_exposure"]}
    for key in ("rankme_backbone", "rankme_projector", "embed_spread"):
        values = [m[key] for m in mon if key in m]
        if values:
            row[key] = (values[0], min(values), values[-1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the cache and runs here (a finished run "
                        "there is read again, not retrained)")
    parser.add_argument("--figure", type=Path, default=None, help="draw the monitors of each variant's first "
                        "seed against steps into this PNG")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        cache = root / "cache" if (root / "cache" / "manifest.csv").exists() else make_cache(root)
        readouts: dict[int, Readout] = {}
        for variant in args.variants:
            for seed in args.seeds:
                rows.append(run(variant, seed, cache, root / f"{variant}_s{seed}", readouts))
                print_row(rows[-1])
        if args.figure:
            monitor_figure(root, args.variants, args.seeds[0], args.figure)
    print()
    for variant in args.variants:
        part = [r for r in rows if r["variant"] == variant]
        diff = np.array([r["trained"] - r["random"] for r in part])
        line = f"{variant:<14} CV mean AUROC {np.mean([r['trained'] for r in part]):.3f} vs random features " \
               f"{np.mean([r['random'] for r in part]):.3f}: {diff.mean():+.3f}"
        if len(part) > 1:
            line += f", paired t-test p = {stats.ttest_rel([r['trained'] for r in part], [r['random'] for r in part]).pvalue:.2g}"
        print(f"{line}  ({VARIANTS[variant][1]})")


def monitor_figure(root: Path, variants: list[str], seed: int, path: Path) -> None:
    from matplotlib.figure import Figure

    from btcxr.engine.runlog import read_metrics

    panels = (("rankme_backbone", "RankMe, backbone features"), ("rankme_projector", "RankMe, projector output"),
              ("embed_spread", "embedding spread"))
    fig = Figure(figsize=(15, 3.8))
    for k, (key, label) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), k)
        for variant in variants:
            mon = [m for m in read_metrics(root / f"{variant}_s{seed}", "monitor") if key in m]
            if mon:
                ax.plot([m["step"] for m in mon], [m[key] for m in mon], marker="o", label=variant)
        ax.set_xlabel("pre-training steps")
        ax.set_ylabel(label)
        ax.set_yscale("log" if key.startswith("rankme") else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Monitors on the NIH phantoms' val images (seed {seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def print_row(r: dict) -> None:
    def triple(key: str) -> str:
        return "/".join(f"{v:.1f}" if key != "embed_spread" else f"{v:.2f}" for v in r[key]) if key in r else "-"

    print(f"{r['variant']:<14} seed {r['seed']}: CV AUROC random {r['random']:.3f} -> {r['trained']:.3f}; "
          f"PC1~exposure {r['pc1_exposure_random']:.2f} -> {r['pc1_exposure']:.2f}; RankMe backbone "
          f"{triple('rankme_backbone')}, projector {triple('rankme_projector')}, spread {triple('embed_spread')} "
          "(init/lowest/last)", flush=True)


if __name__ == "__main__":
    main()
