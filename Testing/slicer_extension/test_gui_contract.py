"""The GUI and packaging contract, checked without Qt or Slicer (so they run in CI too).

test_panel.py runs the panel itself under real Qt where Slicer's Python layer is at hand; these tests
read the files the way Slicer and CMake will: the ``.ui`` must be valid Qt Designer XML naming every widget the module uses; widgets
bound to the parameter node must have a type the parameterNodeWrapper can connect; CMake must list
every file of the module (a file missing from the lists would be missing from the installed
extension); the logic layer must not import Qt.
"""

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "KneeSegmentation"
UI_FILE = MODULE / "Resources" / "UI" / "KneeSegmentation.ui"
MODULE_PY = MODULE / "KneeSegmentation.py"
WIDGET_PY = MODULE / "KneeSegmentationLib" / "widget.py"
GUI_MODULES = ("widget.py", "statistics.py", "sampledata.py")  # the Lib's Qt side; the rest is headless
TERM_FILE = MODULE / "Resources" / "Terminology" / "KneeSegmentation.term.json"

QT_CLASSES = {  # standard Qt widgets/layouts the .ui may use without a <customwidget> entry
    "QWidget", "QLabel", "QPushButton", "QCheckBox", "QRadioButton", "QComboBox", "QSpinBox", "QDoubleSpinBox",
    "QLineEdit", "QPlainTextEdit", "QTextEdit", "QProgressBar", "QTableWidget", "QListWidget", "QGroupBox",
    "QFrame", "QToolButton", "QSlider", "QSplitter", "QTabWidget", "QScrollArea", "QStackedWidget", "QTextBrowser",
}
# Widget class -> types the parameterNodeWrapper's GUI connectors accept (Slicer parameterNodeWrapper/guiConnectors.py)
CONNECTABLE = {
    "QCheckBox": {"bool"},
    "QPushButton": {"bool"},
    "QSpinBox": {"int"},
    "QSlider": {"int"},
    "QDoubleSpinBox": {"float"},
    "ctkSliderWidget": {"float"},
    "QLineEdit": {"str"},
    "QTextEdit": {"str"},
    "QComboBox": {"str", "int", "float", "bool"},  # with a Choice annotation (or an Enum)
    "ctkPathLineEdit": {"Path", "pathlib.Path"},
    "ctkDirectoryButton": {"Path", "pathlib.Path"},
    "qMRMLNodeComboBox": {"node"},
}


def uiTree():
    return ET.parse(UI_FILE).getroot()


def uiWidgets():
    return {w.get("name"): w for w in uiTree().iter("widget")}


def moduleTree():
    return ast.parse(MODULE_PY.read_text(), filename=str(MODULE_PY))


def widgetTree():
    return ast.parse(WIDGET_PY.read_text(), filename=str(WIDGET_PY))


# ---------------------------------------------------------------------------------------------
# .ui


def test_ui_is_valid_qt_designer_xml():
    root = uiTree()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    assert root.find("class").text == top.get("name") == "KneeSegmentation"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    layouts = [l.get("name") for l in root.iter("layout")]
    assert len(layouts) == len(set(layouts)), "layout names must be unique"
    custom = {c.find("class").text: c for c in root.find("customwidgets")}
    for cls, c in custom.items():
        assert c.find("extends").text and c.find("header").text == f"{cls}.h"
    used = {w.get("class") for w in root.iter("widget")}
    assert used - QT_CLASSES <= set(custom), f"undeclared custom widgets: {used - QT_CLASSES - set(custom)}"
    assert set(custom) <= used, "declared custom widgets that are not used"
    # every item of a grid/form layout has a row and column; every widget/layout/spacer sits in an item
    for layout in root.iter("layout"):
        for item in layout.findall("item"):
            assert len(list(item)) == 1 and list(item)[0].tag in ("widget", "layout", "spacer")
            if layout.get("class") in ("QFormLayout", "QGridLayout"):
                assert item.get("row") is not None and item.get("column") is not None


