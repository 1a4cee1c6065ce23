"""Drawing one synthetic pedestrian crop: identity attributes, camera model, domain style -> JPEG-ready image.

A person is a handful of masks (head, hair, torso, arms, legs, shoes, hat, bag) evaluated on a
coordinate grid, painted over a per-camera background. Rendering is 2x supersampled (128x64) and
reduced to the saved 64x32 so edges look like a real downscaled crop. Everything random comes from
the `numpy.random.Generator` passed in, so one seed gives one image.

Three layers of variation, each with its own dataclass:
- `Identity`: what stays the same for one person (clothes, colours, build, accessories);
- `CameraModel`: what one camera does to everyone (viewpoint, colour cast, scene, framing);
- `DomainStyle`: what one whole dataset does (fashion palette, white balance, lighting range,
  scene family, sensor noise, blur, resolution, JPEG quality). `synthetic.DOMAINS` sets its values.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

RENDER_H, RENDER_W = 128, 64
"""Canvas the person is drawn on (2x the saved size)."""
OUT_H, OUT_W = 64, 32
"""Saved image size (height, width); training resizes to its profile's size."""
BACKGROUND_FAMILIES = ("street", "campus", "indoor")
VIEWS = ("front", "back", "side")

_PAD_Y, _PAD_X = 24, 16
_YY, _XX = (a.astype(np.float32) + 0.5 for a in np.mgrid[0:RENDER_H, 0:RENDER_W])

RGB = tuple[float, float, float]

_NEUTRALS: dict[str, RGB] = {
    "black": (0.07, 0.07, 0.08),
    "charcoal": (0.22, 0.22, 0.24),
    "grey": (0.50, 0.50, 0.50),
    "white": (0.88, 0.88, 0.86),
    "navy": (0.10, 0.12, 0.30),
    "beige": (0.78, 0.70, 0.55),
    "brown": (0.36, 0.23, 0.13),
}
_HUES = (0.0, 0.07, 0.14, 0.33, 0.48, 0.60, 0.75, 0.90)
"""Named clothing hues (red, orange, yellow, green, teal, blue, purple, pink) before the domain's shift."""
_SKINS: tuple[RGB, ...] = ((0.95, 0.80, 0.68), (0.87, 0.68, 0.52), (0.72, 0.52, 0.37), (0.50, 0.34, 0.23))
_HAIRS: tuple[RGB, ...] = ((0.05, 0.04, 0.04), (0.22, 0.14, 0.08), (0.45, 0.32, 0.18), (0.75, 0.62, 0.40))
UPPER_PATTERNS = ("plain", "stripes", "checks", "jacket", "logo")
PERSON_HEIGHT_LIMITS = (0.6, 1.3)
"""Person height / crop height of any image; above 1 the crop cuts off the head top and the feet."""


KNOB_MEANINGS: dict[str, str] = {
    "cameras": "How many cameras film the domain; each camera has its own light, tint and scene.",
    "dark_clothing": "The chance that a garment is a dull colour (black, grey, navy) instead of a bright one.",
    "hue_shift": "How far the bright clothing colours are turned around the colour wheel, so that red "
                 "here is orange there.",
    "saturation": "How vivid the bright clothing colours are: above 1 more vivid, below 1 more washed out.",
    "lightness": "How much lighter (above 0) or darker (below 0) the bright clothing colours are.",
    "coat": "The chance that a person wears a long coat.",
    "summer": "The chance that a person wears shorts or a skirt instead of trousers.",
    "backpack": "The chance that a person carries a backpack.",
    "temperature": "The white balance of the light: -1 cool and blue, 0 neutral, +1 warm and orange.",
    "brightness": "The range of how bright each image is lit, as a gain: 1 is unchanged.",
    "contrast": "How strongly light and dark parts differ: above 1 more contrast, below 1 flatter.",
    "camera_cast": "How strongly each camera tints every colour it films with its own colour cast.",
    "camera_desaturation": "How much colour a camera may lose: 0 none, 1 a camera may film in grey.",
    "backgrounds": "The kinds of scene (street, campus, indoor...) that the cameras look at.",
    "texture": "How much fabric and scene texture is drawn: 0 flat colours.",
    "noise": "How much grainy sensor noise each image has (0 none).",
    "blur": "How out of focus the images are, as a blur radius in pixels.",
    "downsample": "How much resolution is lost: the image is shrunk by this factor and enlarged back (1 none).",
    "jpeg_quality": "The JPEG compression quality: lower values leave more blocky artefacts.",
    "occlusion": "The chance that something hides part of the person.",
    "scale": "The range of the person's height as a share of the image height: above 1 the head and feet "
             "are cut off.",
    "camera_haze": "How far each camera pulls every image towards its own ambient colour (haze, glare, "
                   "tinted glass): one person looks different in two cameras, two people alike in one.",
    "family_size": "How many identities share one outfit and differ only in one cue (look_alike_cue): "
                   "1, none; 3, families of three look-alikes.",
    "look_alike_cue": "What tells look-alikes apart in this domain: their trousers, the colour of their top, "
                      "their bag, their hair, or the second colour of their top.",
}
"""One sentence per knob of the data tour's style table, for a reader who has not read the renderer."""


