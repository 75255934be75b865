"""Domain-randomised synthetic training data from real knee label maps (SynthSeg-style).

No real knee MRI with bone labels is available for training, so the network learns from images that
are *painted* onto real label maps: every structure gets a random intensity, texture, bias field,
noise, blur and slice thickness, so that the only thing that stays constant across samples is the
anatomy. A model trained on such images does not depend on one MRI contrast (T1, PD, T2, fat-suppressed,
DESS with dark bone marrow, low field), orientation or knee side.

Read in the order the data flows: ``tissues`` (the tissue table, where label values come from) ->
``cache`` (label maps read once with SimpleITK, :func:`prepare_cache`) -> ``config`` (the ranges of the
random draws) -> ``draws`` (one volume's view and appearance) -> ``render`` (the steps from labels to
image, in order) -> ``synthesizer`` (:class:`SliceSynthesizer` batches for training, numpy/scipy only;
:func:`synthesize_volume` scans for evaluation); ``sheet`` draws examples.
"""

from .cache import (CachedLabelMap, bone_volume_ranges, cache_files, knee_centre_of, load_label_map, load_manifest,
                    prepare_cache)
from .config import EVALUATION_CONFIG, EVALUATION_CONFIG_RIM_OUTSIDE, SynthesisConfig, synthesis_config
from .sheet import write_example_sheet
from .synthesizer import SliceSynthesizer, synthesize_volume, write_labelled_volumes
from .tissues import BONE_IDS, DEFAULT_SOURCES, OUTSIDE_FIELD_OF_VIEW, TISSUE_IDS, TISSUES, LabelSource, Tissue

__all__ = ["BONE_IDS", "DEFAULT_SOURCES", "EVALUATION_CONFIG", "EVALUATION_CONFIG_RIM_OUTSIDE",
           "OUTSIDE_FIELD_OF_VIEW", "TISSUES", "TISSUE_IDS",
           "CachedLabelMap", "LabelSource", "SliceSynthesizer", "SynthesisConfig", "Tissue", "bone_volume_ranges",
           "cache_files",
           "knee_centre_of", "load_label_map", "load_manifest", "prepare_cache", "synthesis_config",
           "synthesize_volume", "write_example_sheet", "write_labelled_volumes"]
