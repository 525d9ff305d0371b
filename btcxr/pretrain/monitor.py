"""Label-free (and one label-using) measures of what a pre-training run has learned, for every method.

* RankMe (Garrido et al., "RankMe: Assessing the downstream performance of pretrained self-supervised
  representations by their rank", ICML 2023): the effective rank of a set of embeddings, exp of the entropy
  of its normalised singular values. 1 for a collapsed set, the dimension for an isotropic one.
* Online k-NN probe (as solo-learn's WeightedKNNClassifier): cosine similarity of frozen features, the k
  nearest neighbours of each query in a labelled bank vote with weight exp(similarity / T); for the
  multi-label NIH findings the vote is a score per label, scored by the mean AUROC. No training.

Written here rather than taken from a library: lightly has no RankMe, and solo-learn's k-NN is a Lightning
metric tied to its training module; both are a few lines of tensor code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torchvision.transforms import v2

from btcxr.data.cache_format import read_manifest
from btcxr.data.datasets import load_cache_image
from btcxr.data.nih import labels_multihot
from btcxr.pretrain.barlow_twins.model import embedding_spread
from btcxr.pretrain.views import as_uint8, model_input

RANKME_EPS = 1e-7  # the paper's epsilon, added to every normalised singular value


def rankme(z: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """exp(-sum_k p_k log p_k), p_k = sigma_k / ||sigma||_1 + eps over the singular values of z (N, D);
    NaN when z holds a non-finite value (a diverged model: the monitor reports it, it does not stop the run)."""
    if not torch.isfinite(z).all():
        return float("nan")
    sigma = torch.linalg.svdvals(z.detach().double())
    p = sigma / sigma.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def knn_scores(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = 20,
               temperature: float = 0.07) -> torch.Tensor:
    """Per-label scores (Q, L) of each query: the labels of its k most cosine-similar bank rows, weighted
    by exp(similarity / temperature) and normalised by the weights' sum."""
    bank = torch.nn.functional.normalize(bank.double(), dim=1)
    queries = torch.nn.functional.normalize(queries.double(), dim=1)
    sim, index = (queries @ bank.T).topk(min(k, len(bank)), dim=1)
    weight = (sim / temperature).exp()
    votes = (weight[..., None] * bank_labels.double()[index]).sum(dim=1)
    return votes / weight.sum(dim=1, keepdim=True)


def knn_mean_auroc(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                   query_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Mean AUROC of the k-NN scores over the labels that have both classes among the queries (NaN when
    none has)."""
    if not (torch.isfinite(bank).all() and torch.isfinite(queries).all()):
        return float("nan")
    scores = knn_scores(bank, bank_labels, queries, k, temperature).numpy()
    truth = query_labels.numpy()
    aurocs = [roc_auc_score(truth[:, j], scores[:, j]) for j in range(truth.shape[1])
              if 0 < truth[:, j].sum() < len(truth)]
    return float(np.mean(aurocs)) if aurocs else float("nan")


class MonitorSet:
    """The fixed images every monitor row is measured on: the first `images` of the cache's val split in
    image-id order (the pre-training images when the cache has no val split), one centre view at `size`
    px, no augmentation, so every arm and seed of an experiment sees the same ones. Where the cache has
    labels (NIH), the first `bank` train images are the k-NN probe's labelled bank and the val images its
    queries. Held as uint8 on the CPU; no random number is drawn, so a resumed run measures the same."""

    def __init__(self, cache: str, size: int, images: int = 512, bank: int = 1024):
        manifest = read_manifest(cache).sort_values("image_id", kind="stable")
        val = manifest[manifest["split"] == "val"]
        self.images = centre_views(cache, val if len(val) else manifest, images, size)
        labelled = manifest["labels"].fillna("").str.strip().ne("")
        train = manifest[(manifest["split"] == "train") & labelled]
        self.bank = self.bank_labels = self.labels = None
        if len(val) and len(train) and labelled[val.index].all():
            self.bank = centre_views(cache, train, bank, size)
            self.bank_labels = torch.tensor(labels_multihot(train["labels"].iloc[:bank]))
            self.labels = torch.tensor(labels_multihot(val["labels"].iloc[:images]))

    @torch.no_grad()
    def measure(self, backbone: torch.nn.Module, projector: torch.nn.Module | None = None,
                batch: int = 128) -> dict[str, float]:
        """rankme_backbone (pooled features), rankme_projector and embed_spread (projector output, before any
        final batch norm), knn_mean_auroc (labelled caches). The modules run in eval mode (batch norm with
        its running statistics) and are put back in the mode they were in."""
        modules = [m for m in (backbone, projector) if m is not None]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            feats = pooled_features(backbone, self.images, batch)
            row = {"rankme_backbone": rankme(feats)}
            if projector is not None:
                z = torch.cat([projector(f) for f in feats.split(batch)])
                row |= {"rankme_projector": rankme(z), "embed_spread": float(embedding_spread(z))}
            if self.bank is not None:
                row["knn_mean_auroc"] = knn_mean_auroc(pooled_features(backbone, self.bank, batch), self.bank_labels,
                                                       feats, self.labels)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        return row


def centre_views(cache: str | Path, rows, count: int, size: int) -> torch.Tensor:
    """(N, 1, size, size) uint8: the shorter side to size, then the centre square, of the first `count` rows
    of a manifest frame (its `file` column). Also what the benchmarks probe."""
    view = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    files = [f"{cache}/{f}" for f in rows["file"].iloc[:count]]
    return torch.stack([view(as_uint8(load_cache_image(f))) for f in files])


def pooled_features(backbone: torch.nn.Module, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """The backbone's pooled features (N, D) of uint8 gray images, on the backbone's device, as float32."""
    device = next(backbone.parameters()).device
    return torch.cat([backbone(model_input(x.to(device))).float().cpu() for x in images.split(batch)])
