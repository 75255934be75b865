"""One contract between the panel and the core (kneeseg.contract), checked against the real CLI.

- the contract's option tables describe exactly what ``kneeseg.cli.build_parser()`` declares;
- every command line the Slicer logic can build parses with the real parser and passes the real
  validators of ``kneeseg segment`` / ``kneeseg train`` (only the heavy work after them is stubbed);
- the 3D option, the defaults and the error kinds agree on both sides.
"""

import argparse
import itertools
import json

import pytest

import kneeseg.bundle
import kneeseg.devices
import kneeseg.workflows.segment
import kneeseg.workflows.train
from kneeseg import cli, contract
from kneeseg.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, InputError

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from KneeSegmentationLib import errors as libErrors  # noqa: E402
from KneeSegmentationLib.logic import (DEVICES, PLANES, KneeSegmentationLogic, SegmentationOptions,  # noqa: E402
                                       TrainingOptions)

# The panel's ranges (KneeSegmentationLib/widget.py parameter node): the ends of each are tried.
PANEL_EPOCHS = (1, 10000)
PANEL_PATIENCE = (0, 1000)
PANEL_WIDTH = (4, 256)


def _subparser(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _describe(action):
    """What a parser action accepts, in comparable terms."""
    if isinstance(action, argparse.BooleanOptionalAction):
        kind = contract.BOOLEAN_OPTIONAL
    elif isinstance(action, argparse._StoreTrueAction):
        kind = contract.STORE_TRUE
    else:
        kind = None
    choices = tuple(action.choices) if action.choices is not None else None
    flags = tuple(action.option_strings) or (action.dest,)
    if kind == contract.BOOLEAN_OPTIONAL:
        flags = tuple(f for f in flags if not f.startswith("--no-"))
    return {"flags": flags, "dest": action.dest, "type": action.type, "default": action.default,
            "choices": choices, "action": kind, "required": action.required, "nargs": action.nargs if kind is None else None}


def _actions(parser):
    return {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}


@pytest.mark.parametrize("command", ["segment", "train"])
def test_the_contract_describes_the_real_parser_exactly(command):
    real = _actions(_subparser(command))
    built = argparse.ArgumentParser()
    contract.add_options(built, command)
    fromContract = _actions(built)
    assert set(fromContract) == set(real), (
        f"kneeseg {command}: options in the CLI but not in kneeseg/contract.py: {sorted(set(real) - set(fromContract))}; "
        f"in the contract but not in the CLI: {sorted(set(fromContract) - set(real))}")
    for dest, action in real.items():
        assert _describe(fromContract[dest]) == _describe(action), f"kneeseg {command} {dest}"
    groups = [{a.dest for a in g._group_actions} for g in _subparser(command)._mutually_exclusive_groups]
    assert groups == [{a.dest for a in g._group_actions} for g in built._mutually_exclusive_groups]


def test_command_line_refuses_what_the_parser_would():
    with pytest.raises(ValueError, match="--device takes one of auto, cpu, gpu"):
        contract.command_line("segment", inputs=["a.nrrd"], output="b.nrrd", device="tpu")
    with pytest.raises(ValueError, match="needs --output"):
        contract.command_line("segment", inputs=["a.nrrd"])
    with pytest.raises(ValueError, match="no option 'width'"):
        contract.command_line("train", data="d", output="o", width=8)
    with pytest.raises(ValueError, match="exactly one of --synthetic or --data"):
        contract.command_line("train", output="o")
    with pytest.raises(ValueError, match="exactly one of"):
        contract.command_line("train", output="o", data="d", synthetic="s")
    with pytest.raises(ValueError, match="whole number"):
        contract.command_line("train", output="o", data="d", epochs=2.5)
    with pytest.raises(ValueError, match="on or off"):
        contract.command_line("segment", inputs=["a"], output="b", n4="yes")
    assert contract.command_line("segment", inputs=["a"], output="b", n4=False, overwrite=False) == \
        ["segment", "a", "--output", "b", "--no-n4"]


# ---------------------------------------------------------------------------------------------
# every command line the logic builds, through the real parser and validators


@pytest.fixture
def logic(tmp_path):
    return KneeSegmentationLogic(scene=slicer.vtkMRMLScene(), python="python", tempDir=str(tmp_path))


def _segmentationOptions():
    planeSets = [p for n in range(len(PLANES) + 1) for p in itertools.combinations(PLANES, n)]
    for device, n4, planes in itertools.product(DEVICES, (None, True, False), planeSets):
        yield SegmentationOptions(n4=n4, planes=planes, device=device)


def _trainingOptions():
    for outputMode, augmentation, epochs, patience, width, dims in itertools.product(
            contract.OUTPUT_MODES, (True, False), PANEL_EPOCHS, PANEL_PATIENCE, PANEL_WIDTH, contract.TRAINABLE_DIMS):
        yield TrainingOptions(epochs=epochs, patience=patience, dims=dims, outputMode=outputMode, width=width,
                              augmentation=augmentation)


class _Reached(Exception):
    """Raised by the stubbed heavy step: everything before it (parsing, validation) has passed."""


def _argv(command):
    assert command[:3] == ["python", "-m", "kneeseg"]
    return command[3:]


def test_every_segmentation_command_line_passes_the_real_parser_and_validators(logic, tmp_path, monkeypatch, capsys):
    image = tmp_path / "input.nrrd"
    image.write_bytes(b"")
    reached = []

    def loadBundle(model):
        reached.append(model)
        raise _Reached(model)

    monkeypatch.setattr(kneeseg.bundle, "load_bundle", loadBundle)
    monkeypatch.setattr(kneeseg.devices, "gpu_visible", lambda: True)  # the panel may offer gpu: reach the paths
    options = list(_segmentationOptions())
    assert len(options) == len(DEVICES) * 3 * 2 ** len(PLANES)
    for o in options:
        argv = _argv(logic.segmentationCommand(image, tmp_path / "labels.nrrd", tmp_path / "bundle", o,
                                               tmp_path / "volumes.json"))
        args = cli.build_parser().parse_args(argv)
        assert (args.device, args.n4, args.progress) == (o.device, o.n4, "json")
        segmentOptions = cli._segment_options(args)  # the real validators of the options
        assert tuple(segmentOptions.planes or ()) == tuple(o.planes)
        assert cli.main(argv) == EXIT_INTERNAL  # ... and of the paths; then the stub stops it
        assert reached.pop() == str(tmp_path / "bundle")
    capsys.readouterr()


def test_every_training_command_line_passes_the_real_parser_and_validators(logic, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    configs = []
    monkeypatch.setattr(kneeseg.workflows.train, "train_bundle",
                        lambda config, output, work, **kwargs: configs.append((config, kwargs)) or {"bundle": output})
    for o in _trainingOptions():
        argv = _argv(logic.trainingCommand(data, tmp_path / "bundle", o))
        assert cli.main(argv) == EXIT_OK, argv
        config, kwargs = configs.pop()
        assert (config.recipe.epochs, config.recipe.patience, config.network.dims, config.network.output,
                config.network.filters, config.recipe.augment) == \
            (o.epochs, o.patience, o.dims, o.outputMode, o.width, o.augmentation)
        assert kwargs["data"] == str(data) and kwargs["progress"].mode == "json"
    capsys.readouterr()


def test_only_the_dimensions_the_cli_trains_are_offered(tmp_path, monkeypatch, capsys):
    """Each --dims the parser accepts either trains (TRAINABLE_DIMS) or is refused as bad input."""
    monkeypatch.setattr(kneeseg.workflows.train, "train_bundle", lambda *a, **k: {})
    trains = []
    for dims in contract.option("train", "dims").choices:
        rc = cli.main(["train", "--data", str(tmp_path), "-o", str(tmp_path / "b"), "--dims", str(dims)])
        assert rc in (EXIT_OK, EXIT_BAD_INPUT)
        if rc == EXIT_OK:
            trains.append(dims)
    capsys.readouterr()
    assert tuple(trains) == contract.TRAINABLE_DIMS
    for dims in set(contract.option("train", "dims").choices) - set(contract.TRAINABLE_DIMS):
        with pytest.raises(libErrors.KneeSegmentationError, match="cannot"):
            TrainingOptions(dims=dims).check()


def test_the_logic_defaults_are_the_cli_defaults():
    options = TrainingOptions()
    for field, dest in (("epochs", "epochs"), ("patience", "patience"), ("dims", "dims"),
                        ("outputMode", "output_mode"), ("width", "filters")):
        assert getattr(options, field) == contract.option("train", dest).default, field
    assert options.augmentation is not contract.option("train", "no_augment").default
    assert contract.option("train", "patience").default == 9
    assert SegmentationOptions().device == contract.option("segment", "device").default


# ---------------------------------------------------------------------------------------------
# progress lines and error kinds


def test_error_kinds_and_the_missing_package_event():
    assert contract.error_kind(InputError("bad")) == contract.ERROR_INPUT
    assert contract.error_kind(KeyboardInterrupt()) == contract.ERROR_CANCELLED
    assert contract.error_kind(RuntimeError("x")) == contract.ERROR_INTERNAL
    missing = ModuleNotFoundError("No module named 'tensorflow.keras'", name="tensorflow.keras")
    assert contract.error_kind(missing) == contract.ERROR_MISSING_PACKAGE
    assert contract.error_fields(missing) == {"package": "tensorflow"}
    assert contract.error_fields(RuntimeError("x")) == {}
    assert set(contract.EXIT_CODE_OF_ERROR) == set(contract.ERROR_KINDS)
    line = json.dumps({"stage": contract.STAGE_ERROR, "fraction": 0.1, "message": "m",
                       "error": contract.ERROR_MISSING_PACKAGE, **contract.error_fields(missing)})
    event = contract.parse_progress_line(line)
    assert event["error"] == "missing-package" and event["package"] == "tensorflow"


def test_the_progress_writer_writes_what_the_parser_reads():
    import io

    from kneeseg.progress import Progress

    out = io.StringIO()
    progress = Progress("json", stdout=out, stderr=io.StringIO())
    progress("predict", 0.5, "half", epoch=3, logs={"loss": 0.1})
    progress.done("ok", {"labelmap": "x.nrrd"})
    progress.error("bad file", contract.ERROR_INPUT)
    events = [contract.parse_progress_line(line) for line in out.getvalue().splitlines()]
    assert [e["stage"] for e in events] == ["predict", contract.STAGE_DONE, contract.STAGE_ERROR]
    assert events[0]["epoch"] == 3 and events[1]["result"] == {"labelmap": "x.nrrd"}
    assert events[2]["error"] in contract.ERROR_KINDS


def test_the_cli_reports_a_missing_package_itself(tmp_path, monkeypatch, capsys):
    image = tmp_path / "input.nrrd"
    image.write_bytes(b"")

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    monkeypatch.setattr(kneeseg.workflows.segment, "segment_file", missing)
    rc = cli.main(["segment", str(image), "-o", str(tmp_path / "out.nrrd"), "--progress", "json"])
    lines = [contract.parse_progress_line(line) for line in capsys.readouterr().out.splitlines()]
    error = [line for line in lines if line and line["stage"] == contract.STAGE_ERROR][-1]
    assert rc == contract.EXIT_CODE_OF_ERROR[contract.ERROR_MISSING_PACKAGE]
    assert error["error"] == contract.ERROR_MISSING_PACKAGE and error["package"] == "onnxruntime"