def test_ui_gives_the_scene_to_every_mrml_widget():
    root = uiTree()
    needsScene = {w.get("name") for w in root.iter("widget")
                  if w.get("class") in ("qMRMLNodeComboBox", "qMRMLPlotWidget", "qMRMLTableView")}
    connected = set()
    names = set(uiWidgets())
    for c in root.find("connections"):
        assert c.find("sender").text in names and c.find("receiver").text in names
        if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)" and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)":
            connected.add(c.find("receiver").text)
    assert needsScene <= connected, f"no scene for {needsScene - connected}"


def test_ui_has_the_panels_the_issue_asks_for():
    w = uiWidgets()
    cls = {name: e.get("class") for name, e in w.items()}
    assert cls["inputVolumeSelector"] == "qMRMLNodeComboBox"
    assert cls["outputSegmentationSelector"] == "qMRMLNodeComboBox"
    for name in ("modelSelector", "loadModelButton", "modelSummaryLabel", "modelCardGroupBox", "n4CheckBox",
                 "sagittalCheckBox", "coronalCheckBox", "axialCheckBox", "deviceComboBox", "applyButton", "progressBar",
                 "stageLabel", "logTextEdit", "show3DButton", "volumesTableView", "trainingCollapsibleButton",
                 "dataFolderPathLineEdit", "pairVolumeSelector", "pairSegmentationSelector", "bonesComboBox",
                 "widthSpinBox", "epochsSpinBox", "patienceSpinBox", "augmentationCheckBox", "outputBundlePathLineEdit",
                 "trainButton", "trainingPlotWidget"):
        assert name in w, name
    training = w["trainingCollapsibleButton"]
    assert training.get("class") == "ctkCollapsibleButton"
    collapsed = [p for p in training.findall("property") if p.get("name") == "collapsed"]
    assert collapsed and collapsed[0].find("bool").text == "true", "the training section starts collapsed"
    assert cls["show3DButton"] == "qMRMLSegmentationShow3DButton" and cls["volumesTableView"] == "qMRMLTableView"
    assert "dimsComboBox" not in w, "the CLI trains 2D models only (kneeseg.contract.TRAINABLE_DIMS)"
    for name in ("modelCardGroupBox", "advancedGroupBox", "logGroupBox"):
        props = {p.get("name"): p for p in w[name].findall("property")}
        assert props["collapsed"].find("bool").text == "true", f"{name} starts collapsed"
    output = w["outputSegmentationSelector"]
    props = {p.get("name"): p for p in output.findall("property")}
    assert props["noneEnabled"].find("bool").text == "true"
    assert "new" in props["noneDisplay"].find("string").text.lower(), "output defaults to a new segmentation"


# ---------------------------------------------------------------------------------------------
# module <-> .ui


def _uiAttributes(tree):
    """Names X in ``<anything>.ui.X`` (self.ui.X, widget.ui.X) in the module source."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            names.add(node.attr)
    return names


def _getattrUiNames(tree):
    """String constants passed as names to getattr(self.ui, name) loops."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple):
            body = ast.unparse(node)
            if "getattr(self.ui," in body:
                names |= {e.value for e in node.iter.elts if isinstance(e, ast.Constant)}
    return names


def test_every_widget_the_panel_uses_exists_in_the_ui():
    tree = widgetTree()
    used = _uiAttributes(tree) | _getattrUiNames(tree)
    assert len(used) > 20
    missing = used - set(uiWidgets())
    assert not missing, f"the panel uses widgets the .ui lacks: {sorted(missing)}"


def _parameterNodeClass(tree):
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list):
            return node
    raise AssertionError("no @parameterNodeWrapper class in KneeSegmentationLib/widget.py")


def _fields(cls):
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            fields[stmt.target.id] = (ast.unparse(stmt.annotation), stmt.value)
    return fields


def _baseType(annotation: str) -> str:
    m = re.match(r"Annotated\[(\w+(?:\.\w+)?)", annotation)
    base = m.group(1) if m else annotation
    return "node" if base.startswith("vtkMRML") else base


