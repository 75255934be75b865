"""Run the real KneeSegmentation module (module, widget, logic, self-test) headless under real Qt.

What is real: Qt (PySide6, offscreen platform), slicer-core's MRML scene, nodes and module logics,
and Slicer's own Python layer from ``../shared/slicer_python`` (``ScriptedLoadableModule``,
``parameterNodeWrapper``, ``slicer.i18n``, ``slicer.packaging``, the Sample Data and Segment
Statistics modules), used in place, never copied. What no installable package provides is imitated
here, after the real APIs (Slicer/Slicer and commontk/CTK sources):

- PythonQt's idioms on every Qt object (:class:`PythonQtObject`): Qt properties as attributes
  (``button.text = "x"``, ``widget.name`` for ``objectName``) and ``obj.connect("clicked(bool)", slot)``;
- the CTK widgets the panel uses (``ctkCollapsibleButton``, ``ctkCollapsibleGroupBox``, ``ctkPathLineEdit``,
  ``ctkMessageBox``) and the names ``parameterNodeWrapper`` looks up;
- the qMRML widgets (``qMRMLWidget``, ``qMRMLNodeComboBox``, ``qMRMLTableView``, ``qMRMLPlotWidget``,
  ``qMRMLSegmentationShow3DButton``), working on the real MRML nodes;
- ``slicer.app`` (a real ``QApplication`` with Slicer's extra methods), ``slicer.modules``, a main
  window, and the IO manager that ``slicer.util.loadVolume`` calls (storage nodes do the reading).

Message boxes are real ``QMessageBox`` objects that record themselves and answer what a test queued
(``Slicer.answers``) instead of blocking. The harness is skipped, with the reason, when the shared
Slicer Python layer is absent (as in CI) or set aside with ``KNEESEG_SLICER_PYTHON=none``.
"""

import ctypes
import os
import sys
import types
import weakref
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "KneeSegmentation"
_setting = os.environ.get("KNEESEG_SLICER_PYTHON", str(REPO.parent / "shared" / "slicer_python"))
SLICER_PYTHON = None if _setting.lower() in ("", "none", "0", "off") else Path(_setting)
SLICER_BASE = SLICER_PYTHON / "Base" / "Python" if SLICER_PYTHON else None

if SLICER_BASE is None or not (SLICER_BASE / "slicer" / "ScriptedLoadableModule.py").is_file():
    pytest.skip(f"Slicer's Python layer is not available ({SLICER_PYTHON or 'KNEESEG_SLICER_PYTHON=none'}: no "
                "Base/Python/slicer/ScriptedLoadableModule.py); it lives beside the project in ../shared/slicer_python",
                allow_module_level=True)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtCore = pytest.importorskip("PySide6.QtCore", reason="PySide6 is not installed (requirements.txt)")
from PySide6 import QtGui, QtUiTools, QtWidgets  # noqa: E402

import mrml_harness  # noqa: E402  (slicer-core's MRML, the fixtures' scene)
import slicer  # noqa: E402
import slicer_core  # noqa: E402
import vtk  # noqa: E402

# PySide6 6.12 returns True/False from SignalInstance.emit() and .disconnect() without a reference of
# their own, so every call takes one from the interpreter's True or False until Python aborts
# ("bool_dealloc: deallocating True or False"). Slicer's parameterNodeWrapper disconnects signals on
# every panel exit; give the two singletons references to spare (harmless: they are never freed).
for _singleton in (True, False):
    ctypes.c_ssize_t.from_address(id(_singleton)).value += 1 << 24

# ---------------------------------------------------------------------------------------------
# PythonQt idioms

PROPERTY_ALIASES = {"name": "objectName"}
SIGNAL_ARGUMENT_TYPES = {"bool": bool, "int": int, "double": float, "QString": str}


def _metaProperty(obj, name):
    try:
        meta = QtCore.QObject.metaObject(obj)
    except RuntimeError:  # the C++ object is not constructed yet (or already deleted)
        return None
    index = meta.indexOfProperty(PROPERTY_ALIASES.get(name, name))
    return meta.property(index) if index >= 0 else None


def _pythonQtCaller():
    """True unless the attribute is used by this file's doubles, which use Qt's C++-style API."""
    return sys._getframe(2).f_globals.get("__name__") != __name__


