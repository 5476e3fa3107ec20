"""Paper dolls: a procedural person drawn with OpenCV polygons, lines and ellipses.

``render_doll`` draws one standing person (random pose, position, scale, outfit, colours and
textures) over a cluttered background and returns the image with aligned label maps: the 20 LIP
classes, the 24 DeepFashion-MultiModal segm classes, and DensePose part indices (0..24). The left
classes are the person's left, i.e. the image right, as in LIP (the dolls face the camera).
Classes differ by shape, position and colour (each garment has its own hue range), so that a
small model learns them quickly. Every length is a fraction of the person's height ``s`` (body
proportions). Used by ``datasets.synthetic``.
"""

import math
from enum import IntEnum

import cv2
import numpy as np

DENSEPOSE_DROP_PROB = 0.35  # chance that DensePose misses a forearm (far skin)
NUM_MATERIALS = 64
IMAGE_NOISE_STD = 2.0  # sensor-like noise on every pixel (grey levels)
STRIPE_CONTRAST = 0.35  # stripes brighten/darken a garment by this fraction
NOISE_TEXTURE_GAIN = 2.0  # blotchy textures: brightness varies by up to gain * strength
Point = np.ndarray | tuple[float, float]  # (x, y) in pixels


class Lip(IntEnum):
    BACKGROUND, HAT, HAIR, GLOVE, SUNGLASSES, UPPER_CLOTHES, DRESS, COAT, SOCKS, PANTS = range(10)
    JUMPSUITS, SCARF, SKIRT, FACE, LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG = range(10, 18)
    LEFT_SHOE, RIGHT_SHOE = 18, 19


class Segm(IntEnum):
    BACKGROUND, TOP, OUTER, SKIRT, DRESS, PANTS, LEGGINGS, HEADWEAR, EYEGLASS = range(9)
    NECKWEAR, BELT, FOOTWEAR, BAG, HAIR, FACE, SKIN, RING, WRIST, SOCKS = range(9, 19)
    GLOVES, NECKLACE, ROMPERS, EARRINGS, TIE = range(19, 24)


# DensePose part ids (front view): torso, hands, upper/lower legs, upper/lower arms, head
DP_TORSO, DP_HEAD = 2, 23
DP_HAND = {"right": 3, "left": 4}
DP_FOOT = {"right": 6, "left": 5}
DP_THIGH = {"right": 9, "left": 10}
DP_CALF = {"right": 13, "left": 14}
DP_UPPER_ARM = {"right": 18, "left": 17}
DP_FOREARM = {"right": 22, "left": 21}
SIDES = {"right": -1.0, "left": 1.0}  # the person's right is the image left (facing the camera)
ARM = {"right": Lip.RIGHT_ARM, "left": Lip.LEFT_ARM}
LEG = {"right": Lip.RIGHT_LEG, "left": Lip.LEFT_LEG}
SHOE = {"right": Lip.RIGHT_SHOE, "left": Lip.LEFT_SHOE}
# base hue (OpenCV 0..180) per garment, so that classes differ by colour as well as shape
HUES = {
    "hat": 0,
    "upper": 110,
    "dress": 150,
    "coat": 15,
    "pants": 125,
    "jumpsuit": 80,
    "skirt": 165,
    "scarf": 40,
    "glove": 60,
    "sock": 95,
    "shoe": 5,
    "extra": 30,
}
TOP_IDS = {
    "upper": (Lip.UPPER_CLOTHES, Segm.TOP),
    "coat": (Lip.UPPER_CLOTHES, Segm.TOP),  # the coat is open over upper clothes
    "dress": (Lip.DRESS, Segm.DRESS),
    "jumpsuit": (Lip.JUMPSUITS, Segm.ROMPERS),
}
TOP_PROBS = (0.45, 0.2, 0.2, 0.15)
SKIN_TONES = ((205, 222, 250), (160, 190, 230), (120, 160, 205), (80, 120, 170), (50, 80, 120))
HAIR_TONES = ((20, 20, 25), (30, 50, 90), (60, 110, 170), (40, 40, 120), (150, 150, 150))


