"""Every file kneeseg writes goes through here: a temporary name beside the target, then a rename.

- :func:`atomic_path` yields the temporary path; on success it is renamed onto the target, on any
  failure it is removed, so a reader sees the old file or the whole new one, never a part.
- Temporary names start with :data:`TEMP_PREFIX` (hidden files): input expansion never takes
  them for cases, and :func:`remove_stale_temps` clears the ones a killed run left behind.
- A failed write becomes an :class:`~kneeseg.errors.OutputError` naming the target and the cause
  in plain words; a full disk says "no space left on device". ITK's NIfTI writer reports no error
  when the disk fills up (it leaves a truncated file), so a write after which less than
  :data:`MIN_FREE_BYTES` are left on the file system is treated as one that ran out of space.
- :func:`fault_point` is a seam called before every step of every write (create a temporary file,
  rename, remove); tests install a hook with :func:`inject_faults` to fail or "kill" there.
"""

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputError

TEMP_PREFIX = ".kneeseg-tmp-"
MIN_FREE_BYTES = 1 << 20

_fault_hook = None


def fault_point(step: str, path) -> None:
    """Called before each step of a write: "write" (a temporary file is made and filled), "rename"
    (a finished temporary file replaces its target), "remove" (an old output is removed)."""
    if _fault_hook is not None:
        _fault_hook(step, Path(path))


@contextlib.contextmanager
def inject_faults(hook):
    """Install ``hook(step, path)`` at every :func:`fault_point` for the duration (tests)."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    try:
        yield
    finally:
        _fault_hook = previous


def temp_path_for(path: Path) -> Path:
    """A new, empty, hidden temporary file beside ``path`` that keeps its suffixes (writers go by them)."""
    name = path.name if len(path.name) <= 120 else "".join(path.suffixes)[-40:]
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f"-{name}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffixes); rename it onto ``path`` on success.

    Any failure removes the temporary file; an ``OSError`` (also one of the writer inside the
    block) becomes an :class:`OutputError` naming ``path``. Writers that raise something else
    (SimpleITK's ``RuntimeError``) map it with :func:`write_error` themselves.
    """
    path = Path(path)
    tmp = None
    try:
        fault_point("write", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(path)
        yield tmp
        check_space_left(path)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
        fault_point("rename", path)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.remove(tmp)


def write_error(path, exc) -> OutputError:
    """The :class:`OutputError` for a failed write of ``path`` (an OSError or a SimpleITK error)."""
    path = Path(path)
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space left on device" in str(exc):
        return OutputError("cannot write: no space left on device", path)
    if code in _ERRNO_WORDS:
        return OutputError(f"cannot write: {_ERRNO_WORDS[code]}", path)
    if _nearly_full(path.parent):  # ITK's writers often say only "trouble" or "fwrite wrote only ..."
        return OutputError("cannot write: no space left on device", path)
    if isinstance(exc, OSError):
        return OutputError(f"cannot write: {(exc.strerror or type(exc).__name__).lower()}", path)
    from .itk_messages import plain_reason

    return OutputError(f"cannot write: {plain_reason(exc)}", path)


_ERRNO_WORDS = {errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
                errno.ENAMETOOLONG: "file name too long", errno.EISDIR: "it is a folder",
                errno.ENOTDIR: "a part of the path is a file, not a folder"}


def free_bytes(folder) -> int:
    """Bytes this process may still write on ``folder``'s file system."""
    stat = os.statvfs(folder)
    blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail  # root may use the reserved blocks
    return blocks * stat.f_frsize


def check_space_left(path: Path):
    """Raise ENOSPC when the write just made left (almost) nothing free: it may have been cut short."""
    if _nearly_full(path.parent):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _nearly_full(folder) -> bool:
    try:
        return free_bytes(folder) < MIN_FREE_BYTES
    except OSError:
        return False


def remove_stale_temps(folder) -> list:
    """Remove the temporary files a killed run left in ``folder``; returns their names."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if is_temp_name(entry.name) and (entry.is_symlink() or entry.is_file()):
            entry.unlink()
            removed.append(entry.name)
    return sorted(removed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_folder(final) -> Path:
    """A hidden temporary folder beside ``final``, to be filled and renamed onto it, with the permissions a
    folder made there would have (``mkdtemp`` makes it 0700)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    os.chmod(staging, 0o777 & ~_umask())
    return staging


def swap_into_place(staging, final):
    """Rename the folder ``staging`` onto ``final`` (a sibling); a folder already there is moved aside first and
    removed only once the new one is in place, and put back if that rename fails."""
    staging, final = Path(staging), Path(final)
    if not final.exists():
        staging.rename(final)
        return
    old = staging.with_name(staging.name + "-old")  # staging's name is unique: no one else's folder
    final.rename(old)
    try:
        staging.rename(final)
    except BaseException:
        old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)
