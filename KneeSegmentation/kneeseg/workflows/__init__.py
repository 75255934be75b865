"""The use cases, each from data on disk to a result: the floor above the pipeline, below the CLI.

``train``: labelled volumes or the label-map cache -> a trained, measured bundle; ``evaluate``: a
bundle scored on labelled volumes, real labelled slices or held-out synthetic scans.
"""