class PythonQtObject:
    """What PythonQt adds to a Qt object: properties as attributes, string-signature connections."""

    def __getattribute__(self, name):
        if name in _IDIOMS:  # PySide's QObject.connect would otherwise win the lookup
            return _IDIOMS[name].__get__(self)
        if not name.startswith("_") and _pythonQtCaller():
            prop = _metaProperty(self, name)
            if prop is not None:
                return prop.read(self)
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        prop = None if name.startswith("_") or not _pythonQtCaller() else _metaProperty(self, name)
        if prop is not None:
            if isinstance(value, tuple):  # PythonQt converts a sequence to a QStringList/QVariantList
                value = list(value)
            if not prop.write(self, value):
                raise AttributeError(f"cannot set Qt property {name!r} of {type(self).__name__} to {value!r}")
            return
        super().__setattr__(name, value)

    def _signal(self, signature):
        name, _, arguments = signature.partition("(")
        signal = super().__getattribute__(name)
        types_ = tuple(SIGNAL_ARGUMENT_TYPES.get(a.strip()) for a in arguments.rstrip(")").split(",") if a.strip())
        if types_ and all(types_):
            try:
                return signal[types_ if len(types_) > 1 else types_[0]]
            except (KeyError, IndexError, TypeError):
                pass
        return signal

    def connect(self, signature, slot):
        self._signal(signature).connect(slot)
        return True

    def disconnect(self, signature, slot=None):
        signal = self._signal(signature)
        return signal.disconnect(slot) if slot is not None else signal.disconnect()

    def exec_(self, *args):
        return self.exec(*args)


_IDIOMS = {name: PythonQtObject.__dict__[name] for name in ("connect", "disconnect", "exec_")}


def _flavoured(cls):
    return type(cls.__name__, (PythonQtObject, cls), {"__module__": "qt"})


def _buildQtModule():
    qt = types.ModuleType("qt")
    for source in (QtCore, QtGui, QtWidgets, QtUiTools):
        for name in dir(source):
            value = getattr(source, name)
            if name.startswith("_") or hasattr(qt, name):
                continue
            if isinstance(value, type) and issubclass(value, QtCore.QObject) and name != "QUiLoader":
                value = _flavoured(value)
            setattr(qt, name, value)
    qt.QUiLoader = UiLoader
    return qt


# ---------------------------------------------------------------------------------------------
# .ui loading: flavoured standard widgets, the doubles below, and the .ui's signal/slot connections


class UiLoader(QtUiTools.QUiLoader):
    customWidgets = {}

    def __init__(self, parent=None):
        super().__init__(parent)
        for cls in self.customWidgets.values():
            self.registerCustomWidget(cls)

    def createWidget(self, className, parent=None, name=""):
        cls = self.customWidgets.get(className) or getattr(sys.modules["qt"], className, None)
        if cls is None or not issubclass(cls, PythonQtObject):
            return super().createWidget(className, parent, name)
        widget = cls(parent)
        widget.setObjectName(name)
        return widget

    def load(self, device, parent=None):
        """Load without the .ui's connections (C++ signatures), then make them (see below)."""
        root = ET.fromstring(bytes(device.readAll()))
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        buffer = QtCore.QBuffer()
        buffer.setData(ET.tostring(root))
        buffer.open(QtCore.QIODevice.ReadOnly)
        widget = super().load(buffer, parent)
        if widget is not None and connections is not None:
            _connectUiConnections(widget, connections)
        return widget


def _connectUiConnections(top, connections):
    """Qt's loader connects C++ signatures; the doubles' signals are Python ones: connect them here."""
    named = {w.objectName(): w for w in top.findChildren(QtWidgets.QWidget)}
    named[top.objectName()] = top
    for connection in connections.iter("connection"):
        sender = named[connection.findtext("sender")]
        receiver = named[connection.findtext("receiver")]
        slotName = connection.findtext("slot").partition("(")[0]
        sender.connect(connection.findtext("signal"), getattr(receiver, slotName))


