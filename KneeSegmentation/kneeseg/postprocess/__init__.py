"""From the network's output to the label map: the steps after the network, one module each.

``fusion``: the planes' class probabilities brought back onto the scan's grid, averaged and turned
into labels (tri-planar fusion); ``cleanup``: one piece per bone, holes filled, bone volumes.
"""
