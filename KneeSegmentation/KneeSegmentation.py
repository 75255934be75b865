"""Knee Segmentation: segment the femur, tibia, fibula and patella in knee MRI with a U-Net.

The module file is a thin shell: metadata, the logic, the self-test. The panel is
``KneeSegmentationLib.widget.KneeSegmentationPanel`` (given this module's logic); the behaviour is in
``KneeSegmentationLib`` and the ``kneeseg`` core, which runs in a separate ``PythonSlicer`` process so
that Slicer never freezes.
"""

import logging
import sys
import time

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

from KneeSegmentationLib import bundles, dependencies, sampledata, statistics, terminology
from KneeSegmentationLib.errors import KneeSegmentationError
from KneeSegmentationLib.logic import KneeSegmentationLogic as KneeSegmentationCoreLogic
from KneeSegmentationLib.widget import KneeSegmentationPanel, KneeSegmentationParameterNode

THESIS = "Semantic Segmentation of human knees using CNNs"


def _readmeLink() -> str:
    """Link to the README: the extension's homepage (from its CMake metadata) when Slicer knows it."""
    try:
        metadata = slicer.app.extensionsManagerModel().extensionMetadata("KneeSegmentation")
        homepage = metadata.get("homepage", "") if metadata else ""
    except Exception:  # no extensions manager (e.g. a custom application)
        homepage = ""
    if homepage:
        return f'<a href="{homepage}#readme">README</a>'
    return _("README.md of the KneeSegmentation extension")


class KneeSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Knee Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Terminologies", "SegmentStatistics"]
        self.parent.contributors = ["KneeSegmentation contributors"]
        self.parent.helpText = _(
            "Segments the knee bones (femur, tibia, fibula, patella) in an MRI volume with a U-Net, "
            "and trains new models from your own labelled scans.<br><br>"
            "<b>For research use only; not a medical device and not for diagnosis.</b><br><br>"
            "Pick the input volume and a model, click <b>Apply</b>. The bones appear as a segmentation with "
            "SNOMED CT codes beside the input in the Data module, with their volumes in mL. "
            "<b>Train a model</b> (collapsed): choose a folder of image/label pairs or volume + segmentation "
            "pairs from the scene, click Train and watch the loss and Dice per epoch. "
            "Sample Data has the knee MRI of the demo (Knee Segmentation category).<br><br>"
            "The computation runs in a separate process; Apply and Train become Cancel while it runs. "
            "See the {readme} for installation, the options and the Python API "
            "(<code>KneeSegmentationLogic().segment(volumeNode)</code>).").format(readme=_readmeLink())
        self.parent.acknowledgementText = _(
            "The approach follows the 2017 bachelor thesis <i>{thesis}</i>: a U-Net segmenting knee bones "
            "slice by slice in MRI. Built on 3D Slicer, SimpleITK and Keras/TensorFlow.").format(thesis=THESIS)
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted():
    """Make the knee terminology selectable and the knee MRI available in Sample Data."""
    try:
        terminology.ensureLoaded(slicer.modules.terminologies.logic())
    except Exception as exc:  # a convenience: segmentation works without it
        logging.warning(f"KneeSegmentation: could not load the knee terminology: {exc}")
    sampledata.registerSampleData()


class KneeSegmentationWidget(ScriptedLoadableModuleWidget):
    """Hosts the panel; the module's logic is injected into it."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = KneeSegmentationLogic()
        self.panel = KneeSegmentationPanel(self.logic, self.resourcePath("UI/KneeSegmentation.ui"))
        self.layout.addWidget(self.panel)

    def enter(self) -> None:
        self.panel.enter()

    def exit(self) -> None:
        self.panel.exit()

    def cleanup(self) -> None:
        self.panel.cleanup()

    def onReload(self) -> None:
        """Reload the logic package too (developer 'Reload' button)."""
        for name in [n for n in sys.modules if n == "KneeSegmentationLib" or n.startswith("KneeSegmentationLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)


class KneeSegmentationLogic(ScriptedLoadableModuleLogic, KneeSegmentationCoreLogic):
    """The module's logic: Slicer's scripted-module logic and the headless KneeSegmentationLib logic.

    Each base is initialised once: ``ScriptedLoadableModuleLogic.__init__`` calls the core logic's
    ``__init__`` through ``super()`` (scene: ``slicer.mrmlScene``); Slicer's terminologies and temporary
    folder are handed over after. Python users::

        import KneeSegmentation
        logic = KneeSegmentation.KneeSegmentationLogic()
        segmentationNode = logic.segment(slicer.util.getNode("KneeMRI"), n4=True)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.useApplication(terminologiesLogic=slicer.modules.terminologies.logic(), tempDir=slicer.app.temporaryPath)

    def getParameterNode(self):
        return KneeSegmentationParameterNode(super().getParameterNode())


class KneeSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test on the knee MRI of Sample Data: real inference with the shipped model.

    Missing Python packages are installed first (as Apply would, without asking); when that is not
    possible the test fails with the reason: it never passes without running the model.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RefusesBadInputAndLeavesSceneUnchanged()
        self.setUp()
        self.test_SegmentsSampleKnee()

    def test_RefusesBadInputAndLeavesSceneUnchanged(self):
        import numpy as np

        logic = KneeSegmentationLogic()
        flat = slicer.util.addVolumeFromArray(np.zeros((1, 20, 20), np.int16) + np.arange(20, dtype=np.int16), name="2D")
        labels = slicer.util.addVolumeFromArray(np.ones((5, 20, 20), np.uint8), name="labels",
                                                nodeClassName="vtkMRMLLabelMapVolumeNode")
        count = slicer.mrmlScene.GetNumberOfNodes()
        for node, words in ((None, "No input volume"), (flat, "2D"), (labels, "label map")):
            with self.assertRaises(KneeSegmentationError) as ctx:
                logic.segment(node)
            self.assertIn(words, ctx.exception.message)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Bad input refused, scene unchanged")

    def test_SegmentsSampleKnee(self):
        import numpy as np

        logic = KneeSegmentationLogic()
        bundle = logic.defaultBundlePath()
        self.assertTrue(bundles.isBundle(bundle), f"the default model bundle is missing: {bundle}")
        missing = dependencies.missingPackages(bundle)
        if missing:
            self.delayDisplay("Installing " + ", ".join(p.name for p in missing))
            dependencies.install(missing, log=self.delayDisplay)  # raises (the test fails) when it cannot
        volume = sampledata.loadSample()
        before = slicer.util.arrayFromVolume(volume).copy()
        card = logic.readCard(bundle)

        start = time.time()
        segmentation = logic.segment(volume, timeout=1800)
        self.delayDisplay(f"Segmented the sample knee in {time.time() - start:.1f} s")

        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, [label["name"] for label in sorted(card["labels"], key=lambda l: l["value"])])
        for label in card["labels"]:
            segment = segmentation.GetSegmentation().GetSegment(
                segmentation.GetSegmentation().GetSegmentIdBySegmentName(label["name"]))
            self.assertEqual(terminology.typeCode(segment.GetTerminology())[1], label["snomed"]["code"])
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
        volumes = statistics.volumesMl(statistics.boneVolumeTable(segmentation))
        for bone in ("Femur", "Tibia"):  # both are well inside the sample's field of view
            self.assertGreater(volumes[bone], 10.0, f"{bone}: {volumes}")
        self.delayDisplay(f"Sample knee segmented: {', '.join(f'{k} {v:.0f} mL' for k, v in volumes.items())}")
