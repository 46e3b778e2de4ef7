"""Synthetic faces in the CelebA style: identities with the 40 CelebA attributes, and their aligned 178x218 photos.

:func:`face_identity` draws a face identity's stable attributes (gender, age, hair, beard, nose, face shape...),
its propensities for what changes from photo to photo (smile, glasses, hat, jewellery, make-up, blur) and its look
(skin, hair colour and volume, proportions, eye colour, clothes, backdrop). :func:`face_image_attributes` draws one
photo's 40 attributes from those, and :func:`render_face` draws the photo: the aligned face on a gradient backdrop,
each positive attribute visible, slightly rotated, with lighting, blur and noise. The captions come from the positive
attributes (:mod:`xsearch.face_captions`); :func:`xsearch.synth.writing.generate_faces` writes the CelebA layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from xsearch.face_captions import CELEBA_ATTRIBUTES
from xsearch.synth import render
from xsearch.synth.colours import COLOURS, RGB, SKIN_TONES, clamp_rgb, mix, shade
from xsearch.synth.sampling import Stream, choice, seeded_rng

__all__ = ["face_attributes", "face_identity", "face_image_attributes", "render_face"]


# ----------------------------------------------------------------------------------------------
# identities and their photos' attributes
# ----------------------------------------------------------------------------------------------

def face_identity(fid: int, seed: int) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Stable attributes, per-image propensities and look (what :func:`render_face` draws) of face identity ``fid``."""
    rng = seeded_rng(seed, Stream.FACE, fid)
    A = dict.fromkeys(CELEBA_ATTRIBUTES, False)
    male = bool(rng.random() < 0.42)
    A["Male"] = male
    young = bool(rng.random() < (0.7 if male else 0.85))
    A["Young"] = young
    A["Bald"] = bool(male and rng.random() < (0.03 if young else 0.2))
    hc = choice(rng, ["Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair", None],
                 [0.3, 0.27, 0.05 if male else 0.22, 0.02 if young else 0.35, 0.2])
    if A["Bald"] and hc not in ("Gray_Hair", None):
        hc = None if rng.random() < 0.6 else "Gray_Hair"
    if hc:
        A[hc] = True
    if not A["Bald"]:
        A["Bangs"] = bool(rng.random() < 0.16)
        tex = choice(rng, ["Straight_Hair", "Wavy_Hair", None], [0.25, 0.18 if male else 0.42, 0.4])
        if tex:
            A[tex] = True
        A["Receding_Hairline"] = bool(rng.random() < (0.15 if male else 0.04) and not A["Bangs"])
    nose = choice(rng, ["Big_Nose", "Pointy_Nose", None], [0.35 if male else 0.12, 0.15 if male else 0.35, 0.5])
    if nose:
        A[nose] = True
    A["Pale_Skin"] = bool(rng.random() < 0.06)
    A["Chubby"] = bool(rng.random() < (0.1 if male else 0.03))
    A["Oval_Face"] = bool(rng.random() < 0.28 and not A["Chubby"])
    A["Double_Chin"] = bool(rng.random() < (0.5 if A["Chubby"] else 0.02))
    A["Big_Lips"] = bool(rng.random() < 0.24)
    A["Narrow_Eyes"] = bool(rng.random() < 0.12)
    A["Bushy_Eyebrows"] = bool(rng.random() < (0.28 if male else 0.08))
    A["Arched_Eyebrows"] = bool(rng.random() < (0.05 if male else 0.45))
    A["High_Cheekbones"] = bool(rng.random() < 0.45)
    A["Bags_Under_Eyes"] = bool(rng.random() < (0.15 if young else 0.45))
    A["Rosy_Cheeks"] = bool(not male and rng.random() < 0.12)
    A["Attractive"] = bool(rng.random() < (0.65 if young else 0.2))
    if male:
        beard = choice(rng, ["none", "goatee", "mustache", "both", "full"], [0.62, 0.12, 0.06, 0.1, 0.1])
        A["No_Beard"] = beard == "none"
        A["Goatee"] = beard in ("goatee", "both")
        A["Mustache"] = beard in ("mustache", "both")
        A["Sideburns"] = bool(not A["Bald"] and rng.random() < (0.4 if beard != "none" else 0.08))
        A["5_o_Clock_Shadow"] = bool(beard == "none" and rng.random() < 0.3)
    else:
        A["No_Beard"] = True
    prop = {
        "Smiling": float(rng.uniform(0.15, 0.85)),
        "Eyeglasses": 0.85 if rng.random() < 0.1 else 0.02,
        "Wearing_Hat": 0.6 if rng.random() < 0.07 else 0.01,
        "Wearing_Earrings": (0.85 if rng.random() < 0.4 else 0.04) if not male else 0.01,
        "Wearing_Necklace": (0.7 if rng.random() < 0.2 else 0.03) if not male else 0.0,
        "Wearing_Necktie": (0.75 if rng.random() < 0.12 else 0.02) if male else 0.0,
        "Heavy_Makeup": (0.9 if rng.random() < 0.55 else 0.08) if not male else 0.0,
        "Blurry": 0.05,
    }
    prop["Wearing_Lipstick"] = min(0.95, prop["Heavy_Makeup"] + 0.15) if not male else 0.0

    hair_base = {"Black_Hair": (26, 22, 20), "Brown_Hair": (100, 62, 36), "Blond_Hair": (220, 188, 112),
                 "Gray_Hair": (170, 168, 165), None: choice(rng, [(70, 42, 25), (140, 62, 30), (55, 40, 32)])}[hc]
    skin = SKIN_TONES[int(rng.integers(0, 3 if A["Pale_Skin"] else len(SKIN_TONES)))]
    if A["Pale_Skin"]:
        skin = mix(skin, (255, 245, 240), 0.45)
    skin = clamp_rgb(np.asarray(skin, np.float64) + rng.normal(0, 5, 3))
    cols = list(COLOURS.values())
    look = {
        "skin": skin, "hair_rgb": clamp_rgb(np.asarray(hair_base, np.float64) * rng.uniform(0.85, 1.12)),
        "hair_len": float(rng.uniform(0.0, 0.4) if male else rng.uniform(0.3, 1.0)),
        "volume": float(rng.uniform(0, 1)), "bald_sides": bool(rng.random() < 0.7),
        "face_w": float(rng.uniform(36, 42)), "face_h": float(rng.uniform(48, 54)),
        "eye_sp": float(rng.uniform(17, 21)), "iris": choice(rng, [(70, 45, 25), (40, 30, 20), (60, 100, 140),
                                                                     (80, 110, 70)]),
        "lips": mix(skin, (170, 80, 80), 0.45), "lipstick": choice(rng, [(180, 20, 40), (200, 60, 90), (150, 30, 50)]),
        "shadow": choice(rng, [(120, 80, 110), (90, 70, 60), (80, 100, 140)]),
        "cloth": cols[int(rng.integers(len(cols)))], "tie": cols[int(rng.integers(len(cols)))],
        "jewel": choice(rng, [(230, 200, 80), (210, 210, 215)]), "earring_drop": bool(rng.random() < 0.4),
        "glasses_rgb": choice(rng, [(20, 20, 20), (90, 60, 30), (160, 160, 170)]),
        "sunglasses": bool(rng.random() < 0.15), "glasses_round": bool(rng.random() < 0.4),
        "hat_rgb": cols[int(rng.integers(len(cols)))], "hat_kind": int(rng.integers(3)),
        "bg": clamp_rgb(rng.uniform(40, 230, 3)),
    }
    return A, prop, look