def _enums(tree):
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef) and any(ast.unparse(b) == "enum.Enum" for b in n.bases)}


def test_bound_widgets_match_the_parameter_node():
    tree = widgetTree()
    fields = _fields(_parameterNodeClass(tree))
    enums = _enums(tree)
    bound = {}
    for name, w in uiWidgets().items():
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                assert p.get("stdset") == "0", "a dynamic property needs stdset=0"
                bound[p.find("string").text] = (name, w.get("class"))
    assert len(bound) >= 12
    for param, (widget, cls) in bound.items():
        assert param in fields, f"{widget} is bound to unknown parameter {param!r}"
        annotation, default = fields[param]
        base = _baseType(annotation)
        if cls == "QComboBox" and base in enums:
            continue  # an Enum: the combo box lists its labels
        assert base in CONNECTABLE[cls], f"{widget} ({cls}) cannot show a {annotation}"
        if cls == "QComboBox":
            m = re.search(r"Choice\((\[.*?\])\)", annotation)
            assert m, f"{param}: a QComboBox-bound {base} needs a Choice annotation"
            choices = ast.literal_eval(m.group(1))
            assert default is not None and ast.literal_eval(default) in choices
        if cls == "QSpinBox":
            assert "WithinRange" in annotation, f"{param}: give the spin box a range"
    assert len(set(w for w, _ in bound.values())) == len(bound), "one widget per parameter"


def test_parameter_node_defaults_are_valid():
    """Literal defaults here; those taken from the CLI (TrainingOptions) are checked in test_panel/test_contract."""
    tree = widgetTree()
    fields = _fields(_parameterNodeClass(tree))
    for name, (annotation, default) in fields.items():
        base = _baseType(annotation)
        if default is None:
            assert base == "node" or annotation.startswith("list["), f"{name} needs a default"
            continue
        if base in _enums(tree):
            assert ast.unparse(default).startswith(base), f"{name}: the default must be a {base}"
            continue
        try:
            value = ast.literal_eval(default)
        except ValueError:
            assert "_TRAINING." in ast.unparse(default), f"{name}: a default is a literal or the CLI's"
            continue
        assert type(value).__name__ == base, f"{name}: default {value!r} is not a {base}"
        m = re.search(r"WithinRange\((\d+), (\d+)\)", annotation)
        if m:
            assert int(m.group(1)) <= value <= int(m.group(2))


# ---------------------------------------------------------------------------------------------
# module metadata, icon


def _moduleInit(tree):
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KneeSegmentation")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    values = {}
    for stmt in init.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Attribute):
            values[stmt.targets[0].attr] = stmt.value
    return values


