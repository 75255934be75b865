"""Outputs: planned against every input before any work, staged under temporary names, committed
with the label map last.

Planning (:func:`check_outputs`, :func:`check_cohort_folder`) resolves every output path and
compares it with every input and with the other outputs *as files*, not as strings: an existing
file by device and inode (so symlinks, hard links, ``..``, relative or absolute spellings and case
variants on case-folding file systems all name the same file), a file still to be made by the
nearest existing folder above it plus the rest of its name (folded where that folder folds case).
An output may not be an input, may not lie inside an input folder (a DICOM series, a cohort's
folder, the model bundle), and two outputs may not be one file.

Staging (:class:`StagedOutputs`) gives each output a hidden temporary file beside it; writers fill
those. :meth:`StagedOutputs.commit` then removes an old label map, renames the side outputs into
place and the label map last: a label map on disk always comes with the side outputs it was made
with, and its presence marks a finished case (cohorts resume by it). :meth:`~StagedOutputs.discard`
removes everything the run wrote.
"""

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, OutputError
from .writing import fault_point, temp_path_for, write_error

LABELMAP_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")  # one file each (.mhd/.nhdr write two)


@dataclass(frozen=True)
class Output:
    """An output the user asked for: the option that named it, its path and the suffixes it may have."""

    option: str
    path: Path
    suffixes: tuple = ()


# --- which file a path names ------------------------------------------------------------------------


def file_identity(path) -> tuple:
    """What makes two paths one file: (device, inode) for an existing file; for one still to be made,
    the nearest existing folder above it (device, inode) and the rest of the name, case-folded where
    that folder's file system ignores case."""
    real = Path(os.path.realpath(path))
    try:
        stat = os.stat(real)
        return ("file", stat.st_dev, stat.st_ino)
    except OSError:
        pass
    rest, folder = [], real
    while True:
        rest.insert(0, folder.name)
        folder = folder.parent
        try:
            stat = os.stat(folder)
            break
        except OSError:
            if folder == folder.parent:
                return ("path", str(real))
    if folds_case(folder):
        rest = [name.casefold() for name in rest]
    return ("new", stat.st_dev, stat.st_ino, tuple(rest))


def folds_case(folder) -> bool:
    """Whether the file system holding ``folder`` (existing) finds names regardless of case: the
    folder's own name (or the nearest ancestor's with letters), case-swapped, names the same folder."""
    folder = Path(os.path.realpath(folder))
    for candidate in (folder, *folder.parents):
        swapped = candidate.name.swapcase()
        if swapped != candidate.name:
            other = candidate.with_name(swapped)
            try:
                return os.path.samefile(candidate, other)
            except OSError:
                return False
    return False


def folder_identities(path) -> dict:
    """(device, inode) of every existing folder that holds ``path`` (its parent, grandparent, ...)."""
    out = {}
    for folder in Path(os.path.realpath(path)).parents:
        with contextlib.suppress(OSError):
            stat = os.stat(folder)
            out[(stat.st_dev, stat.st_ino)] = folder
    return out


def _dir_key(folder):
    stat = os.stat(folder)
    return stat.st_dev, stat.st_ino


# --- planning ---------------------------------------------------------------------------------------


def check_outputs(inputs, outputs, input_folders=()):
    """Refuse, before any work, an output that is badly named, cannot be written, is an input (by
    any spelling or link), lies inside an input folder, or is the same file as another output.

    ``inputs``: paths read by the run (files, DICOM folders, a bundle folder or zip);
    ``input_folders``: more folders nothing may be written into.
    """
    inputs = [Path(p) for p in inputs if p is not None]
    identities = {}
    for path in inputs:
        if path.exists():
            identities.setdefault(file_identity(path), path)
    protected = {}
    for folder in [p for p in inputs if p.is_dir()] + [Path(f) for f in input_folders]:
        with contextlib.suppress(OSError):
            protected.setdefault(_dir_key(folder), folder)
    seen = {}
    holders = {}  # parent folder -> identities of the folders above it (outputs share few folders)
    for out in outputs:
        check_output_name(out)
        ident = file_identity(out.path)
        if ident in identities:
            raise InputError(f"{out.option} {out.path} is the input {identities[ident]} (the same file, by another "
                             "name or a link): inputs are never overwritten; choose another output name")
        parent = str(Path(os.path.realpath(out.path)).parent)
        if parent not in holders:
            holders[parent] = folder_identities(out.path)
        inside = next((protected[k] for k in holders[parent] if k in protected), None)
        if inside is not None:
            raise InputError(f"{out.option} {out.path} lies inside the input folder {inside}: inputs are never "
                             "modified; write the output elsewhere")
        if ident in seen:
            raise InputError(f"{out.option} {out.path} and {seen[ident].option} {seen[ident].path} are the same "
                             "file: give each output its own name")
        seen[ident] = out


def existing_above(path) -> Path | None:
    """The nearest folder above ``path`` that exists (or a file in its place), where ``path`` would be made."""
    parent = Path(path).parent if str(Path(path).parent) else Path(".")
    return next((p for p in (parent, *parent.parents) if p.exists()), None)