def face_image_attributes(stable: dict[str, bool], prop: dict[str, float], rng: np.random.Generator) -> dict[str, bool]:
    A = dict(stable)
    for k in ("Smiling", "Eyeglasses", "Wearing_Hat", "Wearing_Earrings", "Wearing_Necklace", "Wearing_Necktie",
              "Heavy_Makeup", "Wearing_Lipstick", "Blurry"):
        A[k] = bool(rng.random() < prop[k])
    A["Mouth_Slightly_Open"] = bool(rng.random() < (0.6 if A["Smiling"] else 0.25))
    A["High_Cheekbones"] = bool(stable["High_Cheekbones"] or (A["Smiling"] and rng.random() < 0.3))
    if A["Heavy_Makeup"] and not A["Male"]:
        A["Wearing_Lipstick"] = A["Wearing_Lipstick"] or bool(rng.random() < 0.8)
    return A


def face_attributes(identities: int = 200, seed: int = 0) -> list[dict[str, bool]]:
    """Stable (per-identity) attributes of face identities ``1..identities`` as
    :func:`~xsearch.synth.writing.generate_faces` samples them; per-image attributes are in the generated
    ``list_attr_celeba.txt``."""
    return [face_identity(i, seed)[0] for i in range(1, identities + 1)]


# ----------------------------------------------------------------------------------------------
# drawing (CelebA aligned, 178 x 218)
# ----------------------------------------------------------------------------------------------