def _translated(node):
    """The string inside ``_("...")`` (or ``_("...").format(...)``)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        node = node.func.value
    assert isinstance(node, ast.Call) and ast.unparse(node.func) == "_", f"not translatable: {ast.unparse(node)}"
    return ast.literal_eval(node.args[0])


def test_module_metadata():
    tree = moduleTree()
    values = _moduleInit(tree)
    assert _translated(values["title"]) == "Knee Segmentation"
    assert ast.unparse(values["categories"]) == "[translate('qSlicerAbstractCoreModule', 'Segmentation')]"
    assert ast.literal_eval(values["contributors"])
    helpText = _translated(values["helpText"])
    assert "{readme}" in helpText and "_readmeLink()" in ast.unparse(values["helpText"])
    assert "For research use only; not a medical device and not for diagnosis." in helpText
    readme = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_readmeLink")
    assert '#readme">README</a>' in ast.unparse(readme)
    ack = _translated(values["acknowledgementText"])
    assert "2017" in ack and "bachelor thesis" in ack and "THESIS" in ast.unparse(values["acknowledgementText"])
    thesis = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "THESIS")
    assert ast.literal_eval(thesis.value) == "Semantic Segmentation of human knees using CNNs"
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModuleTest" in classes["KneeSegmentationTest"]
    assert classes["KneeSegmentationWidget"] == ["ScriptedLoadableModuleWidget"], "one base: no double initialisation"
    assert "ScriptedLoadableModuleLogic" in classes["KneeSegmentationLogic"]
    test = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KneeSegmentationTest")
    methods = {n.name for n in test.body if isinstance(n, ast.FunctionDef)}
    assert {"runTest", "setUp"} <= methods and len([m for m in methods if m.startswith("test_")]) >= 2
    source = MODULE_PY.read_text()
    assert "SKIPPED" not in source and "skip" not in source.lower(), "the self-test fails rather than skips"


def test_user_visible_strings_are_translatable():
    """Texts the panel sets (button labels, messages, tooltips) go through _() (slicer.i18n)."""
    for tree in (widgetTree(), moduleTree()):
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute) and \
                    node.targets[0].attr in ("text", "toolTip", "title", "windowTitle"):
                markup = {id(c) for f in ast.walk(node.value) if isinstance(f, ast.JoinedStr) for c in ast.walk(f)}
                for const in ast.walk(node.value):  # f-strings compose markup and translated parts
                    if isinstance(const, ast.Constant) and isinstance(const.value, str) and id(const) not in markup:
                        parent = next((c for c in ast.walk(node.value) if isinstance(c, ast.Call) and
                                       ast.unparse(c.func) == "_" and const in ast.walk(c)), None)
                        assert parent is not None or not any(ch.isalpha() for ch in const.value), \
                            f"untranslated text {const.value!r} at line {node.lineno}"


def test_requirements_file_is_what_the_dependency_check_installs():
    from KneeSegmentationLib import dependencies

    listed = dependencies.requirements()
    packages = dependencies.requiredPackages(training=True) + [dependencies.ONNXRUNTIME]
    assert {p.name: p.requirement for p in packages} == listed
    for package in packages:
        assert package.name not in dependencies.PROTECTED


def test_icon_is_a_128_pixel_png():
    data = (MODULE / "Resources" / "Icons" / "KneeSegmentation.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


# ---------------------------------------------------------------------------------------------
# CMake lists every file


def _cmakeLists(path, moduleName="KneeSegmentation"):
    """Items of each set(VAR ...) and the patterns of file(GLOB[_RECURSE] VAR ... ) in a CMakeLists.txt."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    sets, globs = {}, {}
    for var, body in re.findall(r"set\(\s*(\w+)\s+(.*?)\)", text, re.S):
        sets[var] = [t.replace("${MODULE_NAME}", moduleName) for t in body.split()]
    for kind, var, body in re.findall(r"file\(\s*(GLOB_RECURSE|GLOB)\s+(\w+)\s+(.*?)\)", text, re.S):
        patterns = [t.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for t in body.split()
                    if t not in ("RELATIVE", "${CMAKE_CURRENT_SOURCE_DIR}", "CONFIGURE_DEPENDS", "LIST_DIRECTORIES", "false")]
        globs[var] = (kind, patterns)
    return text, sets, globs


def _expand(items, sets, globs, base):
    """Files named by a list, expanding ${VAR} of other sets and of globs (as CMake would)."""
    files = []
    for item in items:
        m = re.fullmatch(r"\$\{(\w+)\}", item)
        if m and m.group(1) in globs:
            kind, patterns = globs[m.group(1)]
            for pattern in patterns:
                matches = base.rglob(pattern.split("/")[-1]) if kind == "GLOB_RECURSE" else base.glob(pattern)
                prefix = "/".join(pattern.split("/")[:-1])
                files += [p.relative_to(base).as_posix() for p in matches
                          if p.is_file() and p.relative_to(base).as_posix().startswith(prefix)]
        elif m and m.group(1) in sets:
            files += _expand(sets[m.group(1)], sets, globs, base)
        else:
            files.append(item)
    return files


def _moduleFiles():
    """Every file in the module folder that must be installed (not build/test-only files)."""
    files = []
    for p in MODULE.rglob("*"):
        rel = p.relative_to(MODULE)
        if not p.is_file() or "__pycache__" in rel.parts or p.suffix == ".pyc" or any(s.startswith(".") for s in rel.parts):
            continue
        if any(part.endswith(".egg-info") for part in rel.parts):  # written by 'pip install -e .', git-ignored
            continue
        if rel.parts[0] == "Testing" or p.name == "CMakeLists.txt":
            continue
        files.append(rel.as_posix())
    return sorted(files)


