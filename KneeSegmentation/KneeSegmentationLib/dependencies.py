"""Python packages the core needs inside Slicer: detect what is missing, install it safely.

Slicer ships numpy, SimpleITK and vtk built for it; replacing them breaks Slicer. So installs pass a
pip constraints file that pins the installed numpy and SimpleITK (pip then fails with a clear
conflict instead of upgrading them), and vtk is never requested. Installation goes through
``slicer.packaging.pip_ensure`` where the Slicer version has it, else ``slicer.util.pip_install``.
TensorFlow's GPU build (``tensorflow[and-cuda]``, CUDA libraries included) is offered only where a
working NVIDIA GPU is found (``nvidia-smi -L`` lists one, on Linux); everywhere else the CPU build.

The widget asks the user first (with the list and download sizes from :func:`describeMissing`);
nothing here opens a dialog.
"""

import functools
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DEPENDENCY, KneeSegmentationError

PROTECTED = ("numpy", "SimpleITK", "vtk")  # shipped by Slicer: never upgraded or replaced


@dataclass(frozen=True)
class Package:
    name: str  # distribution name on PyPI
    module: str  # import name
    requirement: str  # pip requirement string
    downloadMB: int  # approximate download size (wheel), for the confirmation dialog
    purpose: str


REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"


def requirements(path=REQUIREMENTS_FILE) -> dict:
    """{distribution name: requirement} of ``Resources/requirements.txt`` that apply to this platform."""
    from packaging.requirements import Requirement  # noqa: PLC0415 (ships with Slicer)

    found = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate():
                found[requirement.name] = f"{requirement.name}{requirement.specifier}"
    return found


def _package(name, module, downloadMB, purpose) -> Package:
    return Package(name, module, requirements()[name], downloadMB, purpose)


GPU_TENSORFLOW = "tensorflow[and-cuda]"  # TensorFlow with its CUDA libraries from pip (Linux only)
GPU_PLATFORMS = ("Linux",)  # TensorFlow >= 2.11 has no native GPU build for Windows or macOS