class _FaceCanvas:
    """Maps face units (origin at the face centre, about 1 unit per pixel of the 178-wide photo) to canvas pixels and
    wraps the drawing primitives."""

    def __init__(self, d: ImageDraw.ImageDraw, ox: float, oy: float, s: float):
        self.d, self.ox, self.oy, self.s = d, ox, oy, s

    def P(self, x: float, y: float) -> tuple[float, float]:
        return (self.ox + x * self.s, self.oy + y * self.s)

    def box(self, x: float, y: float, rx: float, ry: float) -> list[float]:
        ox, oy, s = self.ox, self.oy, self.s
        return [ox + (x - rx) * s, oy + (y - ry) * s, ox + (x + rx) * s, oy + (y + ry) * s]

    def E(self, x: float, y: float, rx: float, ry: float, **kw: Any) -> None:
        self.d.ellipse(self.box(x, y, rx, ry), **kw)

    def L(self, pts: Sequence[tuple[float, float]], fill: RGB, w: float) -> None:
        self.d.line([self.P(*p) for p in pts], fill=fill, width=max(1, int(round(w * self.s))), joint="curve")

    def A(self, x: float, y: float, rx: float, ry: float, a0: float, a1: float, fill: RGB, w: float) -> None:
        self.d.arc(self.box(x, y, rx, ry), a0, a1, fill=fill, width=max(1, int(round(w * self.s))))

    def poly(self, pts: Sequence[tuple[float, float]], fill: RGB) -> None:
        self.d.polygon([self.P(*p) for p in pts], fill=fill)


@dataclass(frozen=True)
class _Face:
    """One photo's face: half-width ``w`` and half-height ``h`` of the face ellipse, colours, eye spacing and height."""

    w: float
    h: float
    skin: RGB
    hair: RGB
    eye_spacing: float
    eye_y: float = -8

    @classmethod
    def of(cls, attrs: dict[str, bool], ident: dict[str, Any]) -> _Face:
        fw = ident["face_w"] * (1.12 if attrs["Chubby"] else 1.0)
        fhh = ident["face_h"] * (0.96 if attrs["Chubby"] else 1.0)
        if attrs["Oval_Face"]:
            fw *= 0.93
            fhh *= 1.05
        return cls(fw, fhh, ident["skin"], ident["hair_rgb"], ident["eye_sp"])

    def stubble(self, attrs: dict[str, bool]) -> RGB:
        return shade(self.hair if not attrs["Gray_Hair"] else (150, 150, 150), 0.9)


def _face_backdrop(ident: dict[str, Any], rng: np.random.Generator, cw: int, ch: int) -> Image.Image:
    """A gradient in the identity's backdrop colour (or a random one) with soft noise and a few blurry blobs."""
    bg1 = ident["bg"] if rng.random() < 0.5 else clamp_rgb(rng.uniform(40, 230, 3))
    arr = np.asarray(render.gradient(cw, ch, bg1, shade(bg1, float(rng.uniform(0.5, 1.3))), bool(rng.random() < 0.5)))
    arr = arr + render.low_freq_noise(rng, cw, ch, 35.0)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):
        x, y, r = rng.uniform(0, cw), rng.uniform(0, ch), rng.uniform(20, 120)
        d.ellipse([x - r, y - r, x + r, y + r], fill=render.random_clutter_colour(rng))
    return img


