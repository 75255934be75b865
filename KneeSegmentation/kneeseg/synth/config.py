"""The synthesizer's settings: the ranges of its random draws, checked when read from a card or file."""

import dataclasses
from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class SynthesisConfig:
    """Ranges of the random draws. ``(a, b)`` pairs are uniform ranges unless stated otherwise.

    Geometry (what part of which knee, seen how):
      fibula_weight: sampling weight of a label map that has a fibula, relative to 1 for the others
        (only two maps have one).
      window_scale: log-uniform factor on the nominal field of view (``window_mm``): pixel size and
        apparent knee size vary together.
      centre_shift_mm: standard deviation of the shift of the view centre from the knee centre (per
        axis, clipped at two standard deviations).
      slab_half_mm: the slices of one sample stack lie within +- this distance from the centre along
        the slice axis, spread like the slices of a whole volume.
      max_rotation_deg: rotation about each LPS axis (patient positioning, oblique acquisitions).
      scale_range: anisotropic scaling of the anatomy per axis.
      max_deformation_mm: standard deviation (itself drawn in [0, this]) of a smooth random
        displacement given on cubic-spline control points ``deformation_spacing_mm`` apart.
      mirror_probability: left/right mirroring (left and right knees).
      extend_shafts_probability: repeat the last slices of the label map above and below its field of
        view (bone shafts are nearly cylinders), so that bones do not always end at a scan edge.
      fibula_view_probability: a view of a fibula-bearing map is centred on the fibula (its voxels'
        centroid, plus the usual shift) instead of the knee, its slices within ``draws.FIBULA_SLAB_HALF_MM``
        of that centre: most of them cut the fibula, which knee-centred views show in a fifth of slices.
        Tried in rounds 13-14 and dropped: it brought back thigh muscle labelled femur on a real DESS
        scan (docs/evaluation.md, round 15).

    Appearance (how the knee looks):
      preset_probability: tissue means follow one of the MRI contrast presets (T1, PD, PD fat-sat, T2,
        DESS) with ``intensity_jitter``; otherwise every tissue kind gets a uniform random mean.
      shared_bone_probability: the four bones share one marrow intensity (plus a small jitter).
      fibula_like_tibia_probability: when they do not, the fibula still takes the tibia's (plus a small
        jitter), as the marrow of the two bones of the lower leg does in real scans; a fibula of its
        own random intensity is a plain blob that only its outline tells from the background structures.
      marrow_like_fat_probability: every bone's marrow takes the fat's intensity (plus a small jitter),
        as the fatty marrow of adult knee bones does in every common contrast (bright with the subcutaneous
        and Hoffa's fat in T1, PD and T2 spin echo; dark with it in fat-suppressed and water-excitation DESS
        scans); otherwise the bones' means are drawn as above, in any relation to the fat (red marrow, edema,
        other sequences). Without the tie a bright smooth region is bone as often as muscle: in a DESS scan
        the thigh muscle is the bright one and the marrow is as dark as the fat (measured on the real DESS
        volume: marrow 0.057, subcutaneous fat 0.051, vastus medialis 0.48 of the 99.5th percentile).
      texture_std: range of the amplitude of intra-structure texture (fraction of full scale).
      texture_sigma_px: range of the correlation length of that texture.
      background_classes: number of random smooth structures (muscle, fat, fluid stand-ins) that fill
        unlabelled space inside the body; background_blob_mm: their size.
      muscle_stretch_probability, muscle_stretch: those structures are stretched along the limb
        (superior-inferior) by this log-uniform factor, as thigh and calf muscles are: long shapes
        beside the knee are not always a bone shaft.
      septum_probability, septum_mm: thin lines of their own intensity (fat or fibrous tissue) between
        those structures, as the septa between muscles: an outlined region is not always a bone.
      air_probability: there is air (zero signal) outside a random body outline.
      subcutaneous_fat_probability, fat_layer_mm: a fat layer under the skin.
      cortex_probability, cortex_mm: a cortical rim of that width at bone edges, dark (as in every
        MRI contrast) with dark_cortex_probability, of random intensity otherwise.
      hidden_rim_probability: no rim is drawn (around any bone: the rim is one setting for all) when the
        femur's marrow is as dark as a cortex (``draws.HIDDEN_RIM_MARROW_MAX``), as in fat-suppressed and
        water-excitation (DESS) scans, where dark marrow meets a dark cortex with no line between them.
        Meant to stop a network that ends the bone at a dark line from carrying the femur on into the
        bright vastus beside a real DESS condyle (docs/evaluation.md, probe 48). Tried in rounds 45-46 and
        not kept: it did not reduce that error. 0 (the default): as before.
      rim_outside_probability: that rim is drawn just OUTSIDE the bone label (over the neighbouring
        tissue) instead of inside it: the label edge is then the inner edge of the dark band, where
        annotators of real scans put the bone surface (docs: the dark band lies 0.35-2.15 mm outside
        the real labelled slices' bone edges). 0 keeps the rim inside, as before this option.
      striation_probability, striation_mm, striation_fraction, striation_angle_deg: fine streaks inside
        the soft tissue (the fat and fascia between muscle fibre bundles), about a pixel wide, running
        along the limb as it lies in the slice (short dots where the limb crosses the slice) turned by up
        to striation_angle_deg (pennate muscle), of about striation_mm length (the standard deviation of
        their smoothing along the fibres), covering striation_fraction of the soft tissue, with the fat's
        intensity (dark in DESS, bright in T1) or a fibrous one. Real thigh muscle on a DESS scan is a
        bright region with such streaks; bone marrow has none. A striation_probability of 0 (the
        default) draws every sample as the generator did before this option.
      decoy_probability, decoy_shift_mm, decoy_contrast: a bone-shaped structure that is not bone: the femur's
        or the tibia's shape moved sideways (medially or laterally by decoy_shift_mm, up to 20 mm forwards or
        back, and away from the joint by up to 30 mm) and painted, where it covers soft tissue below the skin's
        fat layer, as a smooth soft-tissue region at least decoy_contrast away from that bone's intensity (the
        farthest of 0 and 1 where no intensity is that far), with the soft tissue's fibre streaks and, half the
        time, a fat-coloured outline along its shape, as wide as a septum (septum_mm). Real thigh and calf
        muscles lie beside the shafts in just such shapes (the vastus above a condyle in a sagittal slice at the
        knee's edge, where a central slice shows the shaft); a region is bone only if it also looks like the
        image's marrow.
      bias_std: standard deviation of the log of a smooth multiplicative bias field.
      thick_slice_probability, slice_thickness_mm: simulated thick 2D acquisition, along the slice
        axis (half of the cases: partial-volume average) or along one in-plane axis (averaged and
        re-interpolated, as a coronal view of a sagittal scan).
      blur_sigma_px: in-plane Gaussian blur.
      noise_std: Gaussian noise (fraction of full scale); rician_probability: magnitude (Rician) noise.
      gamma_log_std: standard deviation of log(gamma) of a final intensity gamma curve.
      fov_crop_probability, fov_crop_fraction: zero everything outside a random box (a smaller field
        of view), whose sides are that fraction of the image.

    Context (only for a network that sees neighbouring slices, ``NetworkSpec.context_slices``): the
    neighbours lie as far apart as the slices of the frame inference cuts, which keep the scan's own
    spacing but are never finer than ``FrameSpec.min_slice_mm``:
      context_drop_probability: no neighbours, the slice repeated in every channel (a single-slice
        image, and what the first and last slice of a frame see in part);
      thick slices along the slice axis: their thickness times ``context_gap`` apart (slice gaps);
      otherwise ``min_slice_mm`` apart with context_fine_probability (a fine scan, or a plane across
        a thick one), else a spacing in ``context_spacing_mm``.

    Slice position (a network with ``slice_position``; ``synthesizer.synthetic_slice_positions_mm``):
      position_error_mm: standard deviation (clipped at three) of the error of the knee centre the
        slice's distance is measured from, one per stack, as inference's first pass has (median 4 mm on
        held-out synthetic volumes).
      position_unknown_probability: a stack's position is not given (both channels 0), as for a single
        slice or the first pass, so that the network still labels slices without it.
    """

    fibula_weight: float = 10.0
    window_scale: tuple = (0.8, 1.25)
    centre_shift_mm: float = 15.0
    slab_half_mm: float = 45.0
    max_rotation_deg: float = 20.0
    scale_range: tuple = (0.9, 1.1)
    max_deformation_mm: float = 3.0
    deformation_spacing_mm: float = 40.0
    mirror_probability: float = 0.5
    extend_shafts_probability: float = 0.5
    fibula_view_probability: float = 0.0

    preset_probability: float = 0.5
    shared_bone_probability: float = 0.7
    fibula_like_tibia_probability: float = 0.0
    intensity_jitter: float = 0.06
    marrow_like_fat_probability: float = 0.0
    texture_std: tuple = (0.0, 0.08)
    texture_sigma_px: tuple = (0.7, 2.0)
    background_classes: tuple = (2, 6)
    background_blob_mm: tuple = (10.0, 40.0)
    muscle_stretch_probability: float = 0.6
    muscle_stretch: tuple = (1.5, 5.0)
    septum_probability: float = 0.5
    septum_mm: tuple = (0.5, 2.0)
    air_probability: float = 0.8
    subcutaneous_fat_probability: float = 0.6
    fat_layer_mm: tuple = (3.0, 15.0)
    cortex_probability: float = 0.9
    cortex_mm: tuple = (0.7, 2.0)
    dark_cortex_probability: float = 0.85
    rim_outside_probability: float = 0.0
    hidden_rim_probability: float = 0.0
    striation_probability: float = 0.0
    striation_mm: tuple = (2.0, 8.0)
    striation_fraction: tuple = (0.02, 0.10)
    striation_angle_deg: float = 25.0
    decoy_probability: float = 0.0
    decoy_shift_mm: tuple = (20.0, 45.0)
    decoy_contrast: float = 0.2
    bias_std: tuple = (0.0, 0.35)
    thick_slice_probability: float = 0.5
    slice_thickness_mm: tuple = (1.5, 6.0)
    blur_sigma_px: tuple = (0.0, 1.0)
    noise_std: tuple = (0.0, 0.06)
    rician_probability: float = 0.5
    gamma_log_std: float = 0.3
    fov_crop_probability: float = 0.2
    fov_crop_fraction: tuple = (0.55, 1.0)

    position_error_mm: float = 5.0
    position_unknown_probability: float = 0.2

    context_drop_probability: float = 0.1
    context_fine_probability: float = 0.5
    context_spacing_mm: tuple = (1.5, 4.0)
    context_gap: tuple = (1.0, 1.25)


