"""Throughput of `btcxr prepare`: images per second (and per core) on large DICOMs and on 1024 px PNGs.

    .venv/bin/python benchmarks/prepare.py                      # 24 DICOMs at 2500 px, 48 PNGs at 1024 px
    .venv/bin/python benchmarks/prepare.py --n-dicom 48 --workers 1,2,4 --compression none,j2k

The DICOMs are written here with pydicom (12-bit MONOCHROME2, a smooth phantom plus detector noise,
uncompressed or JPEG 2000 lossless: the VinDr files come both ways), the PNGs with PIL (8-bit, NIH-like).
Each run prepares a fresh `folder` cache at --size, so every image is decoded, resized and written.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btcxr.data.cache import PrepareSettings, prepare  # noqa: E402


def radiograph_like(width: int, height: int, seed: int, top: int) -> np.ndarray:
    """A smooth chest-like intensity field with noise: compresses like a real radiograph, not like a flat image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width / 2, height / 2
    body = np.exp(-(((xx - cx) / (0.45 * width)) ** 2 + ((yy - cy) / (0.6 * height)) ** 2))
    lungs = sum(np.exp(-(((xx - cx + s * 0.2 * width) / (0.13 * width)) ** 2
                          + ((yy - 0.45 * height) / (0.25 * height)) ** 2)) for s in (-1, 1))
    img = 0.25 + 0.6 * body - 0.35 * lungs + rng.normal(0, 0.02, (height, width)).astype(np.float32)
    return (np.clip(img, 0, 1) * top).astype(np.uint16 if top > 255 else np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, compression: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    if compression == "j2k":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)


def make_sources(base: Path, args) -> dict[str, Path]:
    sources = {}
    for compression in args.compression.split(","):
        folder = base / f"dicom-{compression}"
        folder.mkdir(parents=True)
        for k in range(args.n_dicom):
            width = args.dicom_size - 300 + (k % 4) * 100  # 2,200-2,500 wide, 2,500 high by default
            write_dicom(folder / f"{k:04d}.dicom", radiograph_like(width, args.dicom_size, k, 4095), compression)
        sources[f"DICOM {args.dicom_size - 300}-{args.dicom_size}x{args.dicom_size} 12-bit {compression}"] = folder
    folder = base / "png"
    folder.mkdir()
    for k in range(args.n_png):
        Image.fromarray(radiograph_like(args.png_size, args.png_size, k, 255)).save(folder / f"{k:05d}.png")
    sources[f"PNG {args.png_size}x{args.png_size} 8-bit"] = folder
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-dicom", type=int, default=24)
    parser.add_argument("--dicom-size", type=int, default=2500)
    parser.add_argument("--compression", default="none,j2k", help="DICOM pixel encodings: none, j2k")
    parser.add_argument("--n-png", type=int, default=48)
    parser.add_argument("--png-size", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224, help="cache size (longest side)")
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}", help="comma-separated worker counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    base = Path(tempfile.mkdtemp(prefix="btcxr-bench-prepare-"))
    try:
        t0 = time.perf_counter()
        sources = make_sources(base, args)
        print(f"wrote the sources in {time.perf_counter() - t0:.1f} s under {base}")
        print(f"{'source':38s} {'images':>6s} {'workers':>7s} {'seconds':>8s} {'img/s':>7s} {'img/s/core':>10s}")
        for name, folder in sources.items():
            n = len(list(folder.iterdir()))
            for workers in sorted({int(w) for w in args.workers.split(",")}):
                out = base / f"cache-{folder.name}-{workers}"
                start = time.perf_counter()
                report = prepare(PrepareSettings("folder", str(folder), str(out), size=args.size, workers=workers))
                seconds = time.perf_counter() - start
                assert report.prepared == n
                rate = n / seconds
                print(f"{name:38s} {n:6d} {workers:7d} {seconds:8.2f} {rate:7.1f} {rate / workers:10.1f}")
                shutil.rmtree(out)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
