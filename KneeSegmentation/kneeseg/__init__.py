"""kneeseg: knee bone segmentation in MRI (femur, tibia, fibula, patella) with a U-Net.

The pure core of the KneeSegmentation 3D Slicer extension. It imports no Slicer and no Qt module,
so it runs in Slicer's Python, a plain virtualenv and on a cluster node alike. Stages, one module
each: ``io`` -> ``preprocess`` -> ``model`` -> ``train`` / ``infer`` -> ``postprocess``.
Heavy dependencies (TensorFlow/Keras, SimpleITK) are imported inside the functions that need them.
"""

__version__ = "0.1.0"

INTENDED_USE = ("For research use only: not a medical device, not for diagnosis or treatment decisions. "
                "Check every result before you use it.")