@dataclass(frozen=True)
class DomainStyle:
    """Every knob that makes one synthetic domain look unlike another (the domain gap, in one place).

    Clothing (what people wear there), light and scene, the sensor, and the framing; ``KNOB_MEANINGS``
    says in one sentence what each knob does, and the data tour shows it beside each domain's value.
    """

    dark_clothing: float
    hue_shift: float
    saturation: float
    lightness: float
    coat: float
    summer: float
    backpack: float
    temperature: float
    brightness: tuple[float, float]
    contrast: float
    camera_cast: float
    camera_desaturation: float
    backgrounds: tuple[str, ...]
    texture: float
    noise: float
    blur: float
    downsample: float
    jpeg_quality: int
    occlusion: float
    scale: tuple[float, float]
    camera_haze: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.camera_haze < 1.0:
            raise ValueError(f"DomainStyle.camera_haze must lie in [0, 1), got {self.camera_haze}")
        unknown = [b for b in self.backgrounds if b not in BACKGROUND_FAMILIES]
        if not self.backgrounds or unknown:
            raise ValueError(f"DomainStyle.backgrounds must be a non-empty subset of {BACKGROUND_FAMILIES}, "
                             f"got {self.backgrounds}")
        if self.downsample < 1.0:
            raise ValueError(f"DomainStyle.downsample must be >= 1, got {self.downsample}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"DomainStyle.jpeg_quality must lie in 1..95, got {self.jpeg_quality}")
        if not 0.0 <= self.camera_desaturation <= 1.0:
            raise ValueError(f"DomainStyle.camera_desaturation must lie in [0, 1], got {self.camera_desaturation}")
        low, high = PERSON_HEIGHT_LIMITS
        if not low <= self.scale[0] <= self.scale[1] <= high:
            raise ValueError(f"DomainStyle.scale must be an ordered range within {PERSON_HEIGHT_LIMITS}, "
                             f"got {self.scale}")


@dataclass(frozen=True)
class CameraModel:
    """What one camera does to every person it sees.

    `view` is the direction most people face in this camera (walking towards, away, or across it),
    `view_prob` how often they do; `flip` mirrors the walking direction; `gain` and `cast` are its
    exposure and RGB colour cast, `saturation` the share of colour saturation it keeps;
    `background`/`scene_seed` pick its scenery; `shift`, `shear` and `scale` frame the person
    (offset from the crop centre, lean, height in the crop); `occlusion`
    is this camera's chance of a partly hidden person; `haze` is the share of every image it blends
    towards its ambient colour `haze_colour` (``DomainStyle.camera_haze``).
    """

    index: int
    view: str
    view_prob: float
    flip: bool
    gain: float
    cast: RGB
    saturation: float
    background: str
    scene_seed: int
    shift: float
    shear: float
    scale: float
    occlusion: float
    haze: float = 0.0
    haze_colour: RGB = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Identity:
    """The stable appearance of one person: all images of an identity share these values."""

    skin: RGB
    hair: RGB
    long_hair: bool
    upper: RGB
    upper2: RGB
    upper_pattern: str
    stripe_period: float
    long_sleeves: bool
    coat: bool
    lower: RGB
    lower_kind: str
    shoes: RGB
    head: float
    torso: float
    shoulders: float
    leg_width: float
    hat: RGB | None
    bag: str
    bag_colour: RGB


def random_style(rng: np.random.Generator) -> DomainStyle:
    """A look drawn from broad ranges that hold every domain's (RandPerson's randomised persons and scenes):
    what a generic synthetic-people start is trained on. No look-alike families, no haze: those are the
    domains' own label noise, not a general look."""
    low = float(rng.uniform(0.55, 1.05))
    crop = float(rng.uniform(0.8, 1.15))
    return DomainStyle(
        dark_clothing=float(rng.uniform(0.1, 0.5)), hue_shift=float(rng.uniform(-0.1, 0.1)),
        saturation=float(rng.uniform(0.8, 1.2)), lightness=float(rng.uniform(-0.05, 0.08)),
        coat=float(rng.uniform(0.0, 0.3)), summer=float(rng.uniform(0.0, 0.6)), backpack=float(rng.uniform(0.2, 0.5)),
        temperature=float(rng.uniform(-0.6, 0.6)), brightness=(low, low + float(rng.uniform(0.2, 0.6))),
        contrast=float(rng.uniform(0.9, 1.1)), camera_cast=float(rng.uniform(0.0, 0.35)),
        camera_desaturation=float(rng.uniform(0.0, 0.4)),
        backgrounds=tuple(str(b) for b in rng.choice(BACKGROUND_FAMILIES, 3)), texture=float(rng.uniform(0.05, 0.3)),
        noise=float(rng.uniform(0.0, 0.03)), blur=float(rng.uniform(0.0, 0.5)), downsample=float(rng.uniform(1.0, 1.5)),
        jpeg_quality=int(rng.integers(75, 96)), occlusion=float(rng.uniform(0.0, 0.1)),
        scale=(crop, min(PERSON_HEIGHT_LIMITS[1], crop + float(rng.uniform(0.05, 0.2)))),
    )


def make_cameras(style: DomainStyle, num_cams: int, rng: np.random.Generator) -> tuple[CameraModel, ...]:
    """`num_cams` cameras whose viewpoints, colour casts, scenes and framing differ."""
    cams = []
    for index in range(1, num_cams + 1):
        cast = 1.0 + style.camera_cast * rng.uniform(-1.0, 1.0, 3)
        cams.append(CameraModel(
            index=index,
            view=VIEWS[(index - 1) % len(VIEWS)] if index <= len(VIEWS) else str(rng.choice(VIEWS)),
            view_prob=float(rng.uniform(0.55, 0.8)),
            flip=bool(rng.random() < 0.5),
            gain=float(rng.uniform(0.85, 1.15)),
            cast=tuple(float(c) for c in cast / cast.mean()),
            saturation=float(1.0 - style.camera_desaturation * rng.uniform(0.0, 1.0)),
            background=style.backgrounds[(index - 1) % len(style.backgrounds)],
            scene_seed=int(rng.integers(2**31)),
            shift=float(rng.uniform(-0.08, 0.08)),
            shear=float(rng.uniform(-0.12, 0.12)),
            scale=float(rng.uniform(*style.scale)),
            occlusion=float(np.clip(style.occlusion * rng.uniform(0.3, 1.7), 0.0, 0.9)),
        ))
    if style.camera_haze > 0:
        cams = [_with_haze(cam, style.camera_haze) for cam in cams]
    return tuple(cams)


def _with_haze(camera: CameraModel, strength: float) -> CameraModel:
    """``camera`` with its haze: a share around ``strength`` (half to 1.5 times, below 0.95) towards a colour
    of its own. Drawn from the camera's scene seed, so a domain without haze keeps its other draws."""
    rng = np.random.default_rng([camera.scene_seed, 1])
    colour = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.6), rng.uniform(0.35, 0.85))
    return replace(camera, haze=float(min(0.95, strength * rng.uniform(0.5, 1.5))),
                   haze_colour=tuple(float(c) for c in colour))


