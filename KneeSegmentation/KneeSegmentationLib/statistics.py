"""Bone volumes through Slicer's standard Segment Statistics, into a table node beside the segmentation.

Only the label-map volume (cm3, i.e. mL) is measured, for every segment (hidden ones too). The
table node is the panel's result: it is saved with the scene, and is reused (refilled) when the
same segmentation is segmented again. Needs the Segment Statistics module (any Slicer has it).
"""

import slicer
from slicer.i18n import tr as _

TABLE_REFERENCE_ROLE = "KneeSegmentation.BoneVolumes"
LABELMAP_PLUGIN = "LabelmapSegmentStatisticsPlugin"
MEASUREMENTS = {"voxel_count": False, "volume_mm3": False, "volume_cm3": True}


def boneVolumeTable(segmentationNode):
    """Compute the bones' volumes with Segment Statistics; return the filled ``vtkMRMLTableNode``."""
    from SegmentStatistics import SegmentStatisticsLogic

    scene = segmentationNode.GetScene()
    table = segmentationNode.GetNodeReference(TABLE_REFERENCE_ROLE)
    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode",
                                        scene.GenerateUniqueName(_("{name} bone volumes").format(
                                            name=segmentationNode.GetName())))
        segmentationNode.SetNodeReferenceID(TABLE_REFERENCE_ROLE, table.GetID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if shNode is not None:
            parent = shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode))
            shNode.CreateItem(parent or shNode.GetSceneItemID(), table)
    logic = SegmentStatisticsLogic()
    parameters = logic.getParameterNode()
    try:
        parameters.SetParameter("Segmentation", segmentationNode.GetID())
        parameters.SetParameter("visibleSegmentsOnly", str(False))
        for plugin in logic.plugins:
            parameters.SetParameter(f"{plugin.__class__.__name__}.enabled", str(plugin.__class__.__name__ == LABELMAP_PLUGIN))
        for key, enabled in MEASUREMENTS.items():
            parameters.SetParameter(f"{LABELMAP_PLUGIN}.{key}.enabled", str(enabled))
        logic.computeStatistics()
        logic.exportToTable(table)
    finally:
        scene.RemoveNode(parameters)  # Segment Statistics' own parameter node: not a result
    return table


def volumesMl(table) -> dict:
    """{segment name: volume in mL} read back from a table this module filled."""
    vtkTable = table.GetTable()
    names = vtkTable.GetColumn(0)
    volumes = vtkTable.GetColumn(vtkTable.GetNumberOfColumns() - 1)
    return {names.GetValue(row): float(volumes.GetValue(row)) for row in range(vtkTable.GetNumberOfRows())}
