"""ITK's error messages in plain words.

SimpleITK raises ``RuntimeError`` with a multi-line text: a source-file banner, an object address,
and somewhere the cause. Its last line is often only a number or a region (``(0 0 1)``,
``Size: [64, 64, 1]``). :func:`plain_reason` maps the failures whose cause is known to a short
phrase and otherwise returns ITK's own sentence without the banner, on one line.
"""

import re

# (pattern in ITK's text, what it means), first match wins.
KNOWN_CAUSES = (
    (r"No space left on device", "no space left on device"),
    (r"Disk quota exceeded", "disk quota exceeded"),
    (r"Permission denied", "permission denied"),
    (r"Bad direction, determinant is 0", "its direction matrix is singular (two image axes point the same way)"),
    (r"Zero-valued spacing", "it has a voxel spacing of zero"),
    (r"does not fully contain the requested region",
     "its data is smaller than its header says (a truncated file, or slices of different sizes)"),
    (r"fwrite wrote only|failed to write to file|couldn't write|cannot be written",
     "the data could not be written completely"),
    (r"fread got only|expected \d+ bytes but received|_nrrdEncoding\w*_read|data not read completely",
     "its data is shorter than its header says (a truncated file)"),
    (r"Unable to determine ImageIO reader", "not an image format SimpleITK reads"),
    (r"MetaImageIO.*File cannot be read", "the MetaImage header or its data cannot be read (incomplete or missing data)"),
    (r"trouble parsing (.+?) info", "its NRRD header has a malformed '{0}' field"),
    (r"PNG critical error|JPEG|TIFFReadDirectory", "a damaged 2D picture, not a volume"),
    (r"Size mismatch|not the same size", "its slices differ in size"),
)

_BANNER = re.compile(r"^(Exception thrown in SimpleITK .*|/\S+:\d+:)$")
_PREFIX = re.compile(r"^(ITK ERROR|itk::ERROR|sitk::ERROR|ERROR):\s*(\w+\(0x[0-9a-f]+\):\s*)?")


def plain_reason(exc) -> str:
    """A one-line reason for a SimpleITK/ITK failure, in plain words where the cause is known."""
    text = str(exc)
    for pattern, meaning in KNOWN_CAUSES:
        match = re.search(pattern, text)
        if match:
            return meaning.format(*match.groups())
    return itk_sentence(text)


def itk_sentence(text: str) -> str:
    """ITK's own sentence: the first line after the banner that says something, without addresses."""
    for line in (ln.strip() for ln in text.splitlines()):
        if not line or _BANNER.match(line):
            continue
        line = _PREFIX.sub("", line).strip()
        if len(re.findall(r"[A-Za-z]", line)) >= 6:
            return line[:200]
    return "SimpleITK could not handle it"