def test_cmake_lists_every_file_of_the_module():
    text, sets, globs = _cmakeLists(MODULE / "CMakeLists.txt")
    scripts = _expand(sets["MODULE_PYTHON_SCRIPTS"], sets, globs, MODULE)
    resources = _expand(sets["MODULE_PYTHON_RESOURCES"], sets, globs, MODULE)
    assert len(scripts) == len(set(scripts)) and len(resources) == len(set(resources)), "listed twice"
    for f in scripts:
        assert f.endswith(".py"), f"{f} is listed as a script"
        assert (MODULE / f).is_file(), f"CMake lists {f}, which does not exist"
    for f in resources:
        assert not f.endswith(".py"), f"{f} is a script listed as a resource"
        assert (MODULE / f).is_file(), f"CMake lists {f}, which does not exist"
    listed = set(scripts) | set(resources)
    missing = [f for f in _moduleFiles() if f not in listed]
    assert not missing, ("files of the module that KneeSegmentation/CMakeLists.txt does not list (they would be "
                         f"missing from the installed extension): {missing}")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s+SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}"
                     r"\s+RESOURCES \$\{MODULE_PYTHON_RESOURCES\}\s+WITH_GENERIC_TESTS\s*\)", text)
    assert sets["MODULE_NAME"] == ["KneeSegmentation"]
    assert re.search(r"if\(BUILD_TESTING\)\s+add_subdirectory\(Testing\)\s+endif\(\)", text)


def test_the_cmake_check_notices_a_missing_file(tmp_path, monkeypatch):
    """The check above is not vacuous: an unlisted file in the module folder makes it fail."""
    extra = MODULE / "KneeSegmentationLib" / "_unlisted_for_test.py"
    extra.write_text("")
    try:
        with pytest.raises(AssertionError, match="_unlisted_for_test.py"):
            test_cmake_lists_every_file_of_the_module()
    finally:
        extra.unlink()


def test_testing_cmake_registers_the_self_test():
    assert "add_subdirectory(Python)" in (MODULE / "Testing" / "CMakeLists.txt").read_text()
    text = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text()
    m = re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{CMAKE_CURRENT_SOURCE_DIR\}/([^\s)]+)\s*\)", text)
    assert m
    script = (MODULE / "Testing" / "Python" / m.group(1).replace("${MODULE_NAME}", "KneeSegmentation")).resolve()
    assert script == MODULE_PY.resolve()
    others = [p.name for p in (MODULE / "Testing").rglob("*") if p.is_file() and p.name != "CMakeLists.txt"]
    assert not others, f"files in Testing/ that no CMakeLists references: {others}"


def test_extension_cmake_metadata():
    text = re.sub(r"#[^\n]*", "", (REPO / "CMakeLists.txt").read_text())
    assert re.search(r"project\(KneeSegmentation\)", text)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        m = re.search(rf'set\({var} "([^"]*)"\)', text)
        assert m and m.group(1), var
    assert re.search(r'set\(EXTENSION_CATEGORY "Segmentation"\)', text)
    assert re.search(r'set\(EXTENSION_DEPENDS "NA"\)', text)
    order = [text.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                     "add_subdirectory(KneeSegmentation)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                     "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)


# ---------------------------------------------------------------------------------------------
# layering


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
            names.add(f"slicer.{node.attr}")
    return names


def test_logic_layer_uses_no_qt_and_no_slicer_app():
    forbidden = ("qt", "ctk", "slicer.app", "slicer.modules", "slicer.ScriptedLoadableModule", "slicer.util.",
                 "slicer.parameterNodeWrapper", "slicer.i18n", "slicer.qMRML", "SegmentStatistics", "SampleData",
                 *(f".{Path(m).stem}" for m in GUI_MODULES))
    for path in sorted((MODULE / "KneeSegmentationLib").glob("*.py")):
        if path.name in GUI_MODULES:
            continue
        imports = _imports(path)
        bad = sorted(i for i in imports if any(i == f or i.startswith(f + ".") or (f.endswith(".") and i.startswith(f))
                                               for f in forbidden))
        assert not bad, f"{path.name} uses {bad}"