def nvidiaGpuPresent(which=shutil.which, run=subprocess.run) -> bool:
    """True when ``nvidia-smi`` exists, runs and lists at least one GPU (driver installed and working)."""
    executable = which("nvidia-smi")
    if not executable:
        return False
    try:
        result = run([executable, "-L"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and any(line.startswith("GPU ") for line in result.stdout.splitlines())


@functools.lru_cache(maxsize=1)
def _gpuHere() -> bool:
    return platform.system() in GPU_PLATFORMS and nvidiaGpuPresent()


def _tensorflowPackage(gpu=None) -> Package:
    """TensorFlow as ``Resources/requirements.txt`` names it (the CPU build on x86-64), or its GPU build
    (same version range, CUDA libraries included) where a working NVIDIA GPU is found on Linux.
    ``gpu``: the result of that check (default: run it, once)."""
    name = next(n for n in requirements() if n.startswith("tensorflow"))
    if gpu is None:
        gpu = _gpuHere()
    if gpu:
        specifier = requirements()[name][len(name):]
        return Package("tensorflow", "tensorflow", GPU_TENSORFLOW + specifier, 600,
                       "runs and trains the U-Net on the NVIDIA GPU found here (CUDA libraries included)")
    return _package(name, "tensorflow", 260, "runs and trains the U-Net (CPU build: no NVIDIA GPU was found)")


CORE = (
    _package("scipy", "scipy", 38, "image post-processing"),
    _package("pillow", "PIL", 5, "image utilities"),
)
KERAS = _package("keras", "keras", 2, "model format")
ONNXRUNTIME = _package("onnxruntime", "onnxruntime", 16, "light inference without TensorFlow")


def isInstalled(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def requiredPackages(bundlePath=None, training=False, installed=None, gpu=None) -> list:
    """Packages the core needs for segmenting with ``bundlePath`` (or for training).

    A bundle that carries ``model.onnx`` runs with onnxruntime alone; otherwise (and for training)
    TensorFlow and Keras are needed: its GPU build only where ``gpu`` (default: an NVIDIA GPU is found).
    """
    packages = list(CORE)
    tensorflow = [_tensorflowPackage(gpu), KERAS]
    if training:
        return packages + tensorflow
    installed = installed or isInstalled
    hasOnnx = bundlePath is not None and (Path(bundlePath) / "model.onnx").is_file()
    if hasOnnx and not (installed("tensorflow") and installed("keras")):
        return packages + [ONNXRUNTIME]
    return packages + tensorflow


def missingPackages(bundlePath=None, training=False, installed=None, gpu=None) -> list:
    installed = installed or isInstalled
    return [p for p in requiredPackages(bundlePath, training, installed, gpu) if not installed(p.module)]


def describeMissing(packages) -> str:
    """Plain text for the confirmation dialog: one line per package with its size, then the total."""
    lines = [f"- {p.name} (about {p.downloadMB} MB download): {p.purpose}" for p in packages]
    total = sum(p.downloadMB for p in packages)
    lines.append(f"Total: about {total} MB to download (installed size is larger).")
    lines.append("Packages Slicer ships (numpy, SimpleITK, vtk) are not changed.")
    return "\n".join(lines)


OFFLINE_HELP = (
    "Slicer could not reach the Python Package Index (pypi.org), so the packages cannot be installed now.\n"
    "- Check the internet connection or proxy (set HTTPS_PROXY before starting Slicer).\n"
    "- Offline: on a computer with internet, download the wheels for this Slicer's Python "
    "({python}, {system}) with\n    pip download {requirements} -d wheels\n"
    "  then copy the 'wheels' folder here and run in Slicer's Python console:\n"
    "    slicer.util.pip_install('--no-index --find-links /path/to/wheels {requirements}')\n"
    "Segmentation needs these packages; nothing was changed."
)


def offlineMessage(packages) -> str:
    requirements = " ".join(p.requirement for p in packages)
    return OFFLINE_HELP.format(python=platform.python_version(), system=f"{platform.system()} {platform.machine()}",
                               requirements=requirements)


def pypiReachable(host="pypi.org", port=443, timeout=3.0) -> bool:
    if os.environ.get("PIP_NO_INDEX") or os.environ.get("PIP_FIND_LINKS"):
        return True  # installing from a local wheel folder
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return bool(os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"))


def constraintsText() -> str:
    """pip constraints pinning the protected packages at their installed versions."""
    lines = []
    for name in PROTECTED:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue  # not pip-managed here (e.g. Slicer's vtk): nothing we install requires it
    return "\n".join(lines) + "\n"


def _installers():
    """(pip_ensure, pip_install) from Slicer, whichever exist (pip_ensure is Slicer >= 5.10)."""
    ensure = install = None
    try:
        import slicer.packaging as packaging  # noqa: PLC0415

        ensure = getattr(packaging, "pip_ensure", None)
        install = getattr(packaging, "pip_install", None)
    except ImportError:
        pass
    if install is None:
        try:
            import slicer.util  # noqa: PLC0415

            install = getattr(slicer.util, "pip_install", None)
        except ImportError:
            pass
    return ensure, install


def install(packages, log=print, pipEnsure=None, pipInstall=None, checkOnline=pypiReachable) -> None:
    """Install ``packages`` without touching numpy/SimpleITK/vtk; raise a clear error on failure.

    ``pipEnsure``/``pipInstall`` default to Slicer's; tests inject fakes.
    """
    packages = [p for p in packages if p.name not in PROTECTED]
    if not packages:
        return
    if not checkOnline():
        raise KneeSegmentationError(offlineMessage(packages), DEPENDENCY)
    if pipEnsure is None and pipInstall is None:
        pipEnsure, pipInstall = _installers()
    if pipEnsure is None and pipInstall is None:
        raise KneeSegmentationError(
            "This Python has no Slicer package installer. Install with: python -m pip install "
            + " ".join(p.requirement for p in packages), DEPENDENCY)
    fd, constraints = tempfile.mkstemp(prefix="KneeSegmentation-constraints-", suffix=".txt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(constraintsText())
        log("Installing " + ", ".join(p.requirement for p in packages) + " ...")
        try:
            if pipEnsure is not None:
                from packaging.requirements import Requirement  # noqa: PLC0415 (ships with Slicer)

                pipEnsure([Requirement(p.requirement) for p in packages], constraints=constraints,
                          prompt_install=False, requester="KneeSegmentation")
            else:
                pipInstall([p.requirement for p in packages] + ["-c", constraints])
        except Exception as exc:  # CalledProcessError, RuntimeError from Slicer's installer
            raise KneeSegmentationError(
                "Installing the Python packages failed: " + str(exc).splitlines()[0]
                + "\nThe full pip output is in Slicer's Python console. If the error names numpy or "
                "SimpleITK, this Slicer's versions are too old for the packages: use a newer Slicer.",
                DEPENDENCY) from exc
    finally:
        os.remove(constraints)
    importlib.invalidate_caches()
    still = [p.name for p in packages if not isInstalled(p.module)]
    if still:
        raise KneeSegmentationError("Installation finished but these packages cannot be imported: "
                                    + ", ".join(still) + ". Restart Slicer and try again.", DEPENDENCY)
    log("Python packages installed.")


def declinedMessage(packages) -> str:
    return ("KneeSegmentation needs these Python packages and cannot run without them:\n"
            + describeMissing(packages)
            + "\nClick Apply again to be asked again, or install them from Slicer's Python console with\n"
            + "    slicer.util.pip_install('" + " ".join(p.requirement for p in packages) + "')")
