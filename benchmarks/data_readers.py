"""Timing of the data layer's readers on the real annotation files (shipped in the torchxrayvision wheel).

Run: .venv/bin/python benchmarks/data_readers.py [--no-tree]
Prints seconds for: reading+validating VinDr train.csv (67,914 rows), fusing it (WBF, NMS, union),
reading the NIH Data_Entry_2017_v2020 index (112,120 rows), load_nih over a tree of 112,120 empty PNG
files in the Kaggle layout (skip with --no-tree), and decoding + resizing one synthetic 3,000 x 2,500
12-bit DICOM.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import shutil
import tempfile
from pathlib import Path

import numpy as np
from timing import timed  # benchmarks/timing.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-tree", action="store_true", help="skip the 112,120-file load_nih timing")
    args = parser.parse_args()

    from btcxr.data.fusion import fuse_readers
    from btcxr.data.images import read_image, resize_longest
    from btcxr.data.nih import load_nih, read_data_entry
    from btcxr.data.vindr import read_kaggle_train_csv

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        raise SystemExit("torchxrayvision (test extra) is needed for the real annotation files")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"

    ann = timed("VinDr train.csv read + validate (67,914 rows)",
                lambda: read_kaggle_train_csv(data / "vinbigdata-train.csv.gz"), repeat=3)
    timed("fuse WBF, 15,000 images", lambda: fuse_readers(ann, "wbf"), repeat=3)
    fuse_readers(ann.iloc[:50], "nms")  # numba compiles ensemble-boxes' NMS on the first call (~3 s)
    timed("fuse NMS, 15,000 images (after numba compile)", lambda: fuse_readers(ann, "nms"), repeat=3)
    timed("fuse union, 15,000 images", lambda: fuse_readers(ann, "union"), repeat=3)
    index = timed("NIH Data_Entry_2017_v2020 read + validate (112,120 rows)",
                  lambda: read_data_entry(data / "Data_Entry_2017_v2020.csv.gz"), repeat=3)

    tmp = Path(tempfile.mkdtemp(prefix="btcxr_bench_"))
    try:
        if not args.no_tree:
            index_csv = tmp / "Data_Entry_2017_v2020.csv"
            index_csv.write_bytes(gzip.decompress((data / "Data_Entry_2017_v2020.csv.gz").read_bytes()))
            for part, names in enumerate(np.array_split(index["image_id"].to_numpy(), 12), start=1):
                folder = tmp / f"images_{part:03d}" / "images"
                folder.mkdir(parents=True)
                for name in names:
                    (folder / name).touch()
            timed("load_nih: walk 112,120 PNGs (Kaggle layout) + index", lambda: load_nih(tmp))

        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

        rng = np.random.default_rng(0)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.set_pixel_data(rng.integers(0, 4096, (3000, 2500)).astype(np.uint16), "MONOCHROME1", 12)
        ds.WindowCenter, ds.WindowWidth = 2048.0, 4096.0
        ds.save_as(tmp / "big.dcm", enforce_file_format=True)
        assert pydicom.dcmread(tmp / "big.dcm").Rows == 3000
        rg = timed("read_image 3,000 x 2,500 12-bit DICOM (window, MONOCHROME1)",
                   lambda: read_image(tmp / "big.dcm"), repeat=3)
        timed("resize_longest to 640 (uint8, Lanczos)", lambda: resize_longest(rg.pixels, 640), repeat=3)
        rg16 = read_image(tmp / "big.dcm", bits=16)
        timed("resize_longest to 640 (uint16, Lanczos)", lambda: resize_longest(rg16.pixels, 640), repeat=3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
