"""Drawing a synthetic pedestrian (:func:`render_person`), and what every synthetic photo shares.

Everything is drawn with ``PIL.ImageDraw`` on a supersampled canvas (:data:`SS` = 2x), downscaled, then given
per-image lighting and noise with numpy (:func:`photometric`); street backdrops (:func:`street_background`) and the
backdrop helpers serve the faces (:mod:`xsearch.synth.faces`) and scenes (:mod:`xsearch.synth.scenes`) too. All
randomness comes from the ``numpy.random.Generator`` passed in, so the same generator state always gives the same
pixels.

A pedestrian is drawn back to front, one body part per step (``_draw_legs``, ``_draw_top``, ``_draw_head``...), in
*figure units*: ``x`` relative to the body's vertical axis and ``y`` from the top of the head (0) to the soles (1),
both multiplied by the figure height in pixels (:class:`_Fig`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from xsearch.synth.colours import RGB, clamp_rgb, shade
from xsearch.synth.sampling import choice

SS = 2  # supersampling factor

# Camera "styles" of the pedestrian sub-folders: per-channel gain, contrast, sharpness bias.
CAMERA_STYLES: dict[str, dict[str, Any]] = {
    "cam_a": {"cast": (1.06, 1.0, 0.92), "contrast": 1.0, "blur": 0.25},
    "cam_b": {"cast": (0.93, 0.99, 1.08), "contrast": 0.85, "blur": 0.45},
    "Market": {"cast": (1.0, 1.0, 1.0), "contrast": 1.08, "blur": 0.15},
}

# Colours that clutter (backgrounds, occluders) may use; includes the palette's hues on purpose.
CLUTTER_RGB: list[RGB] = [
    (28, 28, 30), (236, 236, 232), (125, 125, 128), (185, 28, 34), (38, 84, 190), (40, 128, 62),
    (232, 200, 40), (112, 72, 42), (238, 140, 175), (118, 58, 150), (236, 122, 30), (212, 190, 150),
    (90, 100, 110), (160, 150, 140), (70, 90, 70), (140, 120, 100), (180, 180, 170), (60, 60, 70),
]


# --------------------------------------------------------------------------------------------
# backgrounds and post-processing
# --------------------------------------------------------------------------------------------

def gradient(w: int, h: int, c1: Sequence[float], c2: Sequence[float], horizontal: bool = False) -> np.ndarray:
    t = np.linspace(0.0, 1.0, w if horizontal else h, dtype=np.float32)
    col = np.asarray(c1, np.float32)[None, :] * (1 - t[:, None]) + np.asarray(c2, np.float32)[None, :] * t[:, None]
    if horizontal:
        return np.broadcast_to(col[None, :, :], (h, w, 3))
    return np.broadcast_to(col[:, None, :], (h, w, 3))


def low_freq_noise(rng: np.random.Generator, w: int, h: int, amp: float) -> np.ndarray:
    small = rng.normal(0.0, amp, size=(int(rng.integers(3, 9)), int(rng.integers(2, 6)), 1)).astype(np.float32)
    im = Image.fromarray(np.clip(small[:, :, 0] + 128, 0, 255).astype(np.uint8), "L").resize((w, h), Image.BICUBIC)
    return (np.asarray(im, np.float32) - 128.0)[:, :, None]


def random_clutter_colour(rng: np.random.Generator) -> RGB:
    base = choice(rng, CLUTTER_RGB)
    return shade(base, float(rng.uniform(0.7, 1.15)))


def street_background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Street / wall / plaza scene at canvas size ``w`` x ``h``."""
    kind = int(rng.integers(3))
    horizon = int(h * rng.uniform(0.45, 0.8))
    wall1 = random_clutter_colour(rng) if rng.random() < 0.5 else clamp_rgb(rng.uniform(90, 220, 3))
    wall2 = shade(wall1, float(rng.uniform(0.6, 1.2)))
    ground1 = clamp_rgb(np.full(3, rng.uniform(70, 180)) + rng.normal(0, 12, 3))
    ground2 = shade(ground1, float(rng.uniform(0.7, 1.3)))
    arr = np.empty((h, w, 3), np.float32)
    arr[:horizon] = gradient(w, horizon, wall1, wall2, horizontal=bool(rng.random() < 0.3))
    arr[horizon:] = gradient(w, h - horizon, ground1, ground2)
    arr += low_freq_noise(rng, w, h, 30.0)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    if kind == 0:  # facades with windows
        x = -int(rng.integers(0, w // 2))
        while x < w:
            bw = int(rng.integers(w // 3, w))
            top = int(rng.integers(0, max(1, horizon // 2)))
            col = random_clutter_colour(rng)
            d.rectangle([x, top, x + bw, horizon], fill=col)
            win = shade(col, float(rng.uniform(0.4, 0.75))) if rng.random() < 0.6 else random_clutter_colour(rng)
            ww, wh = int(rng.integers(6, 18)), int(rng.integers(10, 26))
            for wy in range(top + 6, horizon - wh, wh + int(rng.integers(6, 16))):
                for wx in range(x + 4, x + bw - ww, ww + int(rng.integers(5, 14))):
                    d.rectangle([wx, wy, wx + ww, wy + wh], fill=win)
            x += bw + int(rng.integers(0, 10))
    elif kind == 1:  # trees / bushes / poles
        for _ in range(int(rng.integers(2, 6))):
            cx, cy = rng.uniform(0, w), rng.uniform(horizon * 0.2, horizon)
            r = rng.uniform(w * 0.15, w * 0.5)
            col = clamp_rgb((rng.uniform(30, 90), rng.uniform(70, 150), rng.uniform(30, 80))) if rng.random() < 0.7 \
                else random_clutter_colour(rng)
            d.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=col)
    else:  # tiles / panels
        step = int(rng.integers(12, 40))
        col = shade(wall1, float(rng.uniform(0.75, 0.9)))
        for yy in range(0, horizon, step):
            d.line([(0, yy), (w, yy)], fill=col, width=2)
        for xx in range(int(rng.integers(0, step)), w, step * 2):
            d.line([(xx, 0), (xx, horizon)], fill=col, width=2)
    # poles, signs, ground markings
    for _ in range(int(rng.integers(0, 3))):
        px = rng.uniform(0, w)
        pw = rng.uniform(2, 7)
        d.rectangle([px, rng.uniform(0, horizon * 0.6), px + pw, horizon + rng.uniform(0, h - horizon)],
                    fill=random_clutter_colour(rng))
    if rng.random() < 0.5:
        lc = shade(ground1, float(rng.uniform(1.3, 1.6)))
        for _ in range(int(rng.integers(1, 4))):
            y = rng.uniform(horizon, h)
            d.line([(rng.uniform(-w, w), y), (rng.uniform(0, 2 * w), y + rng.uniform(-20, 20))], fill=lc,
                   width=int(rng.integers(2, 6)))
    for _ in range(int(rng.integers(0, 4))):  # random small objects
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(3, w * 0.15)
        col = random_clutter_colour(rng)
        if rng.random() < 0.5:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        else:
            d.rectangle([cx - r, cy - r * rng.uniform(0.3, 1.5), cx + r, cy + r], fill=col)
    return img


def photometric(img: Image.Image, rng: np.random.Generator, *, cast: Sequence[float] = (1, 1, 1),
                contrast: float = 1.0, noise: tuple[float, float] = (2.0, 9.0), blur_p: float = 0.3,
                blur_radius: tuple[float, float] = (0.4, 1.0), extra_blur: float = 0.0) -> Image.Image:
    """Lighting (gain, colour cast, ramp), contrast, optional blur, gaussian noise."""
    if extra_blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(extra_blur))
    elif rng.random() < blur_p:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(*blur_radius))))
    a = np.asarray(img, np.float32)
    h, w = a.shape[:2]
    gain = rng.uniform(0.72, 1.22)
    ch = np.asarray(cast, np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    ramp_dir = int(rng.integers(2))
    ramp = np.linspace(-1.0, 1.0, w if ramp_dir else h, dtype=np.float32) * rng.uniform(-0.18, 0.18)
    ramp = ramp[None, :, None] if ramp_dir else ramp[:, None, None]
    mean = a.mean()
    c = contrast * rng.uniform(0.85, 1.12)
    a = (a - mean) * c + mean
    a = a * gain * ch[None, None, :] * (1.0 + ramp)
    a += rng.normal(0.0, rng.uniform(*noise), size=a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# pedestrian
# --------------------------------------------------------------------------------------------

class _Fig:
    """Maps figure units to canvas pixels and wraps the drawing primitives."""

    def __init__(self, d: ImageDraw.ImageDraw, cx: float, top: float, u: float, flip: bool = False):
        self.d, self.cx, self.top, self.u, self.sx = d, cx, top, u, (-1.0 if flip else 1.0)

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.sx * x * self.u, self.top + y * self.u)

    def poly(self, pts: Sequence[tuple[float, float]], fill: RGB, outline: RGB | None = None) -> None:
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill, outline=outline)

    def ell(self, x: float, y: float, rx: float, ry: float, fill: RGB | None, outline: RGB | None = None,
            width: float = 0) -> None:
        (px, py) = self.p(x, y)
        rxp, ryp = abs(rx * self.u), abs(ry * self.u)
        self.d.ellipse([px - rxp, py - ryp, px + rxp, py + ryp], fill=fill, outline=outline,
                       width=max(1, int(width * self.u)) if outline else 0)

    def line(self, pts: Sequence[tuple[float, float]], fill: RGB, width: float, round_ends: bool = True) -> None:
        wpx = max(1, int(round(width * self.u)))
        self.d.line([self.p(x, y) for x, y in pts], fill=fill, width=wpx, joint="curve")
        if round_ends and wpx > 2:
            for x, y in (pts[0], pts[-1]):
                self.ell(x, y, width / 2.0, width / 2.0, fill)

    def chord(self, x: float, y: float, rx: float, ry: float, start: float, end: float, fill: RGB) -> None:
        (px, py) = self.p(x, y)
        rxp, ryp = abs(rx * self.u), abs(ry * self.u)
        if self.sx < 0:
            start, end = 540 - end, 540 - start
        self.d.chord([px - rxp, py - ryp, px + rxp, py + ryp], start, end, fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)

    def arc(self, x: float, y: float, rx: float, ry: float, start: float, end: float, fill: RGB, width: float) -> None:
        (px, py) = self.p(x, y)
        rxp, ryp = abs(rx * self.u), abs(ry * self.u)
        if self.sx < 0:
            start, end = 180 - end, 180 - start
        self.d.arc([px - rxp, py - ryp, px + rxp, py + ryp], start, end, fill=fill,
                   width=max(1, int(round(width * self.u))))


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


Point = tuple[float, float]

SHOULDER_Y, WAIST_Y, HIP_Y = 0.17, 0.40, 0.5
"""Heights of the shoulders, the waist and the hips, in figure units."""


@dataclass
class _Pose:
    """How one image shows the figure: view, stride and lean drawn per image, body widths and legs derived from them.

    Widths are half-widths in figure units (narrower in side view); each leg is ``(hip, knee, ankle, sgn)``, the far
    leg (``sgn < 0``) drawn darker in side view.
    """

    view: str  # front / back / side
    stride: float  # -1..1: how far the legs and arms swing
    lean: float  # sideways tilt of torso and head
    shoulders: float
    waist: float
    hips: float
    hem_y: float  # lower edge of the top
    legs: list[tuple[Point, Point, Point, int]]

    @property
    def side(self) -> bool:
        return self.view == "side"

    @property
    def front(self) -> bool:
        return self.view == "front"

    def dim(self, sgn: int) -> float:
        """Shade of a limb: the far one in side view is darker."""
        return 0.85 if (self.side and sgn < 0) else 1.0


def _place_figure(a: dict[str, Any], rng: np.random.Generator, d: ImageDraw.ImageDraw, w2: int, h2: int,
                  ) -> tuple[_Fig, _Pose]:
    """Draw this image's view, mirroring, size, position, stride and lean; the figure's canvas mapping and pose."""
    view = str(rng.choice(["front", "back", "side"], p=[0.4, 0.3, 0.3]))
    flip = bool(rng.random() < 0.5)
    fh = h2 * float(rng.uniform(0.8, 0.94)) * a["height"]
    bottom_y = h2 * float(rng.uniform(0.94, 1.0))
    fh = min(fh, bottom_y - 2)
    top = bottom_y - fh
    cx = w2 * (0.5 + float(rng.uniform(-0.1, 0.1)))
    f = _Fig(d, cx, top, fh, flip)
    stride = float(rng.uniform(-1.0, 1.0))
    lean = float(rng.uniform(-0.015, 0.015))

    male = a["gender"] == "male"
    build = a["build"]
    side = view == "side"
    sw = (0.105 if male else 0.092) * build
    if side:
        sw = 0.05 * build
    waist = (0.08 if male else 0.066) * build
    hip_w = (0.075 if male else 0.082) * build
    if side:
        waist, hip_w = 0.055 * build, 0.06 * build
    hem_y = {"coat": 0.7, "dress": 0.69, "jacket": 0.52, "hoodie": 0.53}.get(a["top"], 0.51)
    legs = []
    if side:
        for sgn in (1, -1):
            th = sgn * stride * 0.32
            hip = (lean, HIP_Y)
            knee = (lean + math.sin(th) * 0.23 + 0.015, HIP_Y + math.cos(th) * 0.23)
            ankle = (knee[0] + math.sin(th - 0.15) * 0.23, min(0.955, knee[1] + math.cos(th - 0.15) * 0.23))
            legs.append((hip, knee, ankle, sgn))
    else:
        for sgn in (-1, 1):
            spread = 0.043 * build
            k = stride * sgn * 0.012
            hip = (sgn * spread, HIP_Y)
            knee = (sgn * (spread + 0.004) + k, 0.725)
            ankle = (sgn * (spread + 0.01) + 2 * k, 0.955 - max(0.0, stride * sgn) * 0.02)
            legs.append((hip, knee, ankle, sgn))
    return f, _Pose(view, stride, lean, sw, waist, hip_w, hem_y, legs)


def _hair_reach(a: dict[str, Any]) -> tuple[bool, float]:
    """Whether the hair falls below the head (long or medium) and down to which height."""
    return a["hair_length"] in ("long", "medium"), {"long": 0.32, "medium": 0.22}.get(a["hair_length"], 0.0)


def _draw_hair_behind(f: _Fig, a: dict[str, Any], pose: _Pose) -> None:
    """Long hair seen from the front falls behind the shoulders: drawn before the body."""
    hair_long, hair_end = _hair_reach(a)
    if hair_long and pose.view == "front":
        f.poly([(-0.058, 0.06), (0.058, 0.06), (0.07, hair_end), (-0.07, hair_end)], a["hair_rgb"])


def _draw_backpack_behind(f: _Fig, a: dict[str, Any], pose: _Pose) -> None:
    """A backpack seen from the side is behind the body."""
    sw, bagcol = pose.shoulders, a["bag_rgb"]
    if a["bag"] == "backpack" and pose.side:
        f.poly([(-sw - 0.085, 0.19), (-sw + 0.01, 0.18), (-sw + 0.01, 0.42), (-sw - 0.09, 0.41)], bagcol)
        f.line([(-sw - 0.08, 0.3), (-sw - 0.02, 0.3)], shade(bagcol, 0.7), 0.01)


def _arm_points(pose: _Pose, sgn: int) -> tuple[Point, Point, Point]:
    """Shoulder, elbow and hand of the arm on side ``sgn``, swinging with the stride."""
    stride, sw = pose.stride, pose.shoulders
    if pose.side:
        phi = -sgn * stride * 0.45
        s = (pose.lean * 0.5, SHOULDER_Y + 0.015)
        e = (s[0] + math.sin(phi) * 0.165, s[1] + math.cos(phi) * 0.165)
        hnd = (e[0] + math.sin(phi + 0.25) * 0.15, e[1] + math.cos(phi + 0.25) * 0.15)
        return s, e, hnd
    s = (sgn * (sw - 0.012), SHOULDER_Y + 0.015)
    e = (sgn * (sw + 0.022), 0.33 - abs(stride) * 0.01)
    hnd = (sgn * (sw + 0.02 + stride * sgn * 0.01), 0.47 - abs(stride) * 0.015)
    return s, e, hnd


def _draw_arm(f: _Fig, a: dict[str, Any], pose: _Pose, sgn: int, dim: float = 1.0) -> Point:
    """One arm (bare, short or long sleeve, a sweater's cuff) and its hand; returns where the hand is."""
    s, e, hnd = _arm_points(pose, sgn)
    top_t, tcol = a["top"], a["top_rgb"]
    sc = shade(tcol, dim)
    sk = shade(a["skin"], dim)
    wd = 0.046 * a["build"]
    if top_t == "dress" and a["sleeves"] == "none":
        f.line([s, e, hnd], sk, wd * 0.85)
    else:
        f.line([s, e], sk, wd)
        f.line([e, hnd], sk, wd * 0.9)
        if a["sleeves"] == "short" or (top_t == "dress"):
            f.line([s, _lerp(s, e, 0.6)], sc, wd + 0.012)
        else:
            f.line([s, e], sc, wd + 0.006)
            f.line([e, _lerp(e, hnd, 0.88)], sc, wd)
            if top_t == "sweater":
                f.line([_lerp(e, hnd, 0.8), _lerp(e, hnd, 0.88)], shade(tcol, 0.8 * dim), wd)
    f.ell(hnd[0], hnd[1], 0.024, 0.026, sk)
    return hnd


def _draw_leg(f: _Fig, hip: Point, knee: Point, ankle: Point, skin: RGB, bottom: str | None, bcol: RGB) -> None:
    """One leg: bare, then trousers / jeans (with a seam) or shorts over it."""
    thigh, calf = 0.062, 0.048
    # bare leg first
    f.line([hip, knee], skin, thigh)
    f.line([knee, ankle], skin, calf)
    if bottom in ("trousers", "jeans"):
        f.line([hip, knee], bcol, thigh + 0.006)
        f.line([knee, _lerp(knee, ankle, 0.97)], bcol, calf + 0.008)
        if bottom == "jeans":  # seam
            f.line([_lerp(hip, knee, 0.15), _lerp(knee, ankle, 0.9)], shade(bcol, 1.25), 0.006, round_ends=False)
    elif bottom == "shorts":
        f.line([hip, _lerp(hip, knee, 0.62)], bcol, thigh + 0.012)


def _draw_legs(f: _Fig, a: dict[str, Any], pose: _Pose) -> None:
    """Both legs, then the seat of the trousers or the skirt over them."""
    skin, bottom, bcol, hip_w = a["skin"], a["bottom"], a["bottom_rgb"], pose.hips
    for hip, knee, ankle, sgn in pose.legs:
        dim = pose.dim(sgn)
        _draw_leg(f, hip, knee, ankle, shade(skin, dim), bottom, shade(bcol, dim) if bcol else skin)
    if bottom in ("trousers", "jeans", "shorts"):
        f.poly([(-hip_w, HIP_Y - 0.04), (hip_w, HIP_Y - 0.04), (hip_w, HIP_Y + 0.05), (0, HIP_Y + 0.07),
                (-hip_w, HIP_Y + 0.05)], bcol)
    elif bottom == "skirt":
        sl = a.get("skirt_len", 0.68)
        f.poly([(-hip_w, HIP_Y - 0.05), (hip_w, HIP_Y - 0.05), (hip_w + 0.045, sl), (-hip_w - 0.045, sl)], bcol)


def _draw_shoes(f: _Fig, a: dict[str, Any], pose: _Pose) -> None:
    """A shoe at each ankle: boot shafts, a side or front outline, sneaker soles, sandal straps."""
    shoes, scol, skin, side = a["shoes"], a["shoes_rgb"], a["skin"], pose.side
    for hip, knee, ankle, sgn in pose.legs:
        dim = pose.dim(sgn)
        c = shade(scol, dim)
        ax, ay = ankle
        if shoes == "boots":
            f.line([(ax, ay - 0.09), (ax, ay - 0.005)], c, 0.058)
        if side:
            f.poly([(ax - 0.03, ay - 0.02), (ax + 0.05, ay - 0.005), (ax + 0.06, ay + 0.03), (ax - 0.032, ay + 0.03)],
                   c)
        else:
            f.ell(ax, ay + 0.012, 0.034, 0.024, c)
        if shoes == "sneakers":
            sole = (235, 235, 230) if sum(scol) < 600 else (70, 70, 70)
            f.line([(ax - 0.028, ay + 0.03), (ax + (0.05 if side else 0.028), ay + 0.03)], shade(sole, dim), 0.008,
                   round_ends=False)
        elif shoes == "sandals":
            f.line([(ax - 0.02, ay - 0.005), (ax + 0.02, ay - 0.005)], shade(skin, dim), 0.012, round_ends=False)


def _torso_outline(a: dict[str, Any], pose: _Pose) -> list[Point]:
    """The top's outline, shoulders to hem (flared for a dress or a coat), leaning with the pose."""
    sw, waist, hip_w, hem_y = pose.shoulders, pose.waist, pose.hips, pose.hem_y
    sh_y, waist_y = SHOULDER_Y, WAIST_Y
    if a["top"] == "dress":
        pts = [(-sw, sh_y), (sw, sh_y), (waist, waist_y), (hip_w + 0.06, hem_y), (-hip_w - 0.06, hem_y),
               (-waist, waist_y)]
    elif a["top"] == "coat":
        pts = [(-sw, sh_y), (sw, sh_y), (waist + 0.01, waist_y), (hip_w + 0.03, hem_y), (-hip_w - 0.03, hem_y),
               (-waist - 0.01, waist_y)]
    else:
        pts = [(-sw, sh_y), (sw, sh_y), (waist, waist_y), (hip_w, hem_y), (-hip_w, hem_y), (-waist, waist_y)]
    return [(x + pose.lean * (1 - y), y) for x, y in pts]


def _draw_stripes(f: _Fig, a: dict[str, Any], pose: _Pose, pts: list[Point]) -> None:
    """Horizontal stripes across a striped top, each as wide as the outline at its height."""

    def half_width(y: float) -> float:
        xs = [(p[1], abs(p[0])) for p in pts[1:4]]
        for (y0, x0), (y1, x1) in zip(xs, xs[1:]):
            if y0 <= y <= y1:
                return x0 + (x1 - x0) * (y - y0) / max(1e-6, y1 - y0)
        return xs[-1][1]

    sc = a["stripe_rgb"]
    y = SHOULDER_Y + 0.035
    while y < pose.hem_y - 0.01:
        hw = half_width(y)
        f.line([(-hw + 0.004, y), (hw - 0.004, y)], sc, 0.014, round_ends=False)
        y += 0.04


def _draw_top(f: _Fig, a: dict[str, Any], pose: _Pose) -> None:
    """The torso in the top's colour, its stripes, then what tells the garments apart (buttons, zip, collar, lapels,
    hood, pocket, hem, neckline, waist seam)."""
    top_t, tcol, skin = a["top"], a["top_rgb"], a["skin"]
    sw, waist, hip_w, hem_y, front = pose.shoulders, pose.waist, pose.hips, pose.hem_y, pose.front
    sh_y, waist_y = SHOULDER_Y, WAIST_Y
    dark_t = shade(tcol, 0.72)
    pts = _torso_outline(a, pose)
    f.poly(pts, tcol)
    f.ell(-sw + 0.01, sh_y + 0.02, 0.03, 0.025, tcol)
    f.ell(sw - 0.01, sh_y + 0.02, 0.03, 0.025, tcol)
    if a["pattern"] == "striped":
        _draw_stripes(f, a, pose, pts)
    if top_t == "shirt":
        if front:
            f.line([(0, sh_y + 0.01), (0, hem_y - 0.01)], dark_t, 0.006, round_ends=False)
            for yy in np.arange(sh_y + 0.05, hem_y - 0.02, 0.06):
                f.ell(0.008, float(yy), 0.006, 0.006, shade(tcol, 1.35))
        f.poly([(-0.035, sh_y - 0.01), (0.0, sh_y + 0.035), (0.035, sh_y - 0.01), (0.0, sh_y)], shade(tcol, 1.2))
    elif top_t == "jacket":
        if front:
            f.line([(0, sh_y + 0.01), (0, hem_y)], shade(tcol, 0.55), 0.008, round_ends=False)
            f.rect(-waist + 0.01, 0.42, -waist + 0.04, 0.44, dark_t)
            f.rect(waist - 0.04, 0.42, waist - 0.01, 0.44, dark_t)
        f.poly([(-0.04, sh_y - 0.015), (0.0, sh_y + 0.02), (0.04, sh_y - 0.015)], dark_t)
        f.rect(-hip_w, hem_y - 0.02, hip_w, hem_y, dark_t)
    elif top_t == "coat":
        if front:
            f.poly([(-0.045, sh_y - 0.01), (0.0, sh_y + 0.12), (0.045, sh_y - 0.01)], dark_t)
            for yy in (0.3, 0.38, 0.46):
                f.ell(-0.02, yy, 0.007, 0.007, shade(tcol, 0.5))
                f.ell(0.02, yy, 0.007, 0.007, shade(tcol, 0.5))
        else:
            f.line([(0, 0.5), (0, hem_y)], dark_t, 0.006, round_ends=False)
    elif top_t == "hoodie":
        if front:
            f.arc(0, sh_y - 0.005, 0.055, 0.04, 0, 180, dark_t, 0.018)
            f.poly([(-0.05, 0.41), (0.05, 0.41), (0.065, 0.48), (-0.065, 0.48)], dark_t)
            f.line([(-0.015, sh_y + 0.03), (-0.015, sh_y + 0.09)], shade(tcol, 1.4), 0.005, round_ends=False)
            f.line([(0.015, sh_y + 0.03), (0.015, sh_y + 0.09)], shade(tcol, 1.4), 0.005, round_ends=False)
        else:
            f.poly([(-0.06, sh_y - 0.02), (0.06, sh_y - 0.02), (0.045, sh_y + 0.09), (-0.045, sh_y + 0.09)], dark_t)
        f.rect(-hip_w, hem_y - 0.018, hip_w, hem_y, dark_t)
    elif top_t == "sweater":
        f.rect(-hip_w, hem_y - 0.025, hip_w, hem_y, shade(tcol, 0.8))
        f.arc(0, sh_y - 0.01, 0.04, 0.03, 0, 180, shade(tcol, 0.8), 0.012)
    elif top_t == "t-shirt" and front:
        f.arc(0, sh_y - 0.012, 0.035, 0.03, 0, 180, skin, 0.016)
    elif top_t == "dress":
        f.line([(-waist, waist_y + 0.01), (waist, waist_y + 0.01)], dark_t, 0.01, round_ends=False)


@dataclass(frozen=True)
class _Head:
    """The head ellipse: centre ``(x, y)``, radii ``rx``, ``ry`` (figure units)."""

    x: float
    y: float
    rx: float = 0.047
    ry: float = 0.06


def _draw_head(f: _Fig, a: dict[str, Any], pose: _Pose) -> _Head:
    """Neck, head (a nose in side view), scarf, and the face's eyes and mouth; returns the head."""
    skin, side = a["skin"], pose.side
    f.rect(-0.018, 0.11, 0.018, SHOULDER_Y + 0.005, shade(skin, 0.9))
    head = _Head(pose.lean * 1.2, 0.072)
    hx, hy = head.x, head.y
    f.ell(hx, hy, head.rx, head.ry, skin)
    if side:
        f.ell(hx + 0.04, hy + 0.012, 0.012, 0.01, skin)  # nose
    if a["scarf"]:
        sc = a["scarf_rgb"]
        f.poly([(-0.05, 0.12), (0.05, 0.12), (0.055, 0.18), (-0.055, 0.18)], sc)
        if not side:
            f.poly([(0.01, 0.17), (0.04, 0.17), (0.045, 0.3), (0.015, 0.3)], sc)
    if pose.front:
        ey = hy + 0.002
        f.ell(hx - 0.018, ey, 0.008, 0.006, (35, 30, 30))
        f.ell(hx + 0.018, ey, 0.008, 0.006, (35, 30, 30))
        f.line([(hx - 0.012, hy + 0.033), (hx + 0.012, hy + 0.033)], shade(skin, 0.6), 0.006, round_ends=False)
    elif side:
        f.ell(hx + 0.028, hy + 0.0, 0.007, 0.006, (35, 30, 30))
    return head


def _draw_hair(f: _Fig, a: dict[str, Any], pose: _Pose, head: _Head) -> None:
    """Hair on the head as the view shows it (long hair down the back or the sides), and a ponytail."""
    hair_len, hcol, view, side = a["hair_length"], a["hair_rgb"], pose.view, pose.side
    if hair_len == "bald":
        return
    hair_long, hair_end = _hair_reach(a)
    hx, hy, hrx, hry = head.x, head.y, head.rx, head.ry
    if view == "back":
        f.ell(hx, hy - 0.004, hrx + 0.006, hry + 0.002, hcol)
        if hair_long:
            f.poly([(hx - 0.053, hy), (hx + 0.053, hy), (hx + 0.06, hair_end), (hx - 0.06, hair_end)], hcol)
    elif side:
        f.ell(hx, hy - 0.03, hrx + 0.004, 0.035, hcol)
        f.ell(hx - 0.02, hy, 0.032, 0.05, hcol)
        if hair_long:
            f.poly([(hx - 0.05, hy - 0.01), (hx - 0.005, hy), (hx - 0.02, hair_end), (hx - 0.07, hair_end)],
                   hcol)
    else:
        f.chord(hx, hy - 0.008, hrx + 0.006, hry + 0.004, 180, 360, hcol)
        f.ell(hx, hy - 0.04, hrx + 0.002, 0.028, hcol)
        if hair_long:
            f.rect(hx - hrx - 0.006, hy - 0.03, hx - hrx + 0.01, hy + 0.05, hcol)
            f.rect(hx + hrx - 0.01, hy - 0.03, hx + hrx + 0.006, hy + 0.05, hcol)
    if hair_len == "ponytail":
        if view == "back":
            f.line([(hx, hy - 0.01), (hx + 0.01, hy + 0.13)], hcol, 0.03)
        elif side:
            f.line([(hx - 0.05, hy - 0.02), (hx - 0.07, hy + 0.1)], hcol, 0.028)
        else:
            f.ell(hx + 0.05, hy + 0.01, 0.015, 0.03, hcol)


def _draw_glasses(f: _Fig, a: dict[str, Any], pose: _Pose, head: _Head) -> None:
    """Two rims and a bridge from the front, one rim and a temple from the side; none from behind."""
    if not a["glasses"] or pose.view == "back":
        return
    gc, hx, hy = a["glasses_rgb"], head.x, head.y
    if pose.front:
        f.ell(hx - 0.018, hy + 0.002, 0.016, 0.012, None, gc, 0.006)
        f.ell(hx + 0.018, hy + 0.002, 0.016, 0.012, None, gc, 0.006)
        f.line([(hx - 0.046, hy), (hx + 0.046, hy)], gc, 0.005, round_ends=False)
    else:
        f.ell(hx + 0.03, hy + 0.002, 0.012, 0.012, None, gc, 0.006)
        f.line([(hx - 0.02, hy), (hx + 0.045, hy)], gc, 0.005, round_ends=False)


def _draw_hat(f: _Fig, a: dict[str, Any], pose: _Pose, head: _Head) -> None:
    """A cap (with its peak), a beanie (with its band) or a brimmed hat."""
    hat = a["hat"]
    if not hat:
        return
    c, hx, hy, hrx = a["hat_rgb"], head.x, head.y, head.rx
    if hat == "cap":
        f.chord(hx, hy - 0.025, hrx + 0.007, 0.05, 180, 360, c)
        if pose.front:
            f.ell(hx, hy - 0.02, 0.05, 0.012, shade(c, 0.8))
        elif pose.side:
            f.poly([(hx, hy - 0.03), (hx + 0.09, hy - 0.02), (hx + 0.08, hy - 0.008), (hx, hy - 0.015)],
                   shade(c, 0.8))
    elif hat == "beanie":
        f.ell(hx, hy - 0.03, hrx + 0.008, 0.045, c)
        f.rect(hx - hrx - 0.008, hy - 0.03, hx + hrx + 0.008, hy - 0.012, shade(c, 0.8))
    else:  # brimmed hat
        f.ell(hx, hy - 0.03, 0.085, 0.016, shade(c, 0.85))
        f.poly([(hx - 0.042, hy - 0.03), (hx - 0.036, hy - 0.09), (hx + 0.036, hy - 0.09), (hx + 0.042, hy - 0.03)],
               c)
        f.rect(hx - 0.042, hy - 0.045, hx + 0.042, hy - 0.033, shade(c, 0.6))


def _draw_bag(f: _Fig, a: dict[str, Any], pose: _Pose, hands: dict[int, Point | None],
              rng: np.random.Generator) -> None:
    """The bag in front of the body: backpack straps or pack, a shoulder bag on a strap across the chest (its side
    drawn from ``rng``), or a handbag in one hand (its hand drawn from ``rng``)."""
    bag, bagcol, sw, hip_w, side, view = a["bag"], a["bag_rgb"], pose.shoulders, pose.hips, pose.side, pose.view
    sh_y = SHOULDER_Y
    if bag == "backpack":
        strap = shade(bagcol, 0.85)
        if pose.front:
            f.line([(-sw + 0.03, sh_y - 0.005), (-sw + 0.035, 0.36)], strap, 0.018)
            f.line([(sw - 0.03, sh_y - 0.005), (sw - 0.035, 0.36)], strap, 0.018)
            f.ell(-sw - 0.005, 0.24, 0.014, 0.05, bagcol)
            f.ell(sw + 0.005, 0.24, 0.014, 0.05, bagcol)
        elif view == "back":
            f.poly([(-sw + 0.005, sh_y + 0.02), (sw - 0.005, sh_y + 0.02), (sw - 0.0, 0.43), (-sw + 0.0, 0.43)],
                   bagcol)
            f.rect(-sw + 0.03, 0.33, sw - 0.03, 0.41, shade(bagcol, 0.75))
            f.line([(-sw + 0.03, 0.33), (sw - 0.03, 0.33)], shade(bagcol, 1.3), 0.006, round_ends=False)
        else:
            f.line([(-0.01, sh_y), (0.02, 0.33)], strap, 0.016)
    elif bag == "shoulder bag":
        sgn = 1 if side else (-1 if rng.random() < 0.5 else 1)
        strap = shade(bagcol, 0.8)
        f.line([(-sgn * sw * 0.8, sh_y), (sgn * (hip_w + 0.02), 0.45)], strap, 0.012, round_ends=False)
        bx = sgn * (hip_w + 0.03) if not side else 0.02
        f.poly([(bx - 0.045, 0.43), (bx + 0.045, 0.43), (bx + 0.045, 0.52), (bx - 0.045, 0.52)], bagcol)
        f.line([(bx - 0.045, 0.45), (bx + 0.045, 0.45)], shade(bagcol, 0.7), 0.008, round_ends=False)
    elif bag == "handbag":
        sgn = 1 if rng.random() < 0.5 or side else -1
        hx_, hy_ = hands[sgn] if hands[sgn] is not None else hands[1]
        f.arc(hx_, hy_ + 0.02, 0.02, 0.02, 180, 360, shade(bagcol, 0.7), 0.007)
        f.poly([(hx_ - 0.035, hy_ + 0.02), (hx_ + 0.035, hy_ + 0.02), (hx_ + 0.045, hy_ + 0.085),
                (hx_ - 0.045, hy_ + 0.085)], bagcol)


def _draw_occluder(d: ImageDraw.ImageDraw, rng: np.random.Generator, w2: int, h2: int) -> bool:
    """Now and then (15%) something in front of the person: a car or bench at the bottom, a pole or tree trunk, or
    another passer-by at the side. Returns whether one was drawn."""
    if rng.random() >= 0.15:
        return False
    col = random_clutter_colour(rng)
    kind = int(rng.integers(3))
    if kind == 0:  # car / bench at the bottom
        y0 = h2 * rng.uniform(0.7, 0.82)
        d.rounded_rectangle([-10, y0, w2 + 10, h2 + 10], radius=int(w2 * 0.15), fill=col)
        d.rectangle([0, y0 + (h2 - y0) * 0.3, w2, y0 + (h2 - y0) * 0.4], fill=shade(col, 0.7))
    elif kind == 1:  # pole / tree trunk
        x0 = rng.uniform(-0.1, 0.8) * w2
        d.rectangle([x0, -5, x0 + w2 * rng.uniform(0.12, 0.25), h2 + 5], fill=col)
    else:  # another passer-by at the side
        x0 = w2 * (rng.uniform(-0.25, -0.05) if rng.random() < 0.5 else rng.uniform(0.75, 0.95))
        y0 = h2 * rng.uniform(0.1, 0.3)
        d.rounded_rectangle([x0, y0, x0 + w2 * 0.4, h2 + 10], radius=int(w2 * 0.1), fill=col)
        d.ellipse([x0 + w2 * 0.08, y0 - w2 * 0.3, x0 + w2 * 0.32, y0 - w2 * 0.02],
                  fill=clamp_rgb(rng.uniform(120, 230, 3)))
    return True


def _camera_look(img: Image.Image, rng: np.random.Generator, size: tuple[int, int], camera: str) -> Image.Image:
    """Down to ``size`` (H, W), then the camera's colour cast, contrast and blur, lighting and noise."""
    H, W = size
    small = img.resize((W, H), Image.BOX)
    cam = CAMERA_STYLES.get(camera, CAMERA_STYLES["Market"])
    return photometric(small, rng, cast=cam["cast"], contrast=cam["contrast"], blur_p=cam["blur"],
                       blur_radius=(0.35, 0.85))


def render_person(a: dict[str, Any], rng: np.random.Generator, size: tuple[int, int] = (160, 64),
                  camera: str = "Market", background: Callable[[np.random.Generator, int, int], Image.Image] | None = None,
                  ) -> tuple[Image.Image, dict[str, Any]]:
    """Draw one image of the identity described by ``a`` (see :attr:`xsearch.synth.pedestrians.PersonAttributes.render`).

    ``background(rng, width, height)`` draws the backdrop (default :func:`street_background`). Returns the image
    (``size`` is (H, W)) and per-image details: ``view`` in {front, back, side}, ``occluded`` (bool).

    Back to front: backdrop, hair and backpack behind the body, the far arm (side view), legs, shoes, top, the near
    arms, head, hair, glasses, hat, bag, an occasional occluder; then the camera's look. The generator is read in
    that order (backdrop, pose, bag side, occluder, camera), so the same state draws the same pixels.
    """
    H, W = size
    h2, w2 = H * SS, W * SS
    img = (background or street_background)(rng, w2, h2)
    d = ImageDraw.Draw(img)
    f, pose = _place_figure(a, rng, d, w2, h2)
    _draw_hair_behind(f, a, pose)
    _draw_backpack_behind(f, a, pose)
    hand_far = _draw_arm(f, a, pose, -1, 0.8) if pose.side else None
    _draw_legs(f, a, pose)
    _draw_shoes(f, a, pose)
    _draw_top(f, a, pose)
    hands: dict[int, Point | None] = {}
    if pose.side:
        hands[1] = _draw_arm(f, a, pose, 1)
        hands[-1] = hand_far
    else:
        hands[-1] = _draw_arm(f, a, pose, -1)
        hands[1] = _draw_arm(f, a, pose, 1)
    head = _draw_head(f, a, pose)
    _draw_hair(f, a, pose, head)
    _draw_glasses(f, a, pose, head)
    _draw_hat(f, a, pose, head)
    _draw_bag(f, a, pose, hands, rng)
    occluded = _draw_occluder(d, rng, w2, h2)
    return _camera_look(img, rng, size, camera), {"view": pose.view, "occluded": occluded}
