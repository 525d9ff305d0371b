"""`btcxr synth --layout natural`: dead-leaves pictures, the offline stand-in for ImageNet pre-training.
Deterministic per seed whatever the workers, and measurably unlike the radiograph phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from btcxr.cli import main
from btcxr.data.synthetic import generate


def _pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


@pytest.fixture(scope="module")
def natural(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("natural") / "natural"
    assert main(["-q", "synth", "--out", str(root), "--layout", "natural", "--n", "12", "--size", "96",
                 "--seed", "3", "--workers", "1"]) == 0
    return root


def test_the_same_seed_gives_the_same_bytes_whatever_the_workers(natural, tmp_path):
    again = tmp_path / "again"
    generate(again, "natural", n=12, size=96, seed=3, workers=2)
    files = _pngs(natural / "images")
    assert len(files) == 12 and [p.name for p in files] == [p.name for p in _pngs(again / "images")]
    assert all(a.read_bytes() == (again / "images" / a.name).read_bytes() for a in files)
    other = tmp_path / "other"
    generate(other, "natural", n=2, size=96, seed=4, workers=1)
    assert (other / "images" / files[0].name).read_bytes() != files[0].read_bytes()
    settings = json.loads((natural / "natural.json").read_text())
    assert (settings["layout"], settings["n"], settings["size"], settings["seed"]) == ("natural", 12, 96, 3)


def _statistics(paths: list[Path]) -> dict[str, float]:
    rgb = [np.asarray(Image.open(p).convert("RGB")).astype(float) for p in paths]
    gray = [np.asarray(Image.open(p).convert("L").resize((96, 96))).astype(float) for p in paths]
    return {"colour": float(np.mean([np.abs(x[..., 0] - x[..., 1]).mean() + np.abs(x[..., 1] - x[..., 2]).mean()
                                     for x in rgb])),
            "hard_edges": float(np.mean([np.mean(np.abs(np.diff(g, axis=1)) > 20) for g in gray]))}


def test_pictures_are_unlike_the_radiograph_phantoms(natural, tmp_path):
    generate(tmp_path / "nih", "nih", n=12, size=96, seed=3, workers=1, contact_sheet=False)
    phantoms = _statistics([p for p in _pngs(tmp_path / "nih") if "images" in p.parts][:12])
    leaves = _statistics(_pngs(natural / "images"))
    assert phantoms["colour"] < 1 < 20 < leaves["colour"]  # radiographs are gray, leaves are coloured
    assert leaves["hard_edges"] > 1.3 * phantoms["hard_edges"]  # occlusion: edges everywhere
    shapes = {Image.open(p).size for p in _pngs(natural / "images")}
    assert shapes == {(96, 96)}


def test_a_natural_folder_prepares_into_a_cache_for_pretraining(natural, tmp_path):
    from btcxr.data.cache_format import read_manifest

    cache = tmp_path / "cache"
    assert main(["-q", "prepare", "folder", "--root", str(natural), "--out", str(cache), "--size", "32",
                 "--workers", "1"]) == 0
    manifest = read_manifest(cache)
    assert len(manifest) == 12 and set(manifest["orig_width"]) == {96}
