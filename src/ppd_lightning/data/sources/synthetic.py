"""The embedded procedural synthetic world: exact planar depth by vectorised ray casting in numpy.

A pinhole camera with random field of view, height, pitch and roll looks at a ground plane closed
by a distant skyline (a vertical cylinder around the camera whose height varies with azimuth, so
the horizon has mountains/buildings and every non-sky depth is bounded); boxes, walls, spheres,
thin poles and floating objects stand on (or hover over) the ground. Surfaces carry checker,
stripe and noise textures in world coordinates (perspective texture gradients), Lambert shading
from a random sun with cast shadows on the ground, and exponential fog whose colour brightens or
darkens with distance. Depth is the exact z-buffer value of the first hit, so discontinuities are
pixel-sharp; sky pixels (rays that hit nothing) have depth 0 and are reported as sky.

Everything is a deterministic function of ``(seed, index)``.
"""

from __future__ import annotations

import numpy as np

NAME = "synthetic"
MIN_DEPTH = 1.0  # objects are never placed nearer than this (ground can be nearer at steep pitch)
MAX_DEPTH = 80.0  # the skyline radius keeps every non-sky depth below this

_F = np.float32


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=_F)


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=_F)


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=_F)


def _random_colour(rng: np.random.Generator, sat=(0.2, 0.8), val=(0.35, 0.95)) -> np.ndarray:
    """A linear-RGB colour from random hue/saturation/value."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    rgb = v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (rgb**2.2).astype(_F)


class _Texture:
    """A random procedural texture evaluated at 3-D world points: checker, stripes or noise."""

    def __init__(self, rng: np.random.Generator, scale: tuple[float, float]):
        self.kind = rng.choice(["checker", "stripes", "noise"], p=[0.4, 0.3, 0.3])
        self.cell = float(rng.uniform(*scale))
        self.c0 = _random_colour(rng)
        self.c1 = (self.c0 * rng.uniform(0.25, 0.7)).astype(_F) if rng.random() < 0.6 else _random_colour(rng)
        self.stripe_axis = rng.normal(size=3).astype(_F)
        self.stripe_axis /= np.linalg.norm(self.stripe_axis)
        self.freqs = (rng.normal(size=(3, 3)) / self.cell).astype(_F)
        self.phases = rng.uniform(0, 2 * np.pi, size=3).astype(_F)
        self.grain = float(rng.uniform(0.0, 0.15))

    def __call__(self, p: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        """Colours (N, 3) at points ``p`` (N, 3); ``footprint`` (N,) is the pixel size in metres.

        Pattern contrast fades out where a pixel covers more than about half a cell, a cheap
        prefilter that stops far-away checkers from aliasing into noise.
        """
        if self.kind == "checker":
            q = np.floor(p / self.cell).astype(np.int64)
            pattern = ((q[:, 0] + q[:, 1] + q[:, 2]) & 1).astype(_F)
        elif self.kind == "stripes":
            pattern = (np.floor(p @ self.stripe_axis / self.cell) % 2).astype(_F)
        else:
            pattern = (np.sin(p @ self.freqs.T + self.phases).sum(axis=1) / 6.0 + 0.5).astype(_F)
        fade = np.clip(1.5 - 2.0 * footprint / self.cell, 0.0, 1.0)
        pattern = 0.5 + (pattern - 0.5) * fade
        colour = self.c0 + pattern[:, None] * (self.c1 - self.c0)
        if self.grain > 0:
            g = np.sin(p @ (self.freqs.T * 7.3) + self.phases).mean(axis=1)
            colour = colour * (1.0 + self.grain * g)[:, None]
        return colour


# --------------------------------------------------------------------------------------------------
# ray/primitive intersections, structure-of-arrays for speed. Rays start at ``o`` (3,) or at
# per-ray origins ``(ox, oy, oz)``; directions ``(dx, dy, dz)`` are (N,) arrays. For primary rays
# the camera-z component of the direction is 1, so the ray parameter t *is* planar depth. Each
# returns t (N,) with +inf where there is no hit.


def _hit_sphere(ox, oy, oz, dx, dy, dz, dd, centre, radius):
    cx, cy, cz = ox - centre[0], oy - centre[1], oz - centre[2]
    b = dx * cx + dy * cy + dz * cz
    c = cx * cx + cy * cy + cz * cz - radius * radius
    disc = b * b - dd * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / dd
    return np.where((disc > 0) & (t > 0), t, np.inf).astype(_F)


def _hit_pole(ox, oy, oz, dx, dy, dz, centre, radius, height):
    """Vertical cylinder on ``centre`` (x, base, z) from y = base to base + height, with a top cap."""
    px, pz = ox - centre[0], oz - centre[2]
    top = centre[1] + height
    a = dx * dx + dz * dz
    b = dx * px + dz * pz
    c = px * px + pz * pz - radius * radius
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
        y = oy + t * dy
        t = np.where((disc > 0) & (t > 0) & (y >= centre[1]) & (y <= top), t, np.inf)
        t_cap = (top - oy) / dy
    qx, qz = px + t_cap * dx, pz + t_cap * dz
    cap = (t_cap > 0) & (qx * qx + qz * qz <= radius * radius)
    return np.where(cap & (t_cap < t), t_cap, t).astype(_F)


def _box_slabs(ox, oy, oz, dx, dy, dz, centre, half, rot):
    """Per-axis entry/exit parameters of an oriented box (rotation ``rot`` about y)."""
    rx, ry, rz = ox - centre[0], oy - centre[1], oz - centre[2]
    out = []
    for i in range(3):
        ol = rx * rot[0, i] + ry * rot[1, i] + rz * rot[2, i]
        dl = dx * rot[0, i] + dy * rot[1, i] + dz * rot[2, i]
        dl = np.where(np.abs(dl) < 1e-9, _F(1e-9), dl)
        t1 = (-half[i] - ol) / dl
        t2 = (half[i] - ol) / dl
        out.append((np.minimum(t1, t2), np.maximum(t1, t2)))
    return out


def _hit_box(ox, oy, oz, dx, dy, dz, centre, half, rot):
    (n0, f0), (n1, f1), (n2, f2) = _box_slabs(ox, oy, oz, dx, dy, dz, centre, half, rot)
    tmin = np.maximum(np.maximum(n0, n1), n2)
    tmax = np.minimum(np.minimum(f0, f1), f2)
    return np.where((tmax >= tmin) & (tmin > 0), tmin, np.inf).astype(_F), tmax


def _box_normal(dx, dy, dz, centre, half, rot, o):
    """Outward normals (M, 3) of the face each ray enters (rays known to hit the box)."""
    slabs = _box_slabs(o[0], o[1], o[2], dx, dy, dz, centre, half, rot)
    near = np.stack([s[0] for s in slabs], axis=1)
    axis = near.argmax(axis=1)
    rows = np.arange(len(axis))
    dl = np.stack([dx, dy, dz], axis=1) @ rot
    local = np.zeros_like(dl)
    local[rows, axis] = -np.sign(dl[rows, axis])
    return local @ rot.T


class _Scene:
    """Random scene description; all randomness is drawn here from one generator."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.hfov = np.deg2rad(rng.uniform(50.0, 95.0))
        self.fx = 0.5 * width / np.tan(0.5 * self.hfov)
        self.fy = self.fx
        self.cx = (width - 1) / 2.0 + rng.uniform(-0.02, 0.02) * width
        self.cy = (height - 1) / 2.0 + rng.uniform(-0.02, 0.02) * height
        self.cam_h = float(rng.uniform(1.0, 3.0))
        pitch = np.deg2rad(rng.uniform(-22.0, 6.0))  # negative looks down
        roll = np.deg2rad(rng.normal(0.0, 2.5))
        self.rot = _rot_x(-pitch) @ _rot_z(roll)  # camera -> world (y up, z forward)
        self.origin = np.array([0.0, self.cam_h, 0.0], dtype=_F)

        # distant skyline: a cylinder around the camera whose height varies with azimuth
        self.sky_radius = float(rng.uniform(35.0, 65.0))
        k = rng.integers(1, 7, size=4)
        self.sky_amp = rng.uniform(0.5, 6.0, size=4) / np.sqrt(k)
        self.sky_k, self.sky_phase = k, rng.uniform(0, 2 * np.pi, size=4)
        self.sky_base = self.cam_h + float(rng.uniform(1.5, 10.0))
        self.buildings = rng.random() < 0.5
        self.building_steps = rng.uniform(0.0, 12.0, size=int(rng.integers(8, 40)))

        self.sun = np.array([rng.normal(), rng.uniform(0.4, 1.6), rng.normal()], dtype=_F)
        self.sun /= np.linalg.norm(self.sun)
        self.ambient = float(rng.uniform(0.25, 0.5))
        self.sun_colour = (np.array([1.0, 0.95, 0.85]) * rng.uniform(0.8, 1.3)).astype(_F)

        self.fog_dist = float(rng.uniform(25.0, 140.0))
        if rng.random() < 0.8:  # bright haze
            self.fog_colour = (np.array([0.75, 0.8, 0.9]) * rng.uniform(0.6, 1.1)).astype(_F)
        else:  # darkening with distance (night / dense murk)
            self.fog_colour = (np.array([0.04, 0.05, 0.08]) * rng.uniform(0.5, 1.5)).astype(_F)
        self.zenith = (self.fog_colour * rng.uniform(0.3, 0.8) * np.array([0.6, 0.8, 1.3])).astype(_F)

        self.ground_tex = _Texture(rng, (0.4, 2.5))
        self.backdrop_tex = _Texture(rng, (2.0, 8.0))
        self.objects: list[dict] = []
        tan_half = np.tan(0.5 * self.hfov)

        def place(min_size: float) -> tuple[float, float]:
            # log-uniform distance so near objects (big on screen) and far ones are both common
            z = float(np.exp(rng.uniform(np.log(3.0), np.log(self.sky_radius * 0.8))))
            x = float(rng.uniform(-1.1, 1.1) * z * tan_half)
            return x, max(z, min_size + 1.5)

        for _ in range(int(rng.integers(2, 8))):  # boxes, some floating
            half = rng.uniform([0.3, 0.3, 0.3], [2.0, 2.0, 2.0]).astype(_F)
            x, z = place(float(half.max()) * 1.5)
            base = 0.0 if rng.random() < 0.8 else float(rng.uniform(0.5, 3.0))
            self.objects.append(
                dict(kind="box", centre=np.array([x, base + half[1], z], _F), half=half,
                     rot=_rot_y(rng.uniform(0, np.pi)), tex=_Texture(rng, (0.15, 1.0)))
            )  # fmt: skip
        for _ in range(int(rng.integers(0, 3))):  # walls: long thin boxes
            half = np.array([rng.uniform(2.0, 10.0), rng.uniform(1.0, 3.0), rng.uniform(0.08, 0.25)], _F)
            x, z = place(3.0)
            z = z + float(half[0])
            self.objects.append(
                dict(kind="box", centre=np.array([x, half[1], z], _F), half=half,
                     rot=_rot_y(rng.uniform(0, np.pi)), tex=_Texture(rng, (0.3, 1.5)))
            )  # fmt: skip
        for _ in range(int(rng.integers(1, 5))):  # spheres, resting or floating
            r = float(rng.uniform(0.3, 1.8))
            x, z = place(r)
            y = r if rng.random() < 0.7 else r + float(rng.uniform(0.5, 3.0))
            self.objects.append(
                dict(kind="sphere", centre=np.array([x, y, z], _F), radius=r, tex=_Texture(rng, (0.1, 0.8)))
            )
        for _ in range(int(rng.integers(0, 6))):  # thin poles
            x, z = place(0.5)
            self.objects.append(
                dict(kind="pole", centre=np.array([x, 0.0, z], _F), radius=float(rng.uniform(0.03, 0.2)),
                     height=float(rng.uniform(2.0, 9.0)), tex=_Texture(rng, (0.2, 1.0)))
            )  # fmt: skip

    def skyline(self, azimuth: np.ndarray) -> np.ndarray:
        h = np.full(azimuth.shape, self.sky_base, dtype=_F)
        for amp, k, ph in zip(self.sky_amp, self.sky_k, self.sky_phase):
            h += amp * (np.sin(k * azimuth + ph) + 1.0)
        if self.buildings:
            steps = self.building_steps
            idx = np.floor((azimuth + np.pi) / (2 * np.pi) * len(steps)).astype(np.int64) % len(steps)
            h += steps[idx]
        return h


