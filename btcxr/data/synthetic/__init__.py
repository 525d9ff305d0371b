"""Phantom chest radiographs written exactly as the real datasets lie on disk (``btcxr synth``).

    from btcxr.data.synthetic import generate
    summary = generate(Path("synth"), "all", n=200, size=512, seed=0)

Layouts: ``nih`` (NIH ChestX-ray14), ``vindr-kaggle`` and ``vindr-physionet`` (VinDr-CXR), or ``all``
(one sub-folder per layout); ``natural`` writes dead-leaves pictures instead (natural.py), the offline
stand-in for ImageNet pre-training. Modules: phantom (anatomy), findings (what is drawn where), acquisition
(exposure), render (one case), readers (R1..R17), plan (what every image will be), dicom, nih, vindr
(the files), contact_sheet, parallel.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from btcxr.data.synthetic.contact_sheet import write_contact_sheet
from btcxr.data.synthetic.nih import NihJob, image_dir, render_nih, write_tables
from btcxr.data.synthetic.parallel import run_jobs
from btcxr.data.synthetic.plan import (
    NIH_PREVALENCE,
    VINDR_PREVALENCE,
    check_prevalence,
    plan_nih,
    plan_vindr,
)
from btcxr.data.synthetic.vindr import (
    VindrJob,
    reader_annotations,
    render_vindr,
    write_kaggle,
    write_physionet,
)
from btcxr.engine.io import ensure_dir
from btcxr.errors import BtcxrError

log = logging.getLogger(__name__)

LAYOUTS = ("nih", "vindr-kaggle", "vindr-physionet")
SHEET_IMAGES = 8


def _sheet_indices(classes: list[list[str]], k: int = SHEET_IMAGES) -> set[int]:
    """Mostly abnormal images (they have boxes to look at), plus a couple of normal ones."""
    abnormal = [i for i, c in enumerate(classes) if c]
    normal = [i for i, c in enumerate(classes) if not c]
    pick = abnormal[: k - min(2, len(normal))]
    return set(pick + normal[: k - len(pick)])


def generate(
    out: Path,
    layout: str,
    n: int,
    size: int,
    seed: int,
    workers: int | None = None,
    normal_fraction: float = 0.7,
    prevalence: dict[str, float] | None = None,
    nih_kaggle_layout: bool = False,
    test_fraction: float = 0.2,
    nih_test_fraction: float = 0.23,
    render_max: int = 384,
    contact_sheet: bool = True,
) -> dict:
    """Write `n` synthetic images per layout under `out` and return a summary of what was written.

    layout: "nih", "vindr-kaggle", "vindr-physionet" or "all" (then `out/<layout>/` for each).
    size: NIH images are size x size; VinDr DICOMs are size x U(0.85, 1.3) tall with varying aspect.
    prevalence: VinDr class name -> probability on an abnormal image (default: the real sets' rates).
    The same seed gives byte-identical files whatever `workers` is.
    """
    out = Path(out)
    if layout not in (*LAYOUTS, "all", "natural"):
        raise BtcxrError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}, all or natural")
    if n < 1:
        raise BtcxrError(f"--n {n}: expected at least 1 image")
    if size < 32:
        raise BtcxrError(f"--size {size}: expected at least 32 pixels")
    if render_max < 64:
        raise BtcxrError(f"--render-max {render_max}: expected at least 64 pixels")
    if not 0.0 <= normal_fraction <= 1.0:
        raise BtcxrError(f"--normal-fraction {normal_fraction}: expected a number in [0, 1]")
    for name, frac in (("test_fraction", test_fraction), ("nih_test_fraction", nih_test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise BtcxrError(f"{name} {frac}: expected a number in [0, 1)")
    if layout == "natural":
        from btcxr.data.synthetic.natural import generate_natural

        ensure_dir(out, "--out")
        return {"out": str(out), "seed": seed, "n": n, "size": size,
                "layouts": {"natural": generate_natural(out, n, size, seed, workers)}}
    wanted = list(LAYOUTS) if layout == "all" else [layout]
    roots = {name: (out / name if layout == "all" else out) for name in wanted}
    ensure_dir(out, "--out")  # a file in the way or no permission: told before any image is drawn
    for root in roots.values():
        ensure_dir(root, "output folder")
    summary: dict = {"out": str(out), "seed": seed, "n": n, "size": size, "layouts": {}}
    thumbs = []
    if "nih" in wanted:
        prev = check_prevalence(prevalence) if prevalence else NIH_PREVALENCE
        nih, nih_thumbs = _generate_nih(roots["nih"], n, size, seed, workers, normal_fraction, prev,
                                        nih_kaggle_layout, nih_test_fraction, render_max, contact_sheet)
        summary["layouts"]["nih"] = nih
        thumbs += nih_thumbs[: SHEET_IMAGES // 2]
    vindr = [name for name in wanted if name.startswith("vindr")]
    if vindr:
        prev = check_prevalence(prevalence) if prevalence else VINDR_PREVALENCE
        more, vindr_thumbs = _generate_vindr({k: roots[k] for k in vindr}, n, size, seed, workers, normal_fraction,
                                             prev, test_fraction, render_max, contact_sheet)
        summary["layouts"].update(more)
        thumbs += vindr_thumbs[: SHEET_IMAGES // 2]
    if contact_sheet and layout == "all":
        summary["contact_sheet"] = str(write_contact_sheet(out / "contact_sheet.png", thumbs))
        log.info("contact sheet: %s", summary["contact_sheet"])
    return summary


def _generate_nih(root: Path, n: int, size: int, seed: int, workers: int | None, normal_fraction: float,
                  prevalence: dict[str, float], kaggle_layout: bool, test_fraction: float, render_max: int,
                  sheet: bool) -> tuple[dict, list]:
    plans = plan_nih(n, seed, normal_fraction, prevalence, test_fraction)
    thumbs = _sheet_indices([p.classes for p in plans]) if sheet else set()
    jobs = [NihJob(p, seed, str(root / image_dir(p, n, kaggle_layout) / p.file_name), size, render_max,
                   p.index in thumbs) for p in plans]
    results = run_jobs(render_nih, jobs, workers, "synth nih")
    files = write_tables(root, plans, results, seed, size)
    sheet_thumbs = [r.thumb for r in results if r.thumb]
    if sheet:
        files["contact_sheet.png"] = write_contact_sheet(root / "contact_sheet.png", sheet_thumbs)
    log.info("NIH layout: %d images of %d patients in %s", n, len({p.patient_id for p in plans}), root)
    for path in files.values():
        log.info("  wrote %s", path)
    return {
        "root": str(root),
        "images": n,
        "patients": len({p.patient_id for p in plans}),
        "test_images": sum(p.split == "test" for p in plans),
        "png_modes": dict(Counter(p.png_mode for p in plans)),
        "boxes": sum(len(r.findings) for r in results),
        "classes": dict(Counter(f.class_name for r in results for f in r.findings)),
        "files": {k: str(v) for k, v in files.items()},
    }, sheet_thumbs


def _generate_vindr(roots: dict[str, Path], n: int, size: int, seed: int, workers: int | None,
                    normal_fraction: float, prevalence: dict[str, float], test_fraction: float, render_max: int,
                    sheet: bool) -> tuple[dict, list]:
    plans = plan_vindr(n, size, seed, normal_fraction, prevalence, test_fraction)
    thumbs = _sheet_indices([p.classes for p in plans]) if sheet else set()
    jobs = [VindrJob(p, seed, tuple(str(r) for r in roots.values()), render_max, p.index in thumbs) for p in plans]
    results = run_jobs(render_vindr, jobs, workers, "synth vindr")
    annotations = [reader_annotations(p, r, seed) for p, r in zip(plans, results)]
    sheet_thumbs = [r.thumb for r in results if r.thumb]
    summary = {}
    for name, root in roots.items():
        files = write_kaggle(root, plans, annotations) if name == "vindr-kaggle" else write_physionet(
            root, plans, annotations, results)
        if sheet:
            files["contact_sheet.png"] = write_contact_sheet(root / "contact_sheet.png", sheet_thumbs)
        n_test = sum(p.split == "test" for p in plans)
        log.info("%s layout: %d train + %d test DICOMs in %s", name, n - n_test, n_test, root)
        for path in files.values():
            log.info("  wrote %s", path)
        summary[name] = {
            "root": str(root),
            "images": n,
            "train_images": n - n_test,
            "test_images": n_test,
            "abnormal_images": sum(bool(r.findings) for r in results),
            "boxes": sum(len(r.findings) for r in results),
            "reader_rows": sum(len(a) for p, a in zip(plans, annotations) if p.split == "train"),
            "classes": dict(Counter(f.class_name for r in results for f in r.findings)),
            "files": {k: str(v) for k, v in files.items()},
        }
    return summary, sheet_thumbs


__all__ = ["generate", "LAYOUTS", "VINDR_PREVALENCE", "NIH_PREVALENCE"]