def _place_face(img: Image.Image, rng: np.random.Generator, width: int) -> _FaceCanvas:
    """This photo's face scale and position: about the centre of the canvas, a bit below it."""
    cw, ch = img.size
    s = render.SS * float(rng.uniform(0.95, 1.05)) * (width / 178.0)
    ox = cw / 2 + float(rng.uniform(-5, 5)) * render.SS
    oy = ch / 2 + float(rng.uniform(-5, 5)) * render.SS + 14 * s  # face centre a bit below image centre
    return _FaceCanvas(ImageDraw.Draw(img), ox, oy, s)


def _draw_hair_behind(c: _FaceCanvas, attrs: dict[str, bool], ident: dict[str, Any], face: _Face) -> None:
    """Long hair falls behind the head and shoulders (wavy: a wavy outline)."""
    if attrs["Bald"] or ident["hair_len"] <= 0.5:
        return
    fw, hair = face.w, face.hair
    hl = 40 + 90 * ident["hair_len"]
    if attrs["Wavy_Hair"]:
        pts = []
        for i in range(13):
            t = i / 12
            pts.append((-fw - 14 - 6 * math.sin(t * 9), -30 + hl * t))
        for i in range(13):
            t = 1 - i / 12
            pts.append((fw + 14 + 6 * math.sin(t * 9), -30 + hl * t))
        c.poly([(-fw - 8, -60)] + pts + [(fw + 8, -60)], hair)
    else:
        c.poly([(-fw - 10, -50), (fw + 10, -50), (fw + 12, -30 + hl), (-fw - 12, -30 + hl)], hair)


def _draw_neck_and_clothes(c: _FaceCanvas, attrs: dict[str, bool], ident: dict[str, Any], face: _Face) -> None:
    """Neck, shoulders in the identity's clothes, and a necktie or a necklace."""
    skin = face.skin
    c.d.rectangle([*c.P(-17, 30), *c.P(17, 80)], fill=shade(skin, 0.88))
    c.poly([(-95, 130), (-70, 82), (-20, 70), (0, 78), (20, 70), (70, 82), (95, 130)], ident["cloth"])
    c.poly([(-18, 70), (0, 92), (18, 70)], shade(skin, 0.88))
    if attrs["Wearing_Necktie"]:
        c.poly([(-12, 70), (0, 80), (12, 70)], (240, 240, 240))
        c.poly([(-5, 78), (5, 78), (9, 118), (0, 128), (-9, 118)], ident["tie"])
    if attrs["Wearing_Necklace"]:
        c.A(0, 62, 20, 22, 20, 160, ident["jewel"], 2.2)
        c.E(0, 84, 3, 3, fill=ident["jewel"])


def _draw_ears(c: _FaceCanvas, attrs: dict[str, bool], ident: dict[str, Any], face: _Face) -> None:
    """Both ears, with studs (and drops, if the identity wears them) when the photo has earrings."""
    fw = face.w
    for sg in (-1, 1):
        c.E(sg * (fw + 1), -2, 7, 12, fill=shade(face.skin, 0.93))
        if attrs["Wearing_Earrings"]:
            c.E(sg * (fw + 2), 13, 3.2, 3.2, fill=ident["jewel"])
            if ident["earring_drop"]:
                c.L([(sg * (fw + 2), 13), (sg * (fw + 2), 22)], ident["jewel"], 1.5)
                c.E(sg * (fw + 2), 23, 2.5, 3.5, fill=ident["jewel"])


