"""Fine-tuning on synthetic VinDr phantoms (btcxr synth -> prepare -> finetune) learns what was drawn."""


import pytest

from btcxr.config import load_config
from btcxr.config_files import CONFIG_DIR
from btcxr.data.cache import PrepareSettings, prepare
from btcxr.data.synthetic import generate
from btcxr.detect.config import FinetuneConfig
from btcxr.detect.evaluate_checkpoint import evaluate_checkpoint
from btcxr.detect.model import build_detector, detector_checkpoint
from btcxr.detect.train import finetune
from btcxr.engine.checkpoint import save_checkpoint
from btcxr.engine.runlog import read_metrics

DEMO = CONFIG_DIR / "finetune" / "demo.yaml"


@pytest.mark.slow
def test_finetune_on_synthetic_vindr_rises_far_above_an_untrained_detector(tmp_path):
    import torch

    # Every image shows cardiomegaly (a large finding), read by 3 simulated radiologists and fused by WBF.
    generate(tmp_path / "vindr", "vindr-kaggle", n=60, size=160, seed=0, normal_fraction=0.0,
             prevalence={"Cardiomegaly": 1.0}, contact_sheet=False, workers=1)
    cache = tmp_path / "cache"
    prepare(PrepareSettings(dataset="vindr", root=str(tmp_path / "vindr"), out=str(cache), size=96, workers=1))
    cfg = load_config(FinetuneConfig, DEMO, [f"data.cache={cache}", "model.size=96", "optim.epochs=6",
                                             "optim.warmup_iters=5", "data.workers=0", "device=cpu"])
    finetune(cfg, tmp_path / "run")

    torch.manual_seed(0)
    untrained = build_detector(cfg.model)
    save_checkpoint(tmp_path / "untrained.pt", detector_checkpoint(untrained, cfg.model))
    base = evaluate_checkpoint(tmp_path / "untrained.pt", cache, "val", tmp_path / "base", workers=0, bootstrap=0)
    best_val = max(r["val_ap50"] for r in read_metrics(tmp_path / "run", phase="epoch"))
    assert base["map50"] < 0.05 and best_val > 0.2, (base["map50"], best_val)