def _observe(vtkObject, event, widget, method):
    """Call ``widget.method()`` on a VTK event, as qvtkConnect does; stops once the widget is deleted."""
    ref = weakref.ref(widget)
    tag = None

    def callback(caller, eventId):
        target = ref()
        try:
            if target is None:
                raise RuntimeError("deleted")
            getattr(target, method)()
        except RuntimeError:  # the C++ widget is gone
            vtkObject.RemoveObserver(tag)

    tag = vtkObject.AddObserver(event, callback)
    return tag


def _refreshingProperty(kind, attribute, convert):
    """A Qt property kept in ``attribute``; setting it refreshes the widget (``_refresh``)."""

    def get(widget):
        return getattr(widget, attribute)

    def set_(widget, value):
        setattr(widget, attribute, convert(value))
        widget._refresh()

    return QtCore.Property(kind, get, set_)


# ---------------------------------------------------------------------------------------------
# CTK (commontk/CTK Libs/Widgets): the classes the panel and Slicer's Python layer use


def _build(qt):
    """Define the CTK and qMRML doubles on top of the flavoured ``qt`` module; return (ctk, widgets)."""
    ctk = types.ModuleType("ctk")

    class ctkCollapsibleButton(qt.QWidget):
        """A button-like header that shows or hides its contents (``collapsed``, ``text``)."""

        # CTK's contentsCollapsed(bool) signal is left out: nothing here listens to it, and PySide6 6.12
        # drops a reference to True/False each time a Python-defined signal emits a bool.
        HEADER = 26

        def __init__(self, parent=None):
            super().__init__(parent)
            self._collapsed = False
            self._header = QtWidgets.QToolButton(self)
            self._header.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
            self._header.setAutoRaise(False)
            self._header.setStyleSheet("QToolButton { font-weight: bold; text-align: left; }")
            self._header.clicked.connect(lambda: self.setCollapsed(not self._collapsed))
            self._updateHeader()

        def _updateHeader(self):
            self._header.setArrowType(QtCore.Qt.RightArrow if self._collapsed else QtCore.Qt.DownArrow)
            self.setContentsMargins(0, self.HEADER + 2, 0, 0)

        def resizeEvent(self, event):
            self._header.setGeometry(0, 0, self.width(), self.HEADER)
            super().resizeEvent(event)

        def text(self):
            return self._header.text()

        def setText(self, text):
            self._header.setText(text)

        def isCollapsed(self):
            return self._collapsed

        def setCollapsed(self, collapsed):
            collapsed = bool(collapsed)
            self._collapsed = collapsed
            for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
                if child is not self._header:
                    child.setVisible(not collapsed)
            self.setMaximumHeight(self.HEADER if collapsed else 16777215)
            self._updateHeader()

        def childEvent(self, event):
            super().childEvent(event)
            if self._collapsed and event.added() and isinstance(event.child(), QtWidgets.QWidget):
                event.child().setVisible(False)

        text = QtCore.Property(str, text, setText)
        collapsed = QtCore.Property(bool, isCollapsed, setCollapsed)

    class ctkCollapsibleGroupBox(qt.QGroupBox):
        """A group box whose title toggles its contents (``collapsed``); checkable like CTK's."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self.setCheckable(True)
            self.setChecked(True)
            self.toggled.connect(self._onToggled)

        def _onToggled(self, checked):
            for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
                child.setVisible(checked)
            self.setMaximumHeight(16777215 if checked else 22)

        def isCollapsed(self):
            return not self.isChecked()

        def setCollapsed(self, collapsed):
            self.setChecked(not collapsed)
            self._onToggled(not collapsed)

        collapsed = QtCore.Property(bool, isCollapsed, setCollapsed)

    class ctkPathLineEdit(qt.QWidget):
        """A line edit with a browse button; ``currentPath`` and ``currentPathChanged(QString)``."""

        Dirs, Files, Drives, NoDotAndDotDot = 0x001, 0x002, 0x004, 0x1000
        currentPathChanged = QtCore.Signal(str)

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self._edit = QtWidgets.QLineEdit(self)
            self._browse = QtWidgets.QToolButton(self)
            self._browse.setText("...")
            layout.addWidget(self._edit)
            layout.addWidget(self._browse)
            self._filters = self.Files
            self._edit.editingFinished.connect(lambda: self.setCurrentPath(self._edit.text()))

        def currentPath(self):
            return self._edit.text()

        def setCurrentPath(self, path):
            path = str(path)
            changed = path != getattr(self, "_lastPath", "")
            self._lastPath = path
            self._edit.setText(path)
            if changed:
                self.currentPathChanged.emit(path)

        def filtersValue(self):
            return self._filters

        def setFilters(self, filters):
            self._filters = int(filters)

        currentPath = QtCore.Property(str, currentPath, setCurrentPath)
        filters = QtCore.Property(int, filtersValue, setFilters)

    class ctkMessageBox(qt.QMessageBox):
        """A real message box that, instead of blocking, records itself and returns the queued answer."""

        shown = []
        answers = []

        def exec_(self):
            self.grab()  # laid out and painted, as when shown
            ctkMessageBox.shown.append({"text": self.text(), "windowTitle": self.windowTitle().strip(),
                                        "detailedText": self.detailedText(), "icon": self.icon()})
            return ctkMessageBox.answers.pop(0) if ctkMessageBox.answers else QtWidgets.QMessageBox.Ok

        exec = exec_

    for name, base in (("ctkCheckBox", qt.QCheckBox), ("ctkCheckablePushButton", qt.QPushButton),
                       ("ctkSliderWidget", qt.QWidget), ("ctkDoubleSlider", qt.QSlider),
                       ("ctkDoubleSpinBox", qt.QDoubleSpinBox), ("ctkComboBox", qt.QComboBox),
                       ("ctkRangeWidget", qt.QWidget), ("ctkDoubleRangeSlider", qt.QSlider),
                       ("ctkDirectoryButton", qt.QPushButton), ("ctkColorPickerButton", qt.QPushButton)):
        # Looked up by parameterNodeWrapper's connectors (type checks); the panel does not use them.
        setattr(ctk, name, type(name, (base,), {"__module__": "ctk"}))
    for cls in (ctkCollapsibleButton, ctkCollapsibleGroupBox, ctkPathLineEdit, ctkMessageBox):
        cls.__module__ = "ctk"
        setattr(ctk, cls.__name__, cls)

    # -----------------------------------------------------------------------------------------
    # qMRML widgets (Slicer Libs/MRML/Widgets, Modules/Loadable/Segmentations/Widgets)

    class qMRMLWidget(qt.QWidget):
        mrmlSceneChanged = QtCore.Signal(object)

        def __init__(self, parent=None):
            super().__init__(parent)
            self._scene = None

        def setMRMLScene(self, scene):
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)

        def mrmlScene(self):
            return self._scene

    class qMRMLNodeComboBox(qt.QComboBox):
        """Nodes of ``nodeTypes`` in the scene; ``currentNode()``, ``currentNodeChanged(vtkMRMLNode*)``."""

        currentNodeChanged = QtCore.Signal(object)
        currentNodeIDChanged = QtCore.Signal(str)

        def __init__(self, parent=None):
            super().__init__(parent)
            self._scene = None
            self._observations = []
            self._nodeTypes, self._hideChildNodeTypes = [], []
            self._noneEnabled = False
            self._noneDisplay = "None"
            self._flags = {"addEnabled": True, "removeEnabled": True, "renameEnabled": False}
            self.currentIndexChanged.connect(self._onIndexChanged)

        def setMRMLScene(self, scene):
            for obj, tag in self._observations:
                obj.RemoveObserver(tag)
            self._scene = scene
            events = (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent) if scene else ()
            self._observations = [(scene, _observe(scene, event, self, "_refresh")) for event in events]
            self._refresh()

        def mrmlScene(self):
            return self._scene

        def _nodes(self):
            if self._scene is None:
                return []
            nodes = []
            for nodeType in self._nodeTypes:
                for node in slicer.util.getNodesByClass(nodeType, self._scene):
                    if node in nodes or node.GetHideFromEditors() or any(node.IsA(h) for h in self._hideChildNodeTypes):
                        continue
                    nodes.append(node)
            return nodes

        def _refresh(self):
            current = self.currentNode()
            self.blockSignals(True)
            self.clear()
            if self._noneEnabled:
                self.addItem(self._noneDisplay, "")
            for node in self._nodes():
                self.addItem(node.GetName(), node.GetID())
            index = self.findData(current.GetID()) if current is not None and current.GetScene() else -1
            self.setCurrentIndex(index if index >= 0 else 0 if self.count() else -1)
            self.blockSignals(False)
            if self.currentNode() is not current:
                self._onIndexChanged(self.currentIndex())

        def _onIndexChanged(self, index):
            node = self.currentNode()
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(node.GetID() if node else "")

        def currentNode(self):
            nodeId = self.currentData() if self.currentIndex() >= 0 else None
            return self._scene.GetNodeByID(nodeId) if (nodeId and self._scene is not None) else None

        def currentNodeID(self):
            node = self.currentNode()
            return node.GetID() if node else ""

        def setCurrentNode(self, node):
            self.setCurrentNodeID(node.GetID() if node is not None else "")

        def setCurrentNodeID(self, nodeId):
            index = self.findData(nodeId) if nodeId else (0 if self._noneEnabled else -1)
            if index >= 0 or not nodeId:
                self.setCurrentIndex(index)

        def nodeCount(self):
            return len(self._nodes())

        nodeTypes = _refreshingProperty("QStringList", "_nodeTypes", list)
        hideChildNodeTypes = _refreshingProperty("QStringList", "_hideChildNodeTypes", list)
        noneEnabled = _refreshingProperty(bool, "_noneEnabled", bool)
        noneDisplay = _refreshingProperty(str, "_noneDisplay", str)
        addEnabled = QtCore.Property(bool, lambda s: s._flags["addEnabled"],
                                     lambda s, v: s._flags.__setitem__("addEnabled", bool(v)))
        removeEnabled = QtCore.Property(bool, lambda s: s._flags["removeEnabled"],
                                        lambda s, v: s._flags.__setitem__("removeEnabled", bool(v)))
        renameEnabled = QtCore.Property(bool, lambda s: s._flags["renameEnabled"],
                                        lambda s, v: s._flags.__setitem__("renameEnabled", bool(v)))

    class qMRMLTableView(qt.QTableView):
        """Shows a ``vtkMRMLTableNode`` (``setMRMLTableNode``), refreshed when the node changes."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._node, self._tag, self._scene = None, None, None
            self._model = QtGui.QStandardItemModel(self)
            self.setModel(self._model)
            self.horizontalHeader().setStretchLastSection(True)
            self.verticalHeader().setVisible(False)

        def setMRMLScene(self, scene):
            self._scene = scene

        def mrmlTableNode(self):
            return self._node

        def setMRMLTableNode(self, node):
            if self._node is not None:
                self._node.RemoveObserver(self._tag)
            self._node = node
            self._tag = _observe(node, vtk.vtkCommand.ModifiedEvent, self, "_fill") if node else None
            self._fill()

        def _fill(self):
            self._model.clear()
            table = self._node.GetTable() if self._node else None
            if table is None:
                return
            columns = table.GetNumberOfColumns()
            self._model.setHorizontalHeaderLabels(
                [self._node.GetColumnTitle(table.GetColumnName(c)) or table.GetColumnName(c) for c in range(columns)])
            for row in range(table.GetNumberOfRows()):
                items = []
                for c in range(columns):
                    value = table.GetValue(row, c)
                    text = f"{value.ToDouble():.1f}" if value.IsNumeric() else value.ToString()
                    item = QtGui.QStandardItem(text)
                    item.setTextAlignment(QtCore.Qt.AlignRight | QtCore.Qt.AlignVCenter if value.IsNumeric()
                                          else QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter)
                    items.append(item)
                self._model.appendRow(items)

        def cellText(self, row, column):
            return self._model.item(row, column).text()

    class qMRMLPlotWidget(qt.QWidget):
        """Draws the plot chart of its ``vtkMRMLPlotViewNode``: each series' X/Y columns as a line."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._viewNode, self._scene, self._tags = None, None, []

        def setMRMLScene(self, scene):
            self._scene = scene

        def mrmlPlotViewNode(self):
            return self._viewNode

        def setMRMLPlotViewNode(self, node):
            self._viewNode = node
            self.update()

        def series(self):
            chart = self._viewNode.GetPlotChartNode() if self._viewNode else None
            if chart is None:
                return []
            out = []
            for i in range(chart.GetNumberOfPlotSeriesNodes()):
                s = chart.GetNthPlotSeriesNode(i)
                table = s.GetTableNode().GetTable()
                xs, ys = table.GetColumnByName(s.GetXColumnName()), table.GetColumnByName(s.GetYColumnName())
                points = [(xs.GetValue(r), ys.GetValue(r)) for r in range(table.GetNumberOfRows())]
                out.append((s.GetName(), s.GetColor(), [(x, y) for x, y in points if y == y]))
            return out

        def paintEvent(self, event):
            painter = QtGui.QPainter(self)
            painter.fillRect(self.rect(), QtGui.QColor("white"))
            series = self.series()
            allPoints = [p for _, _, points in series for p in points]
            chart = self._viewNode.GetPlotChartNode() if self._viewNode else None
            if chart is not None:
                painter.drawText(8, 16, chart.GetTitle() or "")
            if not allPoints:
                painter.end()
                return
            left, top, right, bottom = 40, 26, self.width() - 10, self.height() - 46
            x0, x1 = min(p[0] for p in allPoints), max(p[0] for p in allPoints)
            y0, y1 = min(0.0, min(p[1] for p in allPoints)), max(1.0, max(p[1] for p in allPoints))
            sx = (right - left) / ((x1 - x0) or 1.0)
            sy = (bottom - top) / ((y1 - y0) or 1.0)
            painter.setPen(QtGui.QColor("#888"))
            painter.drawRect(left, top, right - left, bottom - top)
            painter.drawText(4, top + 10, f"{y1:.1f}")
            painter.drawText(4, bottom, f"{y0:.1f}")
            painter.drawText(left, bottom + 14, f"epoch {x0:g}")
            painter.drawText(right - 60, bottom + 14, f"epoch {x1:g}")
            for index, (name, color, points) in enumerate(series):
                pen = QtGui.QPen(QtGui.QColor.fromRgbF(*color))
                pen.setWidth(2)
                painter.setPen(pen)
                mapped = [QtCore.QPointF(left + (x - x0) * sx, bottom - (y - y0) * sy) for x, y in points]
                for a, b in zip(mapped, mapped[1:]):
                    painter.drawLine(a, b)
                for p in mapped:
                    painter.drawEllipse(p, 2.5, 2.5)
                painter.drawText(left + (index % 2) * 150, bottom + 28 + (index // 2) * 13, name)
            painter.end()

    class qMRMLSegmentationShow3DButton(qt.QPushButton):
        """Checkable "Show 3D": creates/removes the closed-surface representation of its segmentation."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._node, self._tags, self.locked = None, [], False
            self.setCheckable(True)
            self.setText("Show 3D")
            self.toggled.connect(self._onToggled)
            self.setEnabled(False)

        def segmentationNode(self):
            return self._node

        def setSegmentationNode(self, node):
            if node is self._node:
                return
            for tag in self._tags:
                self._node.RemoveObserver(tag)
            self._node = node
            self._tags = [_observe(node, vtk.vtkCommand.ModifiedEvent, self, "updateWidgetFromMRML")] if node else []
            self.updateWidgetFromMRML()

        def updateWidgetFromMRML(self):
            segmentation = self._node.GetSegmentation() if self._node else None
            if segmentation is None:
                self.setEnabled(False)
                return
            closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
            self.setEnabled(not self.locked and segmentation.GetNumberOfSegments() > 0
                            and segmentation.GetSourceRepresentationName() != closed)
            blocked = self.blockSignals(True)
            self.setChecked(segmentation.ContainsRepresentation(closed))
            self.blockSignals(blocked)

        def _onToggled(self, on):
            if self._node is None:
                return
            segmentation = self._node.GetSegmentation()
            closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
            if on:
                if segmentation.CreateRepresentation(closed) and self._node.GetDisplayNode():
                    self._node.GetDisplayNode().SetPreferredDisplayRepresentationName3D(closed)
            elif segmentation.GetSourceRepresentationName() != closed:
                segmentation.RemoveRepresentation(closed)

    widgets = [qMRMLWidget, qMRMLNodeComboBox, qMRMLTableView, qMRMLPlotWidget, qMRMLSegmentationShow3DButton]
    for cls in widgets:
        cls.__module__ = "slicer"
    for cls in [*widgets, ctkCollapsibleButton, ctkCollapsibleGroupBox, ctkPathLineEdit, ctkMessageBox]:
        cls.__qualname__ = cls.__name__  # the Qt class name
    for name in ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget"):
        widgets.append(type(name, (qt.QWidget,), {"__module__": "slicer"}))  # parameterNodeWrapper looks them up
    UiLoader.customWidgets = {cls.__name__: cls for cls in
                              [ctkCollapsibleButton, ctkCollapsibleGroupBox, ctkPathLineEdit, *widgets[:5]]}
    return ctk, widgets


