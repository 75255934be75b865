"""A bundle's files, read without leaving the bundle and with bounded sizes.

A bundle comes from someone else: its card names the weight files, a zip says how big its members
are. Neither is trusted. A file is opened only when its real path (links followed) lies inside the
bundle folder, it is a regular file (not ``/dev/zero``, a pipe or a folder, which would hang or
never end), and it is no bigger than its bound; reading stops at the bound too. A zip is unpacked
member by member with the member count, each member's kind (no links), the total unpacked size
and the compression ratio counted on the bytes actually produced, since a zip's headers can lie.
Any breach is a :class:`~kneeseg.errors.BundleError` naming the file.
"""

import hashlib
import os
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .errors import BundleError

MAX_CARD_BYTES = 8 << 20
MAX_WEIGHT_BYTES = 2 << 30
MAX_ZIP_MEMBERS = 256
MAX_UNPACKED_BYTES = 4 << 30
MAX_COMPRESSION_RATIO = 100  # unpacked bytes per byte of archive, checked beyond RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = 16 << 20
_CHUNK = 1 << 20


def _size_text(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def open_confined(folder, name, limit, bundle=None) -> int:
    """A read-only file descriptor for ``folder/name``, refused unless it is a regular file of at most
    ``limit`` bytes whose real path lies inside ``folder``. The caller closes it."""
    folder = Path(folder)
    bundle = bundle if bundle is not None else folder
    path = folder / name
    if not os.path.lexists(path):
        raise BundleError(f"{name} is missing", bundle)
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root or real == root:
        raise BundleError(f"{name} is a link leading out of the bundle (to {real})", bundle)
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise BundleError(f"{name} cannot be opened ({exc.strerror})", bundle) from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"{name} is not a regular file (a device, a pipe or a folder)"
    elif info.st_size > limit:
        problem = f"{name} is {_size_text(info.st_size)}, more than a bundle file may hold ({_size_text(limit)})"
    if problem:
        os.close(fd)
        raise BundleError(problem, bundle)
    return fd


def read_bounded(fd, limit, name, bundle):
    """Yield the file's chunks; refuse it when it turns out longer than ``limit`` (a file that grows)."""
    total = 0
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            total += len(chunk)
            if total > limit:
                raise BundleError(f"{name} is longer than a bundle file may be ({_size_text(limit)})", bundle)
            yield chunk


def read_card_text(folder, name, bundle=None) -> str:
    """The card's text, confined and bounded."""
    fd = open_confined(folder, name, MAX_CARD_BYTES, bundle)
    data = b"".join(read_bounded(fd, MAX_CARD_BYTES, name, bundle or folder))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{name} is not UTF-8 text", bundle or folder) from None


def weight_sha256(folder, name, bundle=None) -> str:
    """SHA-256 of a weight file, confined and bounded."""
    digest = hashlib.sha256()
    for chunk in read_bounded(open_confined(folder, name, MAX_WEIGHT_BYTES, bundle), MAX_WEIGHT_BYTES, name,
                              bundle or folder):
        digest.update(chunk)
    return digest.hexdigest()


def check_member_names(infos, path):
    """Refuse too many members, unsafe names (absolute, '..', drive letters, backslashes), names
    that clash, and members that are links or special files."""
    if len(infos) > MAX_ZIP_MEMBERS:
        raise BundleError(f"the zip holds {len(infos)} members; a bundle has at most {MAX_ZIP_MEMBERS}", path)
    seen = set()
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        if (not name or name.startswith("/") or "\\" in name or ":" in name or "\x00" in name
                or any(part in ("..", ".") for part in parts)):
            raise BundleError(f"unsafe path {name!r} in zip", path)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BundleError(f"zip member {name!r} is a symbolic link; a bundle holds plain files", path)
        kind = stat.S_IFMT(mode)  # 0 when the zip records no file type (plain files from most tools)
        if kind and not info.is_dir() and kind != stat.S_IFREG:
            raise BundleError(f"zip member {name!r} is not a plain file", path)
        key = name.rstrip("/").casefold()
        if key in seen:
            raise BundleError(f"zip member {name!r} appears twice", path)
        seen.add(key)


def unpack_zip(path, target):
    """Unpack a zipped bundle into ``target`` within the bounds; sizes are counted while streaming."""
    path, target = Path(path), Path(target)
    archive_bytes = max(path.stat().st_size, 1)
    total = 0
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            check_member_names(infos, path)
            for info in infos:
                dest = target.joinpath(*PurePosixPath(info.filename).parts)
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(dest, "wb") as dst:
                    for chunk in iter(lambda: src.read(_CHUNK), b""):
                        total += len(chunk)
                        _check_unpacked(total, archive_bytes, path)
                        dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BundleError(f"the zip is damaged ({exc})", path) from None
    except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encrypted members
        raise BundleError(f"the zip cannot be unpacked ({exc})", path) from None


def _check_unpacked(total, archive_bytes, path):
    if total > MAX_UNPACKED_BYTES:
        raise BundleError(f"the zip unpacks to more than {_size_text(MAX_UNPACKED_BYTES)}", path)
    if total > RATIO_FLOOR_BYTES and total > MAX_COMPRESSION_RATIO * archive_bytes:
        raise BundleError(f"the zip unpacks to more than {MAX_COMPRESSION_RATIO} times its size "
                          f"({_size_text(archive_bytes)} -> over {_size_text(total)}): a zip bomb, not a bundle", path)