def _draw_face_shape(c: _FaceCanvas, attrs: dict[str, bool], face: _Face) -> None:
    """The face ellipse, with a double chin under it."""
    fw, fhh, skin = face.w, face.h, face.skin
    if attrs["Double_Chin"]:
        c.E(0, fhh - 2, fw * 0.55, 12, fill=shade(skin, 0.9))
    c.E(0, 0, fw, fhh, fill=skin)
    if attrs["Double_Chin"]:
        c.A(0, fhh + 2, fw * 0.4, 8, 20, 160, shade(skin, 0.75), 1.3)


def _draw_beard(c: _FaceCanvas, attrs: dict[str, bool], face: _Face) -> None:
    """Stubble or a full beard along the jaw (the mouth kept clear), a goatee, sideburns."""
    fw, fhh, skin, stubble = face.w, face.h, face.skin, face.stubble(attrs)
    no_beard = attrs["No_Beard"]
    if attrs["5_o_Clock_Shadow"] or (not no_beard and not attrs["Goatee"] and not attrs["Mustache"]):
        full = not no_beard and not attrs["Goatee"] and not attrs["Mustache"]
        col = stubble if full else mix(skin, stubble, 0.22)
        jaw = [(-fw * 0.97, 5)]
        for i in range(15):
            ang = math.pi * (i / 14)
            jaw.append((-fw * 0.97 * math.cos(ang), fhh * math.sin(ang) + (6 if full else 0)))
        jaw += [(fw * 0.97, 5), (fw * 0.6, 18), (-fw * 0.6, 18)]
        c.poly(jaw, col)
        c.E(0, 30, 14, 8, fill=skin)  # mouth region
    if attrs["Goatee"]:
        c.poly([(-14, 36), (14, 36), (10, fhh + 3), (-10, fhh + 3)], stubble)
    if attrs["Sideburns"] and not attrs["Bald"]:
        for sg in (-1, 1):
            c.poly([(sg * fw, -25), (sg * (fw - 8), -25), (sg * (fw - 9), 12), (sg * fw, 10)], face.hair)


def _draw_cheeks(c: _FaceCanvas, attrs: dict[str, bool], face: _Face) -> None:
    """Rosy cheeks, and the shadow lines of high cheekbones."""
    fw, skin = face.w, face.skin
    if attrs["Rosy_Cheeks"]:
        for sg in (-1, 1):
            c.E(sg * fw * 0.55, 14, 10, 7, fill=mix(skin, (235, 110, 120), 0.45))
    if attrs["High_Cheekbones"]:
        for sg in (-1, 1):
            c.A(sg * fw * 0.62, 8, 12, 9, 60 if sg > 0 else 100, 120 if sg > 0 else 160, shade(skin, 0.8), 1.4)


def _draw_eyes(c: _FaceCanvas, attrs: dict[str, bool], ident: dict[str, Any], face: _Face) -> None:
    """Eye shadow and liner with heavy make-up, bags under the eyes, then white, iris and pupil (narrow eyes lower)."""
    ey, esp, skin = face.eye_y, face.eye_spacing, face.skin
    eh = 2.6 if attrs["Narrow_Eyes"] else 4.8
    for sg in (-1, 1):
        ex = sg * esp
        if attrs["Heavy_Makeup"]:
            c.E(ex, ey - 3, 11, eh + 4, fill=mix(skin, ident["shadow"], 0.55))
        if attrs["Bags_Under_Eyes"]:
            c.A(ex, ey + 4, 9, 5, 20, 160, shade(skin, 0.7), 1.6)
        c.E(ex, ey, 9, eh, fill=(245, 245, 240))
        c.E(ex, ey, 4, min(4, eh), fill=ident["iris"])
        c.E(ex, ey, 1.8, min(1.8, eh * 0.5), fill=(15, 10, 10))
        if attrs["Heavy_Makeup"]:
            c.A(ex, ey, 9.5, eh + 0.5, 190, 350, (20, 15, 15), 1.8)