# ---------------------------------------------------------------------------------------------
# slicer.app, slicer.modules, IO


def _buildApplication(qt, tempDir):
    class qSlicerModuleManager(qt.QObject):
        moduleAboutToBeUnloaded = QtCore.Signal(str)

    class qSlicerCoreIOManager:
        """``loadNodes``/``fileType`` for volumes, through the real storage nodes."""

        def fileType(self, fileName):
            return "VolumeFile"

        def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None):
            if fileType != "VolumeFile":
                return False
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName(properties["fileName"])
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", properties.get("name", "volume"))
            if not storage.ReadData(node):
                slicer.mrmlScene.RemoveNode(node)
                return False
            node.CreateDefaultDisplayNodes()
            if loadedNodes is not None:
                loadedNodes.AddItem(node)
            return True

    class qSlicerApplication(qt.QApplication):
        startupCompleted = QtCore.Signal()

        def __init__(self, argv):
            super().__init__(argv)
            self.temporaryPath = str(tempDir)
            self.applicationName = "Slicer"
            self._moduleManager = qSlicerModuleManager()
            self._ioManager = qSlicerCoreIOManager()

        def testingEnabled(self):
            return False

        def moduleManager(self):
            return self._moduleManager

        def coreIOManager(self):
            return self._ioManager

        def layoutManager(self):
            return None  # no views: setSliceViewerLayers only sets the slice composite nodes

        def userSettings(self):
            return qt.QSettings()

        def settings(self):
            return qt.QSettings()

        def extensionsManagerModel(self):
            raise AttributeError("this application has no extensions manager")

    return qSlicerApplication