def check_output_name(out: Output):
    """The suffix, and a place that can be written: not a folder, an existing folder above it that is writable."""
    path = Path(out.path)
    if out.suffixes and not any(path.name.endswith(s) for s in out.suffixes):
        raise InputError(f"{out.option} must end in {' or '.join(out.suffixes)}", path)
    if path.is_dir():
        raise InputError(f"{out.option} names an existing folder; it needs a file name", path)
    existing = existing_above(path)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise InputError(f"{out.option}: cannot write here (the folder is missing, is a file, or is not writable)",
                         path)


def output_is_folder(inputs, output) -> bool:
    """Whether ``-o OUTPUT`` is a cohort's output folder (else one label map file).

    A name that ends in a label map suffix is a file for one input (a folder of that name is then
    refused by :func:`check_output_name`, rather than silently switching to a cohort); several
    inputs need a folder, and a file-like name for them is refused.
    """
    text, path = str(output), Path(output)
    if text.endswith(("/", os.sep)):
        return True
    looks_like_file = any(path.name.endswith(s) for s in LABELMAP_SUFFIXES + (".nhdr", ".mhd"))
    if len(inputs) == 1:
        return not looks_like_file and path.is_dir()
    if looks_like_file and not path.is_dir():
        raise InputError(f"{len(inputs)} inputs need an output folder, but -o {output} looks like a file name; "
                         "give a folder (e.g. results/)")
    return True


def check_cohort_folder(inputs, output_dir, sources=()):
    """Refuse a cohort output folder that is a file, an input folder, lies inside one, or holds input
    files: outputs would mix with the inputs (and be taken as cases by the next run)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError("-o names a file; a cohort writes into an output folder", output_dir)
    folders = [Path(p) for p in list(inputs) + list(sources) if Path(p).is_dir()]
    target = {**folder_identities(output_dir / "x")}  # the output folder and every folder above it
    for folder in folders:
        with contextlib.suppress(OSError):
            if _dir_key(folder) in target:
                raise InputError(f"the output folder {output_dir} is or lies inside the input folder {folder}: "
                                 "outputs would mix with the inputs; choose a separate output folder")
    if output_dir.exists():
        own = _dir_key(output_dir)
        holder = next((p for p in inputs if Path(p).is_file() and _dir_key(Path(p).resolve().parent) == own), None)
        if holder is not None:
            raise InputError(f"the output folder {output_dir} holds the input {holder}: outputs would mix with the "
                             "inputs; choose a separate output folder")


# --- staging and committing -------------------------------------------------------------------------


@dataclass
class StagedOutputs:
    """One case's outputs under temporary names until :meth:`commit` puts them in place, the marker
    (the label map) last. Plain data, so a cluster worker can stage and the client commit."""

    marker: Path
    temps: dict = field(default_factory=dict)  # final path -> temporary path, in the order made
    made_folders: list = field(default_factory=list)

    def temp(self, final) -> Path:
        """A new hidden temporary file beside ``final`` for a writer to fill."""
        final = Path(final)
        try:
            fault_point("write", final)
            self._make_folders(final.parent)
            tmp = temp_path_for(final)
        except OSError as exc:
            raise write_error(final, exc) from None
        self.temps[final] = tmp
        return tmp

    def commit(self):
        """Remove an old marker, rename the side outputs into place, then the marker.

        If a step fails, the side outputs this commit placed are removed again (they would
        describe a label map that is not there) and the temporary files with them.
        """
        marker = Path(self.marker)
        order = [p for p in self.temps if p != marker] + [marker]
        placed, current = [], marker
        try:
            if os.path.lexists(marker):
                fault_point("remove", marker)
                os.remove(marker)
            for current in order:
                fault_point("rename", current)
                os.replace(self.temps[current], current)
                placed.append(current)
        except BaseException as exc:
            if marker not in placed:
                for final in placed:
                    with contextlib.suppress(OSError):
                        os.remove(final)
            self.discard()
            if isinstance(exc, OSError):
                raise write_error(current, exc) from None
            raise
        self.temps.clear()
        self.made_folders.clear()

    def discard(self):
        """Remove every temporary file, and the folders this run made if they are empty."""
        for tmp in self.temps.values():
            with contextlib.suppress(OSError):
                os.remove(tmp)
        self.temps.clear()
        for folder in reversed(self.made_folders):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self.made_folders.clear()

    def _make_folders(self, folder: Path):
        missing = []
        while not folder.exists():
            missing.insert(0, folder)
            folder = folder.parent
        for path in missing:
            path.mkdir()
            self.made_folders.append(path)


@contextlib.contextmanager
def staging(marker):
    """A :class:`StagedOutputs` that is discarded when the block fails (commit it inside the block,
    or later: a clean exit leaves it staged)."""
    staged = StagedOutputs(Path(marker))
    try:
        yield staged
    except OutputError as exc:  # name the output the user asked for, not its temporary file
        final = next((f for f, t in staged.temps.items() if str(t) == exc.path), None)
        staged.discard()
        if final is None:
            raise
        raise OutputError(exc.reason, final) from None
    except BaseException:
        staged.discard()
        raise


@contextlib.contextmanager
def exclusive_folder(folder):
    """Hold an advisory lock on ``folder`` for a cohort run: a second run into the same folder is
    refused (their summaries would overwrite each other's rows). The lock dies with the process."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock_path = Path(folder) / ".kneeseg-cohort.lock"
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError("another kneeseg cohort is writing into this folder; wait for it to finish",
                             folder) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock_path.unlink()
    finally:
        handle.close()