def _draw_brows(c: _FaceCanvas, attrs: dict[str, bool], face: _Face) -> None:
    """Straight or arched eyebrows, thick when bushy, in the hair's colour."""
    ey, esp = face.eye_y, face.eye_spacing
    bw = 4.0 if attrs["Bushy_Eyebrows"] else 2.0
    bcol = shade(face.hair if not (attrs["Bald"] and not attrs["Gray_Hair"]) else (60, 45, 35), 0.85)
    for sg in (-1, 1):
        ex = sg * esp
        if attrs["Arched_Eyebrows"]:
            c.A(ex, ey - 7, 11, 7, 200, 340, bcol, bw)
        else:
            c.L([(ex - 10, ey - 11), (ex + 10, ey - 12 + sg * 0.5)], bcol, bw)


def _draw_nose(c: _FaceCanvas, attrs: dict[str, bool], face: _Face) -> None:
    """The nose ridge, then a pointed tip or a rounded one with nostrils (longer and wider when big)."""
    skin = face.skin
    nl = 1.35 if attrs["Big_Nose"] else 1.0
    nw = 1.4 if attrs["Big_Nose"] else (0.75 if attrs["Pointy_Nose"] else 1.0)
    nose_c = shade(skin, 0.78)
    c.L([(-2, -4), (-4 * nw, 13 * nl)], nose_c, 1.2)
    if attrs["Pointy_Nose"]:
        c.poly([(-5 * nw, 14 * nl), (0, 18 * nl), (5 * nw, 14 * nl)], nose_c)
    else:
        c.A(0, 13 * nl, 7 * nw, 4 * nl, 20, 160, nose_c, 1.6)
        c.E(-4 * nw, 14 * nl, 1.8 * nw, 1.2, fill=shade(skin, 0.55))
        c.E(4 * nw, 14 * nl, 1.8 * nw, 1.2, fill=shade(skin, 0.55))


def _draw_mouth(c: _FaceCanvas, attrs: dict[str, bool], ident: dict[str, Any], face: _Face) -> None:
    """Lips (lipstick, big lips) closed, open, smiling or smiling with teeth, and a mustache over them."""
    lips = ident["lips"]
    if attrs["Wearing_Lipstick"]:
        lips = ident["lipstick"]
    lt = 1.6 if attrs["Big_Lips"] else 1.0
    my = 30
    mw = 15 if attrs["Smiling"] else 12
    if attrs["Smiling"] and attrs["Mouth_Slightly_Open"]:
        c.d.chord([*c.P(-mw, my - 7), *c.P(mw, my + 8 * lt)], 0, 180, fill=(60, 20, 25))
        c.d.chord([*c.P(-mw + 3, my - 5), *c.P(mw - 3, my + 3)], 0, 180, fill=(245, 245, 240))
        c.A(0, my, mw, 8 * lt, 0, 180, lips, 2.2 * lt)
    elif attrs["Smiling"]:
        c.A(0, my - 4, mw, 7, 15, 165, lips, 3.2 * lt)
    elif attrs["Mouth_Slightly_Open"]:
        c.E(0, my, mw * 0.75, 3 + 1.2 * lt, fill=(60, 20, 25))
        c.A(0, my, mw * 0.8, 3 + 1.2 * lt, 180, 360, lips, 2.0 * lt)
        c.A(0, my, mw * 0.8, 3.5 + 1.2 * lt, 0, 180, lips, 2.5 * lt)
    else:
        c.E(0, my, mw * 0.8, 2.5 * lt, fill=lips)
        c.L([(-mw * 0.75, my), (mw * 0.75, my)], shade(lips, 0.6), 1.0)
    if attrs["Mustache"]:
        c.poly([(-15, my - 4), (-4, my - 10), (0, my - 8), (4, my - 10), (15, my - 4), (0, my - 5)],
               face.stubble(attrs))