class ModuleParent:
    """The C++ ``qSlicerScriptedLoadableModule`` a scripted module's ``parent`` is: settable metadata."""

    def __init__(self, path):
        self.path = str(path)
        self.title = ""
        self.isEntered = False


class ModuleRepresentation:
    """``slicer.modules.<name>``: its path and, once created, its widget representation."""

    def __init__(self, path, logic=None):
        self.path = str(path)
        self._logic = logic
        self.widget = None

    def logic(self):
        return self._logic

    def widgetRepresentation(self):
        return self.widget


def _scriptedModuleWidgetClass():
    class qSlicerScriptedLoadableModuleWidget(slicer.qMRMLWidget):
        """The module panel Slicer gives a scripted widget: ``self()`` is the Python widget; ``reload()``."""

        def __init__(self, moduleName, parent=None):
            super().__init__(parent)
            self._moduleName = moduleName
            self._python = None
            self.setLayout(QtWidgets.QVBoxLayout())

        def self(self):
            return self._python

        def reload(self):
            """Instantiate the (re)loaded module's widget class in this panel, set it up and enter it."""
            module = sys.modules[self._moduleName]
            widget = getattr(module, self._moduleName + "Widget")(self)
            widget.setup()
            self._python = widget
            setattr(slicer.modules, self._moduleName + "Widget", widget)
            widget.enter()
            return widget

    qSlicerScriptedLoadableModuleWidget.__qualname__ = "qSlicerScriptedLoadableModuleWidget"
    return qSlicerScriptedLoadableModuleWidget