def _jitter(rgb: RGB, rng: np.random.Generator, amount: float) -> RGB:
    return tuple(float(np.clip(c + rng.normal(0.0, amount), 0.0, 1.0)) for c in rgb)


def _garment_colour(style: DomainStyle, rng: np.random.Generator) -> RGB:
    """A clothing colour from the domain's palette: neutral with prob `dark_clothing`, else a named hue."""
    if rng.random() < style.dark_clothing:
        names = list(_NEUTRALS)
        return _jitter(_NEUTRALS[names[int(rng.integers(len(names)))]], rng, 0.03)
    hue = (_HUES[int(rng.integers(len(_HUES)))] + style.hue_shift + rng.normal(0.0, 0.015)) % 1.0
    sat = float(np.clip(rng.uniform(0.45, 0.9) * style.saturation, 0.05, 1.0))
    val = float(np.clip(rng.uniform(0.45, 0.9) + style.lightness, 0.1, 1.0))
    return colorsys.hsv_to_rgb(hue, sat, val)


def sample_identity(style: DomainStyle, rng: np.random.Generator) -> Identity:
    """Draw one person's clothes, build and accessories from the domain's fashion."""
    summer = rng.random() < style.summer
    bag_draw = rng.random()
    if bag_draw < style.backpack:
        bag = "backpack"
    elif bag_draw < style.backpack + 0.15:
        bag = "shoulder"
    elif bag_draw < style.backpack + 0.25:
        bag = "handbag"
    else:
        bag = "none"
    return Identity(
        skin=_jitter(_SKINS[int(rng.integers(len(_SKINS)))], rng, 0.03),
        hair=_jitter(_HAIRS[int(rng.integers(len(_HAIRS)))], rng, 0.03),
        long_hair=bool(rng.random() < 0.35),
        upper=_garment_colour(style, rng),
        upper2=_garment_colour(style, rng),
        upper_pattern=UPPER_PATTERNS[int(rng.choice(len(UPPER_PATTERNS), p=(0.45, 0.17, 0.13, 0.15, 0.10)))],
        stripe_period=float(rng.uniform(0.03, 0.06)),
        long_sleeves=bool(rng.random() > (0.7 if summer else 0.15)),
        coat=bool(not summer and rng.random() < style.coat),
        lower=_garment_colour(style, rng),
        lower_kind=str(rng.choice(("shorts", "skirt"))) if summer else "trousers",
        shoes=_jitter(_NEUTRALS[str(rng.choice(("black", "white", "brown", "charcoal")))], rng, 0.04),
        head=float(rng.uniform(0.12, 0.155)),
        torso=float(rng.uniform(0.30, 0.37)),
        shoulders=float(rng.uniform(0.19, 0.27)),
        leg_width=float(rng.uniform(0.065, 0.09)),
        hat=_garment_colour(style, rng) if rng.random() < 0.15 else None,
        bag=bag,
        bag_colour=_garment_colour(style, rng),
    )