def _draw_wrinkles(c: _FaceCanvas, attrs: dict[str, bool], face: _Face) -> None:
    """Crow's feet, smile lines and a forehead line on faces that are not young."""
    if attrs["Young"]:
        return
    ey, esp, skin = face.eye_y, face.eye_spacing, face.skin
    for sg in (-1, 1):
        c.L([(sg * (esp + 11), ey - 1), (sg * (esp + 15), ey + 2)], shade(skin, 0.75), 1.0)
        c.A(sg * 12, 26, 12, 14, 90 if sg > 0 else 50, 130 if sg > 0 else 90, shade(skin, 0.8), 1.0)
    c.L([(-14, -35), (14, -35)], shade(skin, 0.85), 0.9)


def _draw_hair(c: _FaceCanvas, attrs: dict[str, bool], ident: dict[str, Any], face: _Face) -> None:
    """Hair on top (its volume, a receding hairline, bangs, waves or straight strands), or a bald head's shine with
    hair left at the sides."""
    fw, fhh, skin, hair = face.w, face.h, face.skin, face.hair
    if not attrs["Bald"]:
        hairline = -fhh * 0.55 - (10 if attrs["Receding_Hairline"] else 0)
        top = -fhh - 10 - 8 * ident["volume"]
        c.d.chord([*c.P(-fw - 6, top), *c.P(fw + 6, hairline + (hairline - top) + 6)], 180, 360, fill=hair)
        for sg in (-1, 1):
            c.poly([(sg * (fw + 6), hairline + 4), (sg * (fw - 6), hairline), (sg * (fw - 3), -8), (sg * (fw + 4), -8)],
                   hair)
        if attrs["Receding_Hairline"]:
            for sg in (-1, 1):
                c.E(sg * 18, hairline + 2, 12, 9, fill=skin)
        if attrs["Bangs"]:
            c.poly([(-fw + 2, hairline - 4), (fw - 2, hairline - 4), (fw - 4, -24), (fw * 0.3, -20), (-fw * 0.2, -23),
                    (-fw + 4, -20)], hair)
        if attrs["Wavy_Hair"]:
            for i in range(-3, 4):
                c.A(i * fw / 4, top + 12, 8, 5, 200, 340, shade(hair, 0.75), 1.2)
        if attrs["Straight_Hair"]:
            for i in range(-3, 4):
                c.L([(i * fw / 4.5, top + 8), (i * fw / 4, hairline - 2)], shade(hair, 1.18), 0.8)
    else:
        if attrs["Gray_Hair"] or ident["bald_sides"]:
            for sg in (-1, 1):
                c.poly([(sg * (fw + 4), -30), (sg * (fw - 4), -30), (sg * (fw - 3), -5), (sg * (fw + 4), -5)], hair)
        c.A(-10, -fhh * 0.7, 12, 6, 200, 300, shade(skin, 1.15), 2.0)  # shine


def _draw_glasses(c: _FaceCanvas, attrs: dict[str, bool], ident: dict[str, Any], face: _Face) -> None:
    """Round or rectangular frames (dark lenses for sunglasses), temples and a bridge."""
    if not attrs["Eyeglasses"]:
        return
    ey, esp, fw, s = face.eye_y, face.eye_spacing, face.w, c.s
    gc = ident["glasses_rgb"]
    sun = ident["sunglasses"]
    for sg in (-1, 1):
        ex = sg * esp
        if sun:
            c.E(ex, ey, 12, 9, fill=(25, 25, 30))
        if ident["glasses_round"]:
            c.E(ex, ey, 12, 10, outline=gc, width=max(1, int(2 * s)))
        else:
            c.d.rounded_rectangle([*c.P(ex - 13, ey - 8), *c.P(ex + 13, ey + 8)], radius=int(3 * s), outline=gc,
                                  width=max(1, int(2 * s)))
        c.L([(sg * (esp + 13), ey - 2), (sg * (fw + 2), ey - 4)], gc, 2)
    c.L([(-esp + 13, ey - 2), (esp - 13, ey - 2)], gc, 2)