class Canvas:
    """Label maps drawn together: material (colour/texture), LIP label, DeepFashion segm."""

    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.maps = [np.zeros((height, width), np.uint8) for _ in range(3)]
        self.colours = np.zeros((NUM_MATERIALS, 3), np.float32)
        self.textures = [None] * NUM_MATERIALS
        self.count = 1
        self.rng = rng

    def material(self, colour: tuple[float, float, float]) -> int:
        """Register a colour with a random texture (flat, stripes or noise); returns its id."""
        rng, m = self.rng, self.count
        self.colours[m] = np.clip(np.asarray(colour) * rng.uniform(0.85, 1.15, 3), 0, 255)
        kind = rng.integers(3)
        if kind == 1:
            self.textures[m] = ("stripes", rng.uniform(0, math.pi), rng.uniform(0.2, 0.8))
        elif kind == 2:
            self.textures[m] = ("noise", rng.uniform(0.1, 0.3), 0.0)
        self.count = min(m + 1, NUM_MATERIALS - 1)
        return m

    def garment(self, name: str) -> int:
        """A material in the garment's hue range, varied in saturation and brightness."""
        hue = (HUES[name] + self.rng.integers(-8, 9)) % 180
        hsv = np.uint8([[[hue, self.rng.integers(90, 255), self.rng.integers(70, 240)]]])
        return self.material(tuple(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].tolist()))

    def poly(self, points: np.ndarray, values: tuple[int, int, int]) -> None:
        for target, value in zip(self.maps, values, strict=True):
            cv2.fillPoly(target, [np.round(points).astype(np.int32)], int(value))

    def limb(self, p0: Point, p1: Point, thickness: float, values: tuple[int, int, int]) -> None:
        for target, value in zip(self.maps, values, strict=True):
            cv2.line(target, _pt(p0), _pt(p1), int(value), max(int(round(thickness)), 1))

    def ellipse(
        self, centre: Point, axes: tuple[float, float], angle: float, values: tuple[int, int, int]
    ) -> None:
        axes = (max(int(round(axes[0])), 1), max(int(round(axes[1])), 1))
        for target, value in zip(self.maps, values, strict=True):
            cv2.ellipse(target, _pt(centre), axes, angle, 0, 360, int(value), -1)

    def render(self, background: np.ndarray) -> np.ndarray:
        """Colour every material pixel (with its texture) over the background; BGR uint8."""
        material = self.maps[0]
        image = background.astype(np.float32)
        height, width = material.shape
        small = self.rng.uniform(-1, 1, (max(height // 8, 2), max(width // 8, 2)))
        noise = cv2.resize(small.astype(np.float32), (width, height))
        rows, cols = np.nonzero(material)
        ids = material[rows, cols]
        shade = np.ones(ids.size, np.float32)
        for m in np.unique(ids):
            texture = self.textures[m]
            if texture is None:
                continue
            sel = ids == m
            if texture[0] == "stripes":
                phase = rows[sel] * math.cos(texture[1]) + cols[sel] * math.sin(texture[1])
                shade[sel] = 1 + STRIPE_CONTRAST * np.sign(np.sin(phase * texture[2]))
            else:
                shade[sel] = 1 + texture[1] * noise[rows[sel], cols[sel]] * NOISE_TEXTURE_GAIN
        image[rows, cols] = self.colours[ids] * shade[:, None]
        image += self.rng.normal(0, IMAGE_NOISE_STD, image.shape).astype(np.float32)
        return np.clip(image, 0, 255).astype(np.uint8)


def _pt(p: Point) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _direction(side: str, degrees: float) -> np.ndarray:
    """Unit vector pointing down, rotated ``degrees`` away from the body on ``side``."""
    a = math.radians(degrees)
    return np.array([SIDES[side] * math.sin(a), math.cos(a)])


def _skeleton(rng: np.random.Generator, height: int, width: int, s: float) -> dict:
    """Joint positions (x, y) of a standing person ``s`` pixels tall."""
    cx = rng.uniform(0.3, 0.7) * width
    top = rng.uniform(-0.05, 0.15) * height
    j = {"s": s, "head": np.array([cx, top + 0.075 * s]), "neck": np.array([cx, top + 0.15 * s])}
    for side, sign in SIDES.items():
        j[f"{side}_shoulder"] = np.array([cx + sign * 0.1 * s, top + 0.19 * s])
        j[f"{side}_hip"] = np.array([cx + sign * 0.055 * s, top + 0.5 * s])
        upper = rng.uniform(5, 100)
        j[f"{side}_elbow"] = j[f"{side}_shoulder"] + 0.17 * s * _direction(side, upper)
        fore = _direction(side, upper + rng.uniform(-60, 40))
        j[f"{side}_wrist"] = j[f"{side}_elbow"] + 0.15 * s * fore
        j[f"{side}_hand"] = j[f"{side}_wrist"] + 0.03 * s * fore
        thigh = rng.uniform(0, 18)
        j[f"{side}_knee"] = j[f"{side}_hip"] + 0.23 * s * _direction(side, thigh)
        j[f"{side}_ankle"] = j[f"{side}_knee"] + 0.22 * s * _direction(side, thigh - 6)
    return j


def _draw_legs(c: Canvas, j: dict, skin: int) -> None:
    s, rng = j["s"], c.rng
    for side in SIDES:
        c.limb(j[f"{side}_hip"], j[f"{side}_knee"], 0.075 * s, (skin, LEG[side], Segm.SKIN))
        c.limb(j[f"{side}_knee"], j[f"{side}_ankle"], 0.06 * s, (skin, LEG[side], Segm.SKIN))
    if rng.random() < 0.3:
        sock = c.garment("sock")
        for side in SIDES:
            mid = (j[f"{side}_knee"] + 2 * j[f"{side}_ankle"]) / 3
            c.limb(mid, j[f"{side}_ankle"], 0.062 * s, (sock, Lip.SOCKS, Segm.SOCKS))
    if rng.random() < 0.9:
        shoe = c.garment("shoe")
        for side, sign in SIDES.items():
            toe = j[f"{side}_ankle"] + np.array([sign * 0.025, 0.015]) * s
            c.ellipse(toe, (0.045 * s, 0.025 * s), 0, (shoe, SHOE[side], Segm.FOOTWEAR))


def _draw_bottom(c: Canvas, j: dict, top: str, bottom: str, hem: float) -> None:
    """Pants, shorts or jumpsuit legs as tubes over the legs; or a skirt as a trapezoid."""
    s = j["s"]
    if top == "dress":
        return
    if top == "jumpsuit" or bottom != "skirt":
        if top == "jumpsuit":
            material, ids = c.garment("jumpsuit"), (Lip.JUMPSUITS, Segm.ROMPERS)
        else:
            pants = Segm.PANTS if c.rng.random() < 0.7 else Segm.LEGGINGS
            material, ids = c.garment("pants"), (Lip.PANTS, pants)
        for side in SIDES:
            hip, knee = j[f"{side}_hip"], j[f"{side}_knee"]
            if bottom == "shorts" and top != "jumpsuit":
                c.limb(hip, (hip + knee) / 2, 0.085 * s, (material, *ids))
            else:
                c.limb(hip, knee, 0.085 * s, (material, *ids))
                c.limb(knee, j[f"{side}_ankle"], 0.07 * s, (material, *ids))
        c.limb(j["right_hip"], j["left_hip"], 0.09 * s, (material, *ids))
        return
    waist = j["neck"] + np.array([0, 0.3 * s])
    corners = [waist + [-0.08 * s, 0], waist + [0.08 * s, 0]]
    corners += [[waist[0] + 0.15 * s, hem], [waist[0] - 0.15 * s, hem]]
    c.poly(np.array(corners), (c.garment("skirt"), Lip.SKIRT, Segm.SKIRT))


def _draw_top(c: Canvas, j: dict, top: str, skin: int, hem: float) -> tuple[int, tuple]:
    """Neck, torso garment (upper clothes, dress or jumpsuit), V neck, coat panels, belt."""
    s, rng = j["s"], c.rng
    material = c.garment("upper" if top == "coat" else top)
    ids = TOP_IDS[top]
    sh_r, sh_l, hip_r, hip_l = (
        j[k] for k in ("right_shoulder", "left_shoulder", "right_hip", "left_hip")
    )
    c.limb(j["head"], j["neck"] + [0, 0.03 * s], 0.05 * s, (skin, Lip.FACE, Segm.SKIN))
    torso = [sh_r + [-0.01 * s, -0.01 * s], sh_l + [0.01 * s, -0.01 * s]]
    torso += [hip_l + [0.03 * s, 0.02 * s], hip_r + [-0.03 * s, 0.02 * s]]
    c.poly(np.array(torso), (material, *ids))
    if top == "dress":
        skirt = [hip_r + [-0.04 * s, 0], hip_l + [0.04 * s, 0]]
        skirt += [[hip_l[0] + 0.12 * s, hem], [hip_r[0] - 0.12 * s, hem]]
        c.poly(np.array(skirt), (material, *ids))
    if rng.random() < 0.5:  # a V neck shows torso skin (background in LIP, Skin in DeepFashion)
        v_neck = j["neck"] + np.array([[-0.04, 0.03], [0.04, 0.03], [0, 0.12]]) * s
        c.poly(v_neck, (skin, Lip.BACKGROUND, Segm.SKIN))
    if rng.random() < 0.15:
        c.limb(hip_r, hip_l, 0.02 * s, (c.garment("extra"), ids[0], Segm.BELT))
    if top != "coat":
        return material, ids
    coat, centre = c.garment("coat"), j["neck"][0]
    for shoulder, hip, sign in ((sh_r, hip_r, -1), (sh_l, hip_l, 1)):  # two open front panels
        inner = centre + sign * 0.025 * s
        panel = [shoulder, [inner, shoulder[1]], [inner, hip[1] + 0.1 * s]]
        panel.append(hip + [sign * 0.05 * s, 0.1 * s])
        c.poly(np.array(panel), (coat, Lip.COAT, Segm.OUTER))
    return coat, (Lip.COAT, Segm.OUTER)


def _draw_arms(c: Canvas, j: dict, skin: int, cloth: int, cloth_ids: tuple, coat: bool) -> None:
    """Arms with sleeves (none, short or long), hands or gloves."""
    s, rng = j["s"], c.rng
    sleeve = 1.0 if coat else float(rng.choice([0.0, 0.4, 1.0]))
    glove = c.garment("glove") if rng.random() < 0.2 else None
    for side in SIDES:
        sh, el, wr = j[f"{side}_shoulder"], j[f"{side}_elbow"], j[f"{side}_wrist"]
        c.limb(sh, el, 0.05 * s, (skin, ARM[side], Segm.SKIN))
        c.limb(el, wr, 0.042 * s, (skin, ARM[side], Segm.SKIN))
        if sleeve > 0:
            c.limb(sh, sh + (el - sh) * min(2 * sleeve, 1), 0.058 * s, (cloth, *cloth_ids))
        if sleeve == 1.0:
            c.limb(el, wr, 0.05 * s, (cloth, *cloth_ids))
        hand = (glove, Lip.GLOVE, Segm.GLOVES) if glove else (skin, ARM[side], Segm.SKIN)
        c.ellipse(j[f"{side}_hand"], (0.028 * s, 0.028 * s), 0, hand)


def _draw_head(c: Canvas, j: dict, skin: int, hair: int) -> None:
    """Scarf, face, hair cap, sunglasses and hat."""
    s, rng, head = j["s"], c.rng, j["head"]
    if rng.random() < 0.25:
        scarf = (c.garment("scarf"), Lip.SCARF, Segm.NECKWEAR)
        c.limb(
            j["right_shoulder"] + [0.03 * s, 0], j["left_shoulder"] - [0.03 * s, 0], 0.05 * s, scarf
        )
    c.ellipse(head, (0.05 * s, 0.068 * s), 0, (skin, Lip.FACE, Segm.FACE))
    c.ellipse(head - [0, 0.035 * s], (0.055 * s, 0.04 * s), 0, (hair, Lip.HAIR, Segm.HAIR))
    if rng.random() < 0.25:
        glasses = (c.material((30, 30, 30)), Lip.SUNGLASSES, Segm.EYEGLASS)
        c.limb(head + [-0.035 * s, 0.005 * s], head + [0.035 * s, 0.005 * s], 0.022 * s, glasses)
    if rng.random() < 0.35:
        hat = (c.garment("hat"), Lip.HAT, Segm.HEADWEAR)
        c.ellipse(head - [0, 0.06 * s], (0.065 * s, 0.03 * s), 0, hat)


def _draw_person(c: Canvas, j: dict) -> None:
    """Draw body, garments and accessories back to front."""
    s, rng = j["s"], c.rng
    skin = c.material(SKIN_TONES[rng.integers(len(SKIN_TONES))])
    hair = c.material(HAIR_TONES[rng.integers(len(HAIR_TONES))])
    top = str(rng.choice(list(TOP_IDS), p=TOP_PROBS))
    bottom = str(rng.choice(["pants", "shorts", "skirt"]))
    hem = j["right_hip"][1] + rng.uniform(0.15, 0.3) * s
    if rng.random() < 0.5:  # long hair falls behind the shoulders
        back = np.array([[-0.07, -0.02], [0.07, -0.02], [0.09, 0.2], [-0.09, 0.2]])
        c.poly(j["head"] + back * s, (hair, Lip.HAIR, Segm.HAIR))
    _draw_legs(c, j, skin)
    _draw_bottom(c, j, top, bottom, hem)
    cloth, cloth_ids = _draw_top(c, j, top, skin, hem)
    _draw_arms(c, j, skin, cloth, cloth_ids, coat=top == "coat")
    _draw_head(c, j, skin, hair)


def _draw_densepose(j: dict, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """DensePose part index map: the body, a little thinner than the silhouette, limbs may miss."""
    s, parts = j["s"], np.zeros(shape, np.uint8)
    thin = rng.uniform(0.6, 0.95)
    torso = [j["right_shoulder"], j["left_shoulder"], j["left_hip"], j["right_hip"]]
    cv2.fillPoly(parts, [np.round(torso).astype(np.int32)], DP_TORSO)
    for side in SIDES:
        segments = [
            ("hip", "knee", DP_THIGH, 0.07),
            ("knee", "ankle", DP_CALF, 0.055),
            ("shoulder", "elbow", DP_UPPER_ARM, 0.045),
        ]
        if rng.random() > DENSEPOSE_DROP_PROB:
            segments.append(("elbow", "wrist", DP_FOREARM, 0.04))
            cv2.circle(parts, _pt(j[f"{side}_hand"]), int(0.025 * s * thin), DP_HAND[side], -1)
        for start, end, ids, width in segments:
            cv2.line(
                parts,
                _pt(j[f"{side}_{start}"]),
                _pt(j[f"{side}_{end}"]),
                ids[side],
                max(int(width * s * thin), 1),
            )
        cv2.circle(parts, _pt(j[f"{side}_ankle"]), int(0.03 * s * thin), DP_FOOT[side], -1)
    axes = (int(0.045 * s * thin), int(0.06 * s * thin))
    cv2.ellipse(parts, _pt(j["head"]), axes, 0, 0, 360, DP_HEAD + int(rng.integers(2)), -1)
    return parts


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A two-colour gradient with a few random boxes and discs as clutter."""
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    image = rng.uniform(0, 255, 3) * (1 - ramp) + rng.uniform(0, 255, 3) * ramp
    image = np.ascontiguousarray(np.broadcast_to(image, (height, width, 3)), np.uint8)
    for _ in range(rng.integers(0, 5)):
        x, y = int(rng.integers(width)), int(rng.integers(height))
        size, colour = int(rng.uniform(0.05, 0.3) * width), rng.uniform(0, 255, 3).tolist()
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + size, y + size // 2), colour, -1)
        else:
            cv2.circle(image, (x, y), size // 2, colour, -1)
    return image


def render_doll(rng: np.random.Generator, height: int, width: int, person_scale: tuple) -> dict:
    """One doll: ``image`` BGR, ``lip`` and ``segm`` labels, ``parts`` DensePose part index."""
    c = Canvas(height, width, rng)
    joints = _skeleton(rng, height, width, rng.uniform(*person_scale) * height)
    _draw_person(c, joints)
    image = c.render(_background(rng, height, width))
    parts = _draw_densepose(joints, (height, width), rng)
    return {"image": image, "lip": c.maps[1], "segm": c.maps[2], "parts": parts}