LOOK_ALIKE_CUES = ("lower", "upper", "bag", "hair", "upper2")
"""What can tell apart the members of a look-alike family (``DomainSpec.look_alike_cue``): the lower garment,
the top's main colour, the bag, the hair (with any hat), or the top's second colour (its stripes, checks,
jacket front or logo)."""


def vary_look_alike(ident: Identity, style: DomainStyle, cue: str, rng: np.random.Generator) -> Identity:
    """A look-alike of ``ident``: the same outfit and build, with the ``cue`` drawn anew, as people in one
    uniform or one season's coat differ in their trousers or their bag. A network learns to look at the
    cue only where labels tell look-alikes apart; each domain has its own cue, so a source's does not carry."""
    if cue == "lower":
        return replace(ident, lower=_garment_colour(style, rng))
    if cue == "upper":
        return replace(ident, upper=_garment_colour(style, rng))
    if cue == "bag":
        kinds = [kind for kind in ("backpack", "shoulder", "handbag") if kind != ident.bag]
        return replace(ident, bag=kinds[int(rng.integers(len(kinds)))], bag_colour=_garment_colour(style, rng))
    if cue == "hair":
        return replace(ident, hair=_jitter(_HAIRS[int(rng.integers(len(_HAIRS)))], rng, 0.03),
                       long_hair=not ident.long_hair, hat=None if ident.hat is not None else _garment_colour(style, rng))
    if cue == "upper2":
        pattern = ident.upper_pattern if ident.upper_pattern != "plain" else "jacket"
        return replace(ident, upper_pattern=pattern, upper2=_garment_colour(style, rng))
    raise ValueError(f"look-alike cue must be one of {LOOK_ALIKE_CUES}, got {cue!r}")


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Smooth random field in about [-1, 1]: a coarse Gaussian grid enlarged bilinearly."""
    coarse = rng.normal(0.0, 0.5, cells).astype(np.float32)
    img = Image.fromarray(coarse).resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def make_background(camera: CameraModel, style: DomainStyle) -> np.ndarray:
    """The scenery behind one camera, larger than the canvas so each image can crop it differently."""
    rng = np.random.default_rng(camera.scene_seed)
    h, w = RENDER_H + _PAD_Y, RENDER_W + _PAD_X
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = int(h * rng.uniform(0.4, 0.62))
    bg = np.empty((h, w, 3), np.float32)
    upper, lower = slice(0, horizon), slice(horizon, h)
    if camera.background == "street":
        wall = np.array(rng.choice([(0.72, 0.66, 0.58), (0.58, 0.58, 0.6), (0.62, 0.42, 0.35)]), np.float32)
        bg[upper] = wall
        period_x, period_y = rng.uniform(14, 24), rng.uniform(16, 26)
        windows = ((xx % period_x) < period_x * 0.55) & ((yy % period_y) < period_y * 0.6) & (yy < horizon - 6)
        bg[windows] = wall * 0.45 + np.float32(0.08)
        bg[lower] = np.float32(rng.uniform(0.45, 0.62))
        tiles = (((xx + yy * 0.3) % 12) < 1) | ((yy % 9) < 1)
        bg[tiles & (yy >= horizon)] *= 0.8
    elif camera.background == "campus":
        snow = rng.random() < 0.5
        top = rng.choice([(0.18, 0.32, 0.14), (0.55, 0.30, 0.22), (0.35, 0.4, 0.3)])
        bg[upper] = np.array(top, np.float32)
        foliage = _value_noise(rng, (h, w), (6, 4)) > 0.15
        bg[foliage & (yy < horizon)] = np.float32([0.12, 0.24, 0.1])
        bg[lower] = np.float32([0.9, 0.92, 0.95]) if snow else np.float32([0.3, 0.5, 0.22])
        path = np.abs(xx - w * rng.uniform(0.3, 0.7) - (yy - horizon) * rng.uniform(-0.5, 0.5)) < w * 0.25
        bg[path & (yy >= horizon)] = np.float32(rng.uniform(0.4, 0.6))
    else:
        wall = np.array(rng.choice([(0.85, 0.82, 0.72), (0.7, 0.78, 0.85), (0.8, 0.8, 0.8)]), np.float32)
        bg[upper] = wall
        door = (np.abs(xx - w * rng.uniform(0.1, 0.9)) < w * 0.18) & (yy > horizon * 0.25) & (yy < horizon)
        bg[door] = wall * 0.6
        bg[:max(3, horizon // 8)] = np.float32(1.0)
        floor = np.float32(rng.uniform(0.35, 0.7))
        gloss = 1.0 + 0.3 * np.exp(-((xx - w / 2) / (w * 0.3)) ** 2)
        bg[lower] = (floor * gloss[lower])[..., None]
    bg *= (1.0 + style.texture * 0.6 * _value_noise(rng, (h, w), (h // 6, w // 6)))[..., None]
    return np.clip(bg, 0.0, 1.0)


def _box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)


def _draw_person(img: np.ndarray, ident: Identity, u: np.ndarray, v: np.ndarray, view: str,
                 phase: float, rng: np.random.Generator, texture: float) -> np.ndarray:
    """Paint `ident` onto `img` in person coordinates (v: 0 top of head .. 1 soles; u: across, in heights).

    Returns the person's mask (used for shading).
    """
    canvas = np.zeros_like(img)
    drawn = np.zeros(img.shape[:2], bool)

    def put(mask: np.ndarray, colour: RGB | np.ndarray) -> None:
        canvas[mask] = colour
        drawn[mask] = True

    head, hip = ident.head, ident.head + ident.torso
    half = ident.shoulders / 2 * (0.62 if view == "side" else 1.0)
    aw = 0.055
    # Side view faces +u: the backpack hangs at -u; front/back mirror asymmetric items.
    mirror = -1.0 if view == "back" else 1.0

    if ident.bag == "backpack" and view == "side":
        put(_box(u, v, -half - 0.1, -half + 0.02, head + 0.04, hip - 0.04), ident.bag_colour)
    # Legs and lower garment.
    legs_top, soles = hip - 0.01, 0.985
    span = v - hip
    if view == "side":
        centres = (phase * 0.35 * span, -phase * 0.35 * span)
    else:
        gap = ident.leg_width * 0.6
        centres = (-gap - 0.01 * phase * span, gap + 0.01 * phase * span)
    leg = np.zeros_like(drawn)
    for c in centres:
        leg |= (np.abs(u - c) < ident.leg_width / 2) & (v >= legs_top) & (v < soles)
    cover = {"trousers": soles - 0.04, "shorts": hip + 0.35 * (1 - hip), "skirt": hip}[ident.lower_kind]
    put(leg & (v >= cover), ident.skin)
    put(leg & (v < cover), ident.lower)
    if ident.lower_kind == "skirt":
        flare = half * 0.9 + (v - hip) * 0.35
        put((np.abs(u) < flare) & (v >= hip - 0.01) & (v < hip + 0.45 * (1 - hip)), ident.lower)
    put(leg & (v >= soles - 0.04), ident.shoes)
    # Torso (a coat reaches below the hip) with the garment pattern.
    bottom = hip + (0.22 * (1 - hip) if ident.coat else 0.0)
    width = half * (1.0 - 0.12 * np.clip((v - head) / ident.torso, 0, 1))
    torso = (np.abs(u) < width) & (v >= head * 0.92) & (v < bottom)
    put(torso, ident.upper)
    period = ident.stripe_period
    if ident.upper_pattern == "stripes":
        put(torso & ((v % period) < period / 2), ident.upper2)
    elif ident.upper_pattern == "checks":
        put(torso & (((v % period) < period / 2) ^ ((u % period) < period / 2)), ident.upper2)
    elif ident.upper_pattern == "jacket" and view != "back":
        inner = half * (0.2 if view == "side" else 0.35)
        offset = half * 0.5 if view == "side" else 0.0
        put(torso & (np.abs(u - offset) < inner), ident.upper2)
    elif ident.upper_pattern == "logo" and view == "front":
        put(torso & _box(u, v, -half * 0.45, half * 0.45, head + 0.06, head + 0.06 + half * 0.8), ident.upper2)
    # Arms swing with the walking phase; short sleeves show skin below the elbow.
    arm_top, arm_bottom = head + 0.03, hip + 0.06
    sleeve_end = arm_bottom if ident.long_sleeves else arm_top + 0.4 * (arm_bottom - arm_top)
    arm_centres = (phase * 0.3 * (v - arm_top),) if view == "side" else (-half - aw / 2, half + aw / 2)
    for c in arm_centres:
        arm = (np.abs(u - c) < aw / 2) & (v >= arm_top) & (v < arm_bottom)
        put(arm & (v < sleeve_end), ident.upper)
        put(arm & (v >= sleeve_end), ident.skin)
    if ident.bag == "backpack" and view == "back":
        put(_box(u, v, -half * 0.7, half * 0.7, head + 0.05, hip - 0.03), ident.bag_colour)
    elif ident.bag == "backpack" and view == "front":
        for c in (-half * 0.55, half * 0.55):
            put((np.abs(u - c) < 0.016) & (v >= head) & (v < head + 0.2), ident.bag_colour)
    elif ident.bag == "shoulder":
        side = mirror * (half + 0.02)
        put(_box(u, v, min(side, side + mirror * 0.11), max(side, side + mirror * 0.11), hip - 0.1, hip + 0.05),
            ident.bag_colour)
        strap = np.abs((u + mirror * half * 0.8) - mirror * (v - head) * (2 * half / ident.torso)) < 0.014
        put(strap & (v >= head) & (v < hip - 0.1), ident.bag_colour)
    elif ident.bag == "handbag":
        hand = phase * 0.3 * (arm_bottom - arm_top) if view == "side" else half + aw / 2
        put(_box(u, v, hand - 0.045, hand + 0.045, arm_bottom - 0.01, arm_bottom + 0.08), ident.bag_colour)
    # Head: face towards the camera, hair covers the back; long hair falls to the shoulders.
    hw = head * 0.36
    head_mask = (u / hw) ** 2 + ((v - head / 2) / (head / 2)) ** 2 <= 1.0
    put(head_mask, ident.skin)
    if view == "back":
        hair = head_mask | (ident.long_hair & (np.abs(u) < hw * 1.05) & (v >= head / 2) & (v < head + 0.1))
    elif view == "side":
        hair = head_mask & ((u < -hw * 0.2) | (v < head * 0.35))
        hair |= ident.long_hair & _box(u, v, -hw * 1.05, -hw * 0.2, head / 2, head + 0.08)
    else:
        hair = head_mask & (v < head * 0.32)
        hair |= ident.long_hair & (np.abs(u) > hw * 0.72) & (np.abs(u) < hw * 1.15) & (v >= head * 0.2) & (
            v < head + 0.06)
    put(hair, ident.hair)
    if ident.hat is not None:
        put(_box(u, v, -hw * 1.1, hw * 1.1, -0.02, head * 0.3), ident.hat)
        brim = 0.05 if view == "side" else 0.0
        put(_box(u, v, -hw * 1.1, hw * 1.1 + brim, head * 0.25, head * 0.33), ident.hat)
    # Cloth texture and cylinder-like shading, then composite over the background.
    fold = 1.0 + texture * _value_noise(rng, img.shape[:2], (24, 12))
    shade = (1.0 - 0.28 * np.clip(u / (half + aw), -1, 1) ** 2) * (1.0 - 0.12 * v) * fold
    img[drawn] = canvas[drawn] * shade[drawn][:, None]
    return drawn


def _occlude(img: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> None:
    """Hide part of the person behind an obstacle at the bottom, a pole, or a passer-by at the side."""
    kind = rng.integers(3)
    colour = rng.uniform(0.1, 0.8, 3).astype(np.float32)
    if kind == 0:
        top = int(RENDER_H * rng.uniform(0.65, 0.85))
        grain = 1.0 + 0.2 * _value_noise(rng, (RENDER_H - top, RENDER_W), (3, 4))
        img[top:] = colour * grain[..., None]
    elif kind == 1:
        x0 = int(RENDER_W * rng.uniform(0.0, 0.8))
        img[:, x0:x0 + int(RENDER_W * rng.uniform(0.1, 0.2))] = colour
    else:
        left = rng.random() < 0.5
        width = int(RENDER_W * rng.uniform(0.2, 0.35))
        cols = slice(0, width) if left else slice(RENDER_W - width, RENDER_W)
        img[: RENDER_H // 2, cols] = _garment_colour(style, rng)
        img[RENDER_H // 2:, cols] = _garment_colour(style, rng)


def render_image(ident: Identity | None, camera: CameraModel, style: DomainStyle, background: np.ndarray,
                 rng: np.random.Generator) -> Image.Image:
    """One saved-size RGB crop of `ident` seen by `camera` in `style`; `ident=None` gives a background-only
    false detection (the kind of distractor Market-1501 has)."""
    dy, dx = int(rng.integers(_PAD_Y + 1)), int(rng.integers(_PAD_X + 1))
    img = background[dy:dy + RENDER_H, dx:dx + RENDER_W].copy()
    img *= np.float32(rng.uniform(0.9, 1.1))
    if ident is not None:
        person_h = RENDER_H * float(np.clip(camera.scale + rng.normal(0.0, 0.03), *PERSON_HEIGHT_LIMITS))
        top = (RENDER_H - person_h) * rng.uniform(0.3, 0.9)
        cx = RENDER_W * (0.5 + camera.shift + rng.normal(0.0, 0.04))
        view = camera.view if rng.random() < camera.view_prob else VIEWS[int(rng.integers(len(VIEWS)))]
        flip = camera.flip ^ bool(rng.random() < 0.25)
        shear = camera.shear + rng.normal(0.0, 0.03)
        v = (_YY - top) / person_h
        u = (_XX - cx) / person_h - shear * (v - 0.5)
        _draw_person(img, ident, -u if flip else u, v, view, float(rng.uniform(-1, 1)), rng, style.texture)
        if rng.random() < camera.occlusion:
            _occlude(img, style, rng)
    warm = style.temperature * 0.18
    light = camera.gain * rng.uniform(*style.brightness) * np.asarray(camera.cast, np.float32)
    light = light * (1.0 + rng.normal(0.0, 0.02, 3)) * np.array([1 + warm, 1.0, 1 - warm], np.float32)
    img = img * light.astype(np.float32)
    if camera.haze > 0:
        img = (1.0 - camera.haze) * img + np.float32(camera.haze) * np.asarray(camera.haze_colour, np.float32)
    grey = img.mean(axis=2, keepdims=True)
    img = (grey + np.float32(camera.saturation) * (img - grey) - 0.5) * np.float32(style.contrast) + 0.5
    out = Image.fromarray((np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)).reduce(2)
    if style.downsample > 1.0:
        low = (max(1, round(OUT_W / style.downsample)), max(1, round(OUT_H / style.downsample)))
        out = out.resize(low, Image.BILINEAR).resize((OUT_W, OUT_H), Image.BILINEAR)
    if style.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(style.blur))
    if style.noise > 0:
        noisy = np.asarray(out, np.float32) + rng.normal(0.0, style.noise * 255, (OUT_H, OUT_W, 3))
        out = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
    return out
