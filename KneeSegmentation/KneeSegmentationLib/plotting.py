"""Live training chart in a Slicer plot view: loss and mean Dice (training and validation) per epoch.

The history is a ``vtkMRMLTableNode`` (columns epoch, loss, val_loss, dice, val_dice); each metric is a
``vtkMRMLPlotSeriesNode`` over that table; a ``vtkMRMLPlotChartNode`` holds the series. Adding an
epoch appends a row and marks the table modified, so any plot view showing the chart redraws.
The nodes are part of the scene (saved with it), named after the run.
"""

import math

import slicer
import vtk

COLUMNS = ("epoch", "loss", "val_loss", "dice", "val_dice")
SERIES = (  # column, legend, colour
    ("loss", "Training loss", (0.85, 0.33, 0.10)),
    ("val_loss", "Validation loss", (0.93, 0.69, 0.13)),
    ("dice", "Training Dice", (0.47, 0.67, 0.19)),
    ("val_dice", "Validation Dice", (0.00, 0.45, 0.74)),
)
# Keras log keys of each column, first found wins (the core logs the bones' mean Dice).
LOG_KEYS = {
    "loss": ("loss",),
    "val_loss": ("val_loss",),
    "dice": ("mean_dice", "dice"),
    "val_dice": ("val_mean_dice", "val_dice"),
}


class TrainingPlot:
    def __init__(self, scene, name="KneeSegmentation training"):
        self.scene = scene
        self.tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} history")
        table = self.tableNode.GetTable()
        for column in COLUMNS:
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            table.AddColumn(array)
        self.seriesNodes = []
        self.chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} chart")
        self.chartNode.SetTitle(name)
        self.chartNode.SetXAxisTitle("Epoch")
        self.chartNode.SetYAxisTitle("Loss / Dice")
        self.chartNode.SetLegendVisibility(True)
        for column, legend, color in SERIES:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", legend)
            series.SetAndObserveTableNodeID(self.tableNode.GetID())
            series.SetXColumnName("epoch")
            series.SetYColumnName(column)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetColor(*color)
            self.chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
            self.seriesNodes.append(series)

    @property
    def numberOfEpochs(self) -> int:
        return self.tableNode.GetTable().GetNumberOfRows()

    def addEpoch(self, epoch, logs: dict) -> None:
        """Append one row; a metric missing from ``logs`` is stored as NaN (a gap in the plot)."""
        table = self.tableNode.GetTable()
        values = {"epoch": float(epoch)}
        for column in COLUMNS[1:]:
            raw = next((logs[key] for key in LOG_KEYS[column] if key in logs), None)
            try:
                values[column] = float(raw)
            except (TypeError, ValueError):
                values[column] = math.nan
        for column in COLUMNS:
            table.GetColumnByName(column).InsertNextValue(values[column])
        table.Modified()
        self.tableNode.Modified()

    def column(self, name) -> list:
        array = self.tableNode.GetTable().GetColumnByName(name)
        return [array.GetValue(i) for i in range(array.GetNumberOfTuples())]

    def nodes(self) -> list:
        return [self.tableNode, self.chartNode] + self.seriesNodes
