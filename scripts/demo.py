#!/usr/bin/env python3
"""The README demo: fetch a real knee MRI, segment it with the shipped model, write the results.

The sample is the MIT-licensed multi-echo spin-echo T2 knee DICOM series that the PyPI source
distribution of pymskt (``mskt==0.1.22``) ships. It is fetched with pip and checked against a
SHA-256 pinned here, then the first echo is segmented:

    demo-output/knee_labels.nrrd      label map in the scan's geometry
    demo-output/knee_bones.seg.nrrd   Slicer segmentation with named, coloured bones
    demo-output/knee_overlay.png      overlay sheet to look at
    demo-output/knee_volumes.json     bone volumes in mL
"""

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

SAMPLE_PACKAGE = "mskt==0.1.22"
SAMPLE_SDIST = "mskt-0.1.22.tar.gz"
SAMPLE_SHA256 = "b49ffa4924337e28dc08af2e7efab399e9248c9e7db477e593d5d6e254757308"
SAMPLE_MEMBER = "mskt-0.1.22/data/MESE_T2_dicom_data/"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sample(cache: Path) -> Path:
    """Download the sdist with pip (once), verify its hash, unpack the DICOM series; return its folder."""
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / SAMPLE_SDIST
    if not sdist.exists():
        print(f"fetching the sample knee MRI ({SAMPLE_PACKAGE} source distribution, ~90 MB) with pip ...")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "mskt",
                        SAMPLE_PACKAGE, "-d", str(cache)], check=True)
    actual = sha256_of(sdist)
    if actual != SAMPLE_SHA256:
        sdist.unlink()
        sys.exit(f"demo: {sdist}: SHA-256 {actual} does not match the pinned {SAMPLE_SHA256}; removed it, rerun")
    folder = cache / "MESE_T2_dicom"
    if not folder.exists():
        from kneeseg.io import extract_folder

        extract_folder(sdist, SAMPLE_MEMBER, cache / "MESE_T2_dicom.partial").rename(folder)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-output", help="output folder")
    parser.add_argument("--cache", default=".demo", help="where the downloaded sample is kept")
    args = parser.parse_args()
    dicom = fetch_sample(Path(args.cache))
    out = Path(args.out)
    command = [sys.executable, "-m", "kneeseg", "segment", str(dicom), "-o", str(out / "knee_labels.nrrd"),
               "--seg-nrrd", str(out / "knee_bones.seg.nrrd"), "--overlay", str(out / "knee_overlay.png"),
               "--volumes-json", str(out / "knee_volumes.json"), "--dicom-seg", str(out / "knee_bones_seg.dcm"),
               "--meshes", str(out / "knee_meshes")]
    print("running:", " ".join(command))
    code = subprocess.run(command).returncode
    if code == 0:
        print(f"\nbone volumes (mL): {(out / 'knee_volumes.json').read_text()}")
        print(f"results in {out}/ - open {out / 'knee_overlay.png'}, or load {out / 'knee_bones.seg.nrrd'} (or the "
              f"meshes in {out / 'knee_meshes'}) in 3D Slicer; {out / 'knee_bones_seg.dcm'} is a DICOM SEG for PACS")
    return code


if __name__ == "__main__":
    sys.exit(main())