# The held-out synthetic benchmark (``evaluate_synthetic``) keeps the generator it was first reported
# with, so that its numbers stay comparable across models: no stretched structures, no septa.
EVALUATION_CONFIG = SynthesisConfig(muscle_stretch_probability=0.0, septum_probability=0.0)
# The same volumes with the dark cortical rim just outside the bone label (the convention of real
# annotations, issue 12): only the rim moves, every other draw is the same (it is drawn last).
EVALUATION_CONFIG_RIM_OUTSIDE = dataclasses.replace(EVALUATION_CONFIG, rim_outside_probability=1.0)


def synthesis_config(overrides=None) -> SynthesisConfig:
    """The generator's settings: the defaults with ``overrides`` (a dict of field values, e.g. a card's
    ``training.data.synthesis``) applied. Unknown names and wrong types are refused by name."""
    if not overrides:
        return SynthesisConfig()
    if not isinstance(overrides, dict):
        raise InputError(f"synthesis settings must be a JSON object of field values, not {type(overrides).__name__}")
    defaults = SynthesisConfig()
    names = [f.name for f in dataclasses.fields(defaults)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InputError(f"unknown synthesis setting(s) {', '.join(unknown)} (known: {', '.join(names)})")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    values = {}
    for name, value in overrides.items():
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(map(number, value))
        else:
            ok = number(value)
        if not ok:
            raise InputError(f"synthesis setting {name} must be like {default!r}, not {value!r}")
        values[name] = tuple(value) if isinstance(default, tuple) else value
    return dataclasses.replace(defaults, **values)