def _draw_hat(c: _FaceCanvas, attrs: dict[str, bool], ident: dict[str, Any], face: _Face) -> None:
    """The identity's kind of hat: a cap with its peak, a beanie with its band, or a brimmed hat."""
    if not attrs["Wearing_Hat"]:
        return
    fw, fhh = face.w, face.h
    hc = ident["hat_rgb"]
    top = -fhh - 22
    if ident["hat_kind"] == 0:  # cap
        c.d.chord([*c.P(-fw - 8, top), *c.P(fw + 8, -fhh * 0.3 + 30)], 180, 360, fill=hc)
        c.poly([(-fw, -fhh * 0.45), (fw, -fhh * 0.45), (fw * 0.8, -fhh * 0.3), (-fw * 0.8, -fhh * 0.3)],
               shade(hc, 0.75))
    elif ident["hat_kind"] == 1:  # beanie
        c.d.chord([*c.P(-fw - 8, top - 4), *c.P(fw + 8, -fhh * 0.35 + 40)], 180, 360, fill=hc)
        c.d.rectangle([*c.P(-fw - 8, -fhh * 0.55), *c.P(fw + 8, -fhh * 0.42)], fill=shade(hc, 0.8))
    else:  # brimmed
        c.E(0, -fhh * 0.5, fw + 30, 9, fill=shade(hc, 0.8))
        c.d.rectangle([*c.P(-fw * 0.8, top - 14), *c.P(fw * 0.8, -fhh * 0.5)], fill=hc)


def _photo(img: Image.Image, c: _FaceCanvas, attrs: dict[str, bool], rng: np.random.Generator,
           size: tuple[int, int]) -> Image.Image:
    """A slight head tilt, the aligned crop, down to ``size`` (H, W), then blur (strong when blurry), lighting and
    noise."""
    H, W = size
    cw, ch = img.size
    ang = float(rng.uniform(-6, 6))
    img = img.rotate(ang, resample=Image.BILINEAR, center=(c.ox, c.oy))
    x0 = (cw - W * render.SS) // 2
    y0 = (ch - H * render.SS) // 2
    img = img.crop((x0, y0, x0 + W * render.SS, y0 + H * render.SS)).resize((W, H), Image.BOX)
    blur = float(rng.uniform(1.6, 2.6)) if attrs["Blurry"] else 0.0
    return render.photometric(img, rng, noise=(1.5, 6.0), blur_p=0.25, blur_radius=(0.3, 0.7), extra_blur=blur)


def render_face(attrs: dict[str, bool], ident: dict[str, Any], rng: np.random.Generator,
                size: tuple[int, int] = (218, 178)) -> Image.Image:
    """Draw an aligned face. ``attrs``: the 40 CelebA attributes of this image (True = 1);
    ``ident``: stable per-identity geometry and colours (see :func:`face_identity`).

    On a canvas 1.2 times the photo (room for the tilt): backdrop, then back to front hair behind the head, neck and
    clothes, ears, face, beard, cheeks, eyes, brows, nose, mouth, wrinkles, hair, glasses, hat; then the photo. Pale
    skin is in ``ident["skin"]``. The generator is read in that order (backdrop, placement, photo), so the same state
    draws the same pixels.
    """
    H, W = size
    pad = 1.2
    cw, ch = int(W * render.SS * pad), int(H * render.SS * pad)
    img = _face_backdrop(ident, rng, cw, ch)
    c = _place_face(img, rng, W)
    face = _Face.of(attrs, ident)
    _draw_hair_behind(c, attrs, ident, face)
    _draw_neck_and_clothes(c, attrs, ident, face)
    _draw_ears(c, attrs, ident, face)
    _draw_face_shape(c, attrs, face)
    _draw_beard(c, attrs, face)
    _draw_cheeks(c, attrs, face)
    _draw_eyes(c, attrs, ident, face)
    _draw_brows(c, attrs, face)
    _draw_nose(c, attrs, face)
    _draw_mouth(c, attrs, ident, face)
    _draw_wrinkles(c, attrs, face)
    _draw_hair(c, attrs, ident, face)
    _draw_glasses(c, attrs, ident, face)
    _draw_hat(c, attrs, ident, face)
    return _photo(img, c, attrs, rng, size)