def test_core_imports_no_slicer_or_qt():
    """The core never uses Slicer or Qt; VTK (surface meshes) only inside the functions that need it,
    so that ``import kneeseg...`` works where VTK is not installed."""
    for path in sorted((MODULE / "kneeseg").rglob("*.py")):
        imports = _imports(path)
        bad = sorted(i for i in imports if i.split(".")[0] in ("slicer", "qt", "ctk", "KneeSegmentationLib"))
        assert not bad, f"kneeseg/{path.name} imports {bad}"
        top_level = ast.parse(path.read_text()).body
        eager = [a.name for node in top_level if isinstance(node, ast.Import) for a in node.names]
        eager += [node.module for node in top_level if isinstance(node, ast.ImportFrom) and node.module]
        assert not [i for i in eager if i.split(".")[0] == "vtk"], f"kneeseg/{path.name} imports vtk at load time"


def test_module_file_compiles():
    compile(MODULE_PY.read_text(), str(MODULE_PY), "exec")


# ---------------------------------------------------------------------------------------------
# terminology


def test_terminology_file_codes_and_colours_match_the_label_set():
    from kneeseg import labels as L
    from KneeSegmentationLib import terminology

    doc = json.loads(TERM_FILE.read_text())
    assert doc["SegmentationCategoryTypeContextName"] == terminology.CONTEXT_NAME
    assert doc["@schema"].endswith("segment-context-schema.json#")
    (category,) = doc["SegmentationCodes"]["Category"]
    assert (category["CodingSchemeDesignator"], category["CodeValue"], category["CodeMeaning"]) == terminology.CATEGORY
    types = {t["CodeValue"]: t for t in category["Type"]}
    for bone in L.SEPARATE_BONES + L.MERGED_BONES:
        t = types[bone.snomed_code]
        assert t["CodingSchemeDesignator"] == "SCT" and t["CodeMeaning"] == bone.name
        assert tuple(t["recommendedDisplayRGBValue"]) == bone.color
        assert t["3dSlicerLabel"] == bone.name.lower()
    assert {"71341001", "12611008", "87342007", "64234005"} <= set(types)


@pytest.fixture
def mrml():
    harness = pytest.importorskip("mrml_harness")  # skips without slicer-core
    m = harness.Mrml()
    yield m
    m.scene.Clear(1)


def test_terminology_loads_into_slicers_terminology_logic(mrml):
    import slicer
    from kneeseg import labels as L
    from KneeSegmentationLib import terminology

    logic = mrml.terminologies
    assert terminology.ensureLoaded(logic)
    assert terminology.ensureLoaded(logic)  # idempotent
    assert terminology.ensureLoaded(None) is False
    for bone in L.SEPARATE_BONES:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.FindTypeInTerminologyBy3dSlicerLabel(terminology.CONTEXT_NAME, bone.name.lower(), entry)
        assert entry.GetTypeObject().GetCodeValue() == bone.snomed_code
        assert tuple(entry.GetTypeObject().GetRecommendedDisplayRGBValue()) == bone.color
        assert entry.GetCategoryObject().GetCodeValue() == "123037004"


# ---------------------------------------------------------------------------------------------
# shipped model cards


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_shipped_model_cards_carry_no_machine_paths():
    cards = sorted((MODULE / "Resources" / "Models").glob("*/card.json"))
    assert cards
    machinePath = re.compile(r"(^|[\s(])(/(home|work|root|tmp|Users|mnt|opt|var)/|[A-Za-z]:\\)")
    for card in cards:
        found = [s for s in _strings(json.loads(card.read_text())) if machinePath.search(s)]
        assert not found, f"{card.relative_to(REPO)} names paths of the machine that built it: {found}"
