"""The knee MRI of the README demo as a Sample Data entry ("Knee Segmentation" category).

The sample is the MIT-licensed multi-echo spin-echo T2 knee DICOM series that the PyPI source
distribution of pymskt (``mskt==0.1.22``) ships (``scripts/demo.py`` uses the same file). Sample
Data downloads the archive and checks its SHA-256; the series is then unpacked next to it, its first
echo read by the core (``kneeseg.io.read_volume``) and loaded as a volume named ``KneeMRI``.
"""

from pathlib import Path

import slicer
from slicer.i18n import tr as _

CATEGORY = "KneeSegmentation"
SAMPLE_NAME = "KneeMRI"
ARCHIVE_NAME = "mskt-0.1.22.tar.gz"
ARCHIVE_URL = "https://files.pythonhosted.org/packages/source/m/mskt/" + ARCHIVE_NAME
ARCHIVE_SHA256 = "b49ffa4924337e28dc08af2e7efab399e9248c9e7db477e593d5d6e254757308"
SERIES_MEMBER = "mskt-0.1.22/data/MESE_T2_dicom_data/"
THUMBNAIL = Path(__file__).resolve().parent.parent / "Resources" / "Icons" / "KneeMRI.png"


def registerSampleData() -> None:
    """Add the knee MRI to the Sample Data module (called once Slicer has started)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataCategory(CATEGORY, title=_("Knee Segmentation"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY, sampleName=SAMPLE_NAME, thumbnailFileName=str(THUMBNAIL), uris=ARCHIVE_URL,
        fileNames=ARCHIVE_NAME, checksums=f"SHA256:{ARCHIVE_SHA256}", nodeNames=SAMPLE_NAME, loadFiles=False,
        customDownloader=lambda source: loadSample())


def loadSample():
    """Download (once, checksum-verified), unpack and load the knee MRI; return its volume node."""
    import SampleData

    logic = SampleData.SampleDataLogic()
    source = logic.sourceForSampleName(SAMPLE_NAME)
    if source is None:
        registerSampleData()
        source = logic.sourceForSampleName(SAMPLE_NAME)
    archive = Path(logic.downloadFromSource(source)[0])
    if not archive.is_file():
        raise RuntimeError(_("The knee MRI sample could not be downloaded from {url}").format(url=ARCHIVE_URL))
    volumePath = archive.with_name(SAMPLE_NAME + ".nrrd")
    if not volumePath.is_file():
        _writeFirstEcho(archive, volumePath)
    return slicer.util.loadVolume(str(volumePath), {"name": SAMPLE_NAME})


def _writeFirstEcho(archive: Path, volumePath: Path) -> None:
    import SimpleITK as sitk
    from kneeseg.io import extract_folder, read_volume

    folder = extract_folder(archive, SERIES_MEMBER, archive.with_name(SAMPLE_NAME + "-dicom"))
    partial = volumePath.with_name(volumePath.stem + ".partial.nrrd")
    sitk.WriteImage(read_volume(folder), str(partial), True)
    partial.replace(volumePath)