class Slicer:
    """The running application, once per test session: Qt, the doubles, the module's Python layer."""

    def __init__(self, tempDir):
        self.tempDir = Path(tempDir)
        for folder in (SLICER_PYTHON / "Modules" / "Scripted" / "SampleData",
                       SLICER_PYTHON / "Modules" / "Scripted" / "SegmentStatistics", MODULE_DIR):
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
        if str(SLICER_BASE / "slicer") not in slicer.__path__:
            slicer.__path__.append(str(SLICER_BASE / "slicer"))  # slicer.ScriptedLoadableModule, parameterNodeWrapper ...
        sys.modules["vtkITK"] = slicer_core.vtkITK
        segmentationCore = types.ModuleType("vtkSegmentationCorePython")
        for name in ("vtkSegmentationConverter", "vtkSegmentation", "vtkSegment", "vtkOrientedImageData"):
            setattr(segmentationCore, name, getattr(slicer, name))
        sys.modules["vtkSegmentationCorePython"] = segmentationCore

        self.qt = _buildQtModule()
        sys.modules["qt"] = self.qt
        self.ctk, qmrml = _build(self.qt)
        sys.modules["ctk"] = self.ctk
        for cls in qmrml:
            setattr(slicer, cls.__name__, cls)
        QtCore.QCoreApplication.setOrganizationName("KneeSegmentationTests")
        QtCore.QCoreApplication.setApplicationName("Slicer")
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(self.tempDir / "settings"))
        self.app = _buildApplication(self.qt, self.tempDir / "tmp")(["Slicer"])
        (self.tempDir / "tmp").mkdir(exist_ok=True)
        slicer.app = self.app
        self.mainWindow = self.qt.QMainWindow()
        self.mainWindow.setObjectName("qSlicerMainWindow")
        self.modules = types.SimpleNamespace(sampleDataSources={})
        slicer.modules = self.modules
        slicer.selfTests = {}
        self.mrml = None

    @property
    def messageBoxes(self):
        return self.ctk.ctkMessageBox.shown

    @property
    def answers(self):
        return self.ctk.ctkMessageBox.answers

    def newScene(self):
        """A fresh scene with its module logics, as ``slicer.mrmlScene`` (the previous one is cleared)."""
        if self.mrml is not None:
            self.mrml.scene.Clear(1)
        self.mrml = mrml_harness.Mrml()
        slicer.mrmlScene = self.mrml.scene
        cacheDir = self.tempDir / "cache"
        cacheDir.mkdir(exist_ok=True)
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(str(cacheDir))
        self.mrml.scene.SetCacheManager(cache)
        plots = slicer.vtkSlicerPlotsLogic()
        plots.SetMRMLApplicationLogic(self.mrml.appLogic)
        plots.SetMRMLScene(self.mrml.scene)
        self.modules.terminologies = ModuleRepresentation("", self.mrml.terminologies)
        self.modules.plots = ModuleRepresentation("", plots)
        self.modules.segmentations = ModuleRepresentation("", self.mrml.segmentations)
        self.ctk.ctkMessageBox.shown.clear()
        self.ctk.ctkMessageBox.answers.clear()
        return self.mrml

    def loadModule(self):
        """Import KneeSegmentation.py and instantiate its module class as Slicer's module factory does."""
        import KneeSegmentation

        parent = ModuleParent(MODULE_DIR / "KneeSegmentation.py")
        module = KneeSegmentation.KneeSegmentation(parent)
        self.modules.kneesegmentation = ModuleRepresentation(parent.path)
        return KneeSegmentation, module, parent

    def openModule(self):
        """Create the module widget the way Slicer does (a qMRMLWidget parent with a layout), and enter it."""
        self.loadModule()
        host = _scriptedModuleWidgetClass()("KneeSegmentation")
        host.setMRMLScene(slicer.mrmlScene)
        self.modules.kneesegmentation.widget = host
        host.resize(420, 1000)
        host.show()
        widget = host.reload()
        self.processEvents()
        return widget, host

    def processEvents(self, seconds=0.0):
        import time

        deadline = time.monotonic() + seconds
        while True:
            self.app.processEvents()
            if time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def waitFor(self, condition, timeout=60.0):
        """Run the event loop (the panel's QTimer polls the process) until ``condition()`` holds."""
        import time

        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the panel did not reach the expected state in time")
            self.processEvents(0.05)


def render(widget, path, width=420):
    """Save a PNG of ``widget`` as laid out at ``width`` pixels (its natural height)."""
    widget.resize(width, 10)
    widget.adjustSize()
    widget.resize(width, max(widget.sizeHint().height(), widget.minimumSizeHint().height()))
    QtWidgets.QApplication.processEvents()
    image = widget.grab()
    assert image.save(str(path)), f"cannot write {path}"
    return image
