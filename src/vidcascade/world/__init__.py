"""The procedural captioned video world: coloured shapes moving over a dark background.

Public API: the vocabulary (``palette``), clip specs and rendering (``render``), seeded sampling
and ``clip_for`` (``generate``), prompt switches (``switch``), caption paraphrases (``captions``)
and their parser (``parse``).
"""

from vidcascade.world.captions import canonical_caption, caption
from vidcascade.world.generate import GeometryConfig, clip_for, sample_attrs, sample_spec, spec_from_attrs
from vidcascade.world.palette import (
    COLORS,
    MAX_BACKGROUND_LEVEL,
    MOTION_DIRECTIONS,
    MOTIONS,
    PALETTE,
    SHAPES,
    ColorName,
    MotionName,
    ObjectAttrs,
    ShapeName,
)
from vidcascade.world.parse import parse_caption
from vidcascade.world.render import ClipSpec, ObjectSpec, object_centers, render
from vidcascade.world.switch import SWITCH_KINDS, Switch, render_switch
from vidcascade.world.switch_sample import SwitchConfig, build_switch, sample_switch

__all__ = [
    "COLORS",
    "MAX_BACKGROUND_LEVEL",
    "MOTIONS",
    "MOTION_DIRECTIONS",
    "SWITCH_KINDS",
    "PALETTE",
    "SHAPES",
    "ClipSpec",
    "ColorName",
    "GeometryConfig",
    "MotionName",
    "ObjectAttrs",
    "ObjectSpec",
    "ShapeName",
    "Switch",
    "SwitchConfig",
    "build_switch",
    "canonical_caption",
    "caption",
    "clip_for",
    "object_centers",
    "parse_caption",
    "render",
    "render_switch",
    "sample_attrs",
    "sample_spec",
    "sample_switch",
    "spec_from_attrs",
]
