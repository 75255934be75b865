"""From a scan to the network's input: the steps before the network, one module each.

``frame``: the plane-aligned model frame (a square window around the knee centre) and the resampling
onto it and back; ``intensity``: standard scores and N4 bias correction; ``centre``: the knee centre
the windows are placed on. SimpleITK is imported inside the functions that need it.
"""