def render_scene(seed: int, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render sample ``index`` of the world ``seed`` at ``height`` x ``width``.

    Returns ``(rgb, depth, meta)``: rgb (H, W, 3) uint8 sRGB; depth (H, W) float32 planar depth in
    metres, exactly 0 on sky pixels (and only there); meta with ``fx, fy, cx, cy`` (pixels, pixel
    centres at integer coordinates) and the camera height/pitch for reference.
    """
    if height < 2 or width < 2:
        raise ValueError(f"render_scene needs height, width >= 2, got {height}x{width}")
    rng = np.random.default_rng([int(seed), int(index)])
    sc = _Scene(rng, height, width)
    n = height * width
    v, u = np.mgrid[0:height, 0:width].astype(_F)
    d_cam = np.stack([(u - sc.cx) / sc.fx, -(v - sc.cy) / sc.fy, np.ones_like(u)], axis=-1).reshape(n, 3)
    d = d_cam @ sc.rot.T  # world directions; camera-z component stays 1 so t == planar depth
    o = sc.origin
    dd = np.einsum("ij,ij->i", d, d)

    best = np.full(n, np.inf, dtype=_F)
    which = np.full(n, -1, dtype=np.int16)  # -1 sky, 0 ground, 1 backdrop, 2+ objects

    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(d[:, 1] < 0, -o[1] / d[:, 1], np.inf).astype(_F)
    best = np.minimum(best, t_ground)
    which[np.isfinite(t_ground)] = 0

    horiz = np.sqrt(d[:, 0] ** 2 + d[:, 2] ** 2)
    t_back = (sc.sky_radius / horiz).astype(_F)
    azimuth = np.arctan2(d[:, 0], d[:, 2])
    y_back = o[1] + t_back * d[:, 1]
    t_back = np.where((y_back < sc.skyline(azimuth)) & (y_back >= 0), t_back, np.inf)
    closer = t_back < best
    best[closer], which[closer] = t_back[closer], 1

    box_tnear = {}
    for k, ob in enumerate(sc.objects):
        if ob["kind"] == "sphere":
            t = _hit_sphere(o, d, dd, ob["centre"], ob["radius"])
        elif ob["kind"] == "pole":
            t = _hit_pole(o, d, ob["centre"], ob["radius"], ob["height"])
        else:
            t, tnear = _hit_box(o, d, ob["centre"], ob["half"], ob["rot"])
        closer = t < best
        if ob["kind"] == "box":
            box_tnear[k] = (closer, tnear)
        best[closer], which[closer] = t[closer], k + 2

    hit = which >= 0
    t_hit = np.where(hit, best, 0.0).astype(_F)
    p = o + t_hit[:, None] * d
    normal = np.zeros((n, 3), dtype=_F)
    colour = np.zeros((n, 3), dtype=_F)
    footprint = t_hit * np.sqrt(dd) / sc.fx  # metres covered by one pixel, roughly

    sel = which == 0
    normal[sel] = (0.0, 1.0, 0.0)
    colour[sel] = sc.ground_tex(p[sel][:, [0, 2, 1]] * np.array([1, 1, 0], _F), footprint[sel])
    sel = which == 1
    normal[sel] = -d[sel] / horiz[sel, None] * np.array([1, 0, 1], _F)
    colour[sel] = sc.backdrop_tex(p[sel], footprint[sel])
    for k, ob in enumerate(sc.objects):
        sel = which == k + 2
        if not sel.any():
            continue
        ps = p[sel]
        if ob["kind"] == "sphere":
            nrm = (ps - ob["centre"]) / ob["radius"]
        elif ob["kind"] == "pole":
            nrm = ps - ob["centre"]
            nrm[:, 1] = 0.0
            top = ps[:, 1] >= ob["centre"][1] + ob["height"] - 1e-3
            nrm[top] = (0.0, 1.0, 0.0)
            nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-6)
        else:
            closer, tnear = box_tnear[k]
            # the winning pixels of a box are a subset of the pixels where it was closer when tested
            tn = tnear[sel]
            axis = tn.argmax(axis=1)
            dl = d[sel] @ ob["rot"]
            local = np.zeros_like(dl)
            local[np.arange(len(axis)), axis] = -np.sign(dl[np.arange(len(axis)), axis])
            nrm = local @ ob["rot"].T
        normal[sel] = nrm
        colour[sel] = ob["tex"](ps, footprint[sel])

    # shading: ambient + sky light + sun with cast shadows
    lambert = np.clip(normal @ sc.sun, 0.0, None)
    lit = (lambert > 0) & hit & (which != 1)
    if lit.any():
        shadow_o = p[lit] + normal[lit] * 1e-3
        blocked = _shadowed(shadow_o, sc)
        lam = lambert[lit]
        lam[blocked] = 0.0
        lambert[lit] = lam
    light = sc.ambient * (0.75 + 0.25 * normal[:, 1:2]) + lambert[:, None] * sc.sun_colour
    colour = colour * light

    # fog towards the horizon colour, and the sky
    fog = (1.0 - np.exp(-t_hit / sc.fog_dist))[:, None]
    colour = colour * (1.0 - fog) + sc.fog_colour * fog
    elev = np.clip(d[:, 1] / np.sqrt(dd), 0.0, 1.0)[:, None]
    sky_col = sc.fog_colour + (sc.zenith - sc.fog_colour) * np.sqrt(elev)
    sun_glow = np.clip((d @ sc.sun) / np.sqrt(dd), 0.0, 1.0)[:, None] ** 64
    sky_col = sky_col + sun_glow * sc.sun_colour * 0.6
    colour = np.where(hit[:, None], colour, sky_col)

    noise = rng.normal(0.0, 0.008, size=colour.shape).astype(_F)
    srgb = np.clip(colour, 0.0, 1.0) ** (1.0 / 2.2) + noise
    rgb = np.clip(srgb * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(height, width, 3)
    depth = t_hit.reshape(height, width)
    meta = {
        "fx": float(sc.fx),
        "fy": float(sc.fy),
        "cx": float(sc.cx),
        "cy": float(sc.cy),
        "camera_height": sc.cam_h,
        "seed": int(seed),
        "index": int(index),
    }
    return rgb, depth, meta


def _shadowed(origins: np.ndarray, sc: _Scene) -> np.ndarray:
    """Whether each point's ray towards the sun is blocked by an object (not by the backdrop)."""
    m = origins.shape[0]
    blocked = np.zeros(m, dtype=bool)
    d = np.broadcast_to(sc.sun, (m, 3))
    for ob in sc.objects:
        todo = ~blocked
        if not todo.any():
            break
        po = origins[todo]
        # per-point origins: shift into the object's frame by translating centres instead
        if ob["kind"] == "sphere":
            oc = po - ob["centre"]
            b = oc @ sc.sun
            c = np.einsum("ij,ij->i", oc, oc) - ob["radius"] ** 2
            disc = b * b - c
            t = -b + np.sqrt(np.maximum(disc, 0.0))
            hit = (disc > 0) & (t > 0)
        elif ob["kind"] == "pole":
            ox, oz = po[:, 0] - ob["centre"][0], po[:, 2] - ob["centre"][2]
            a = sc.sun[0] ** 2 + sc.sun[2] ** 2
            b = sc.sun[0] * ox + sc.sun[2] * oz
            c = ox * ox + oz * oz - ob["radius"] ** 2
            disc = b * b - a * c
            t = (-b - np.sqrt(np.maximum(disc, 0.0))) / max(a, 1e-9)
            y = po[:, 1] + t * sc.sun[1]
            hit = (disc > 0) & (t > 0) & (y <= ob["centre"][1] + ob["height"])
        else:
            ol = (po - ob["centre"]) @ ob["rot"]
            dl = d[: len(po)] @ ob["rot"]
            with np.errstate(divide="ignore"):
                inv = 1.0 / np.where(np.abs(dl) < 1e-9, 1e-9, dl)
            t1 = (-ob["half"] - ol) * inv
            t2 = (ob["half"] - ol) * inv
            tmin = np.minimum(t1, t2).max(axis=1)
            tmax = np.maximum(t1, t2).min(axis=1)
            hit = (tmax >= np.maximum(tmin, 0.0)) & (tmax > 1e-3)
        blocked[todo] = hit
    return blocked
