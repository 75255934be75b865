"""A test double of the kneeseg command line (used by Testing/slicer only).

It follows the CLI's protocol (JSON progress lines, exit codes 0/1/2/130, label map in the input's
geometry) and misbehaves on request: the environment variable KNEESEG_FAKE_MODE selects ok, crash,
killed, hang, badinput, checksum, missingmodule, noresult, wronggeometry, unknownlabel,
trainfail or slowtrain. Labels are derived from the input intensities (value // 100), so a test knows exactly
which voxels each bone must hold.

Its command line is the real one: it is built from ``kneeseg.contract`` (the real module, found
through the package path below), so the stand-in accepts exactly what ``kneeseg`` accepts; only the
behaviour after parsing is faked.
"""
from pathlib import Path

# After this folder, look in the real package: kneeseg.contract, kneeseg.errors ... are the real ones.
__path__.append(str(Path(__file__).resolve().parents[4] / "KneeSegmentation" / "kneeseg"))
