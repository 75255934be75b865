"""DICOM Segmentation objects (highdicom): the bones as a SEG that references its source series.

A radiology department sends results back to PACS, which speaks DICOM. The SEG is binary, one
segment per bone (the SNOMED CT category and type codes of the model's card and of the Slicer
segmentation), names the model and its version as the algorithm, and references every source image it
segments, frame by frame. For a multi-echo series the source images are those of the echo that was
segmented (the first; ``io.dicom_series_files``).
"""

from pathlib import Path

import numpy as np

from .errors import InputError, MissingPackage
from .io import atomic_path, dicom_series_files
from .labels import ANATOMICAL_STRUCTURE

POSITION_TOLERANCE_MM = 1e-3


def _highdicom():
    try:
        import highdicom
    except ImportError:
        raise MissingPackage("highdicom", "pip install 'kneeseg[dicom]'", "a DICOM SEG needs highdicom, which is not installed") from None
    return highdicom


def source_datasets(folder) -> list:
    """The pydicom datasets of the images a segmentation of ``folder`` was made from, in slice order."""
    import pydicom

    return [pydicom.dcmread(f) for f in dicom_series_files(folder)]


def frames_in_source_order(labelmap, sources) -> np.ndarray:
    """The label map's slices (numpy k-j-i) matched to ``sources`` by their position in the patient.

    Each source image must lie on one slice of the label map's grid, with the same rows and columns;
    anything else (the label map was not made from these images) is refused.
    """
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(labelmap)
    positions = np.array([labelmap.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(array.shape[0])])
    frames = []
    for dataset in sources:
        if (int(dataset.Rows), int(dataset.Columns)) != array.shape[1:]:
            raise InputError(f"source image {dataset.SOPInstanceUID} is {dataset.Rows}x{dataset.Columns}, the label "
                             f"map's slices are {array.shape[1]}x{array.shape[2]}")
        gap = np.linalg.norm(positions - np.array(dataset.ImagePositionPatient, dtype=float), axis=1)
        k = int(np.argmin(gap))
        if gap[k] > POSITION_TOLERANCE_MM:
            raise InputError(f"source image {dataset.SOPInstanceUID} lies on no slice of the label map "
                             f"({gap[k]:.3f} mm away): the segmentation was not made from this series")
        frames.append(np.asarray(array[k]))
    return np.stack(frames)


def build_dicom_seg(labelmap, labels, sources, model_name: str, model_version: str, series_number: int = 901):
    """A highdicom ``Segmentation`` of ``labelmap`` (SimpleITK, values = label values) over ``sources``."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from . import __version__

    frames = frames_in_source_order(labelmap, sources)
    present = [label for label in labels if np.any(frames == label.value)]
    if not present:
        raise InputError("the segmentation is empty: no bone to put in a DICOM SEG")
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=model_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    category = Code(ANATOMICAL_STRUCTURE["code"], ANATOMICAL_STRUCTURE["scheme"], ANATOMICAL_STRUCTURE["meaning"])
    descriptions, masks = [], []
    for number, label in enumerate(present, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label.name,
            segmented_property_category=category,
            segmented_property_type=Code(label.snomed_code, "SCT", label.name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
        masks.append(frames == label.value)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack(masks, axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="KneeSegmentation", manufacturer_model_name="kneeseg", software_versions=__version__,
        device_serial_number="none", series_description=f"Knee bones ({model_name})"[:64],
        content_label="KNEEBONES", content_description="Knee bones segmented by kneeseg (research use only)")


def write_dicom_seg(labelmap, labels, dicom_folder, path, model_name: str, model_version: str) -> Path:
    """Write the DICOM SEG of ``labelmap`` made from the series in ``dicom_folder`` to ``path``, atomically."""
    seg = build_dicom_seg(labelmap, labels, source_datasets(dicom_folder), model_name, model_version)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
