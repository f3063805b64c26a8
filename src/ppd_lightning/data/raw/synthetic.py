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
    centres at integer coordinates) and the camera height for reference.
    """
    if height < 2 or width < 2:
        raise ValueError(f"render_scene needs height, width >= 2, got {height}x{width}")
    rng = np.random.default_rng([int(seed), int(index)])
    sc = _Scene(rng, height, width)
    n = height * width
    v, u = np.mgrid[0:height, 0:width].astype(_F)
    xc = ((u - sc.cx) / sc.fx).ravel()
    yc = (-(v - sc.cy) / sc.fy).ravel()
    r = sc.rot  # camera -> world; the camera-z component stays 1 so t == planar depth
    dx = (r[0, 0] * xc + r[0, 1] * yc + r[0, 2]).astype(_F)
    dy = (r[1, 0] * xc + r[1, 1] * yc + r[1, 2]).astype(_F)
    dz = (r[2, 0] * xc + r[2, 1] * yc + r[2, 2]).astype(_F)
    dd = dx * dx + dy * dy + dz * dz
    o = sc.origin
    ox, oy, oz = (_F(c) for c in o)

    which = np.full(n, -1, dtype=np.int16)  # -1 sky, 0 ground, 1 backdrop, 2+ objects
    with np.errstate(divide="ignore"):
        best = np.where(dy < 0, -oy / dy, np.inf).astype(_F)
    which[np.isfinite(best)] = 0

    horiz = np.sqrt(dx * dx + dz * dz)
    t_back = sc.sky_radius / horiz
    y_back = oy + t_back * dy
    cand = (y_back >= 0) & (t_back < best)
    idx = np.flatnonzero(cand)
    up = y_back[idx] < sc.skyline(np.arctan2(dx[idx], dz[idx]))
    idx = idx[up]
    best[idx], which[idx] = t_back[idx], 1

    for k, ob in enumerate(sc.objects):
        if ob["kind"] == "sphere":
            t = _hit_sphere(ox, oy, oz, dx, dy, dz, dd, ob["centre"], ob["radius"])
        elif ob["kind"] == "pole":
            t = _hit_pole(ox, oy, oz, dx, dy, dz, ob["centre"], ob["radius"], ob["height"])
        else:
            t = _hit_box(ox, oy, oz, dx, dy, dz, ob["centre"], ob["half"], ob["rot"])[0]
        closer = t < best
        best = np.where(closer, t, best)
        which[closer] = k + 2

    hit = which >= 0
    t_hit = np.where(hit, best, 0.0).astype(_F)
    px, py, pz = ox + t_hit * dx, oy + t_hit * dy, oz + t_hit * dz
    nx, ny, nz = (np.zeros(n, _F) for _ in range(3))
    colour = np.zeros((n, 3), dtype=_F)
    footprint = t_hit * np.sqrt(dd) / _F(sc.fx)  # metres covered by one pixel, roughly

    order = np.argsort(which, kind="stable")  # group pixels by surface once
    bounds = np.searchsorted(which[order], np.arange(-1, len(sc.objects) + 3))
    for surf in range(0, len(sc.objects) + 2):
        sel = order[bounds[surf + 1] : bounds[surf + 2]]
        if len(sel) == 0:
            continue
        ps = np.stack([px[sel], py[sel], pz[sel]], axis=1)
        if surf == 0:  # ground: texture in the (x, z) plane, y exactly 0
            ny[sel] = 1.0
            ps[:, 1] = ps[:, 2]
            ps[:, 2] = 0.0
            colour[sel] = sc.ground_tex(ps, footprint[sel])
            continue
        if surf == 1:
            h = horiz[sel]
            nx[sel], nz[sel] = -dx[sel] / h, -dz[sel] / h
            colour[sel] = sc.backdrop_tex(ps, footprint[sel])
            continue
        ob = sc.objects[surf - 2]
        if ob["kind"] == "sphere":
            nrm = (ps - ob["centre"]) / ob["radius"]
        elif ob["kind"] == "pole":
            nrm = ps - ob["centre"]
            nrm[:, 1] = 0.0
            nrm[ps[:, 1] >= ob["centre"][1] + ob["height"] - 1e-3] = (0.0, 1.0, 0.0)
            nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-6)
        else:
            nrm = _box_normal(dx[sel], dy[sel], dz[sel], ob["centre"], ob["half"], ob["rot"], o)
        nx[sel], ny[sel], nz[sel] = nrm[:, 0], nrm[:, 1], nrm[:, 2]
        colour[sel] = ob["tex"](ps, footprint[sel])

    # shading: ambient + sky light + sun with cast shadows (the backdrop casts none and gets none)
    sun = sc.sun
    lambert = np.clip(nx * sun[0] + ny * sun[1] + nz * sun[2], 0.0, None)
    lit = np.flatnonzero((lambert > 0) & (which != 1) & hit)
    if len(lit):
        eps = _F(1e-3)
        blocked = _shadowed(px[lit] + nx[lit] * eps, py[lit] + ny[lit] * eps, pz[lit] + nz[lit] * eps, sc)
        lambert[lit[blocked]] = 0.0
    light = sc.ambient * (0.75 + 0.25 * ny[:, None]) + lambert[:, None] * sc.sun_colour
    colour *= light

    # fog towards the horizon colour, and the sky
    fog = (1.0 - np.exp(-t_hit / _F(sc.fog_dist)))[:, None]
    colour = colour * (1.0 - fog) + sc.fog_colour * fog
    sky = np.flatnonzero(~hit)
    if len(sky):
        norm = np.sqrt(dd[sky])
        elev = np.clip(dy[sky] / norm, 0.0, 1.0)[:, None]
        glow = np.clip((dx[sky] * sun[0] + dy[sky] * sun[1] + dz[sky] * sun[2]) / norm, 0.0, 1.0) ** 64
        colour[sky] = (
            sc.fog_colour
            + (sc.zenith - sc.fog_colour) * np.sqrt(elev)
            + glow[:, None] * (sc.sun_colour * 0.6)
        )

    srgb = np.clip(colour, 0.0, 1.0) ** _F(1.0 / 2.2)
    srgb += rng.normal(0.0, 0.008, size=srgb.shape).astype(_F)
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


def _shadowed(ox: np.ndarray, oy: np.ndarray, oz: np.ndarray, sc: _Scene) -> np.ndarray:
    """Whether each point's ray towards the sun is blocked by an object (the backdrop casts none)."""
    blocked = np.zeros(len(ox), dtype=bool)
    sx, sy, sz = (_F(c) for c in sc.sun)
    for ob in sc.objects:
        todo = np.flatnonzero(~blocked)
        if len(todo) == 0:
            break
        qx, qy, qz = ox[todo], oy[todo], oz[todo]
        if ob["kind"] == "sphere":
            hit = np.isfinite(_hit_sphere(qx, qy, qz, sx, sy, sz, _F(1.0), ob["centre"], ob["radius"]))
        elif ob["kind"] == "pole":
            hit = np.isfinite(_hit_pole(qx, qy, qz, sx, sy, sz, ob["centre"], ob["radius"], ob["height"]))
        else:
            t, tmax = _hit_box(qx, qy, qz, sx, sy, sz, ob["centre"], ob["half"], ob["rot"])
            hit = np.isfinite(t)
        blocked[todo[hit]] = True
    return blocked


# --------------------------------------------------------------------------------------------------
# source interface for make_shards


def list_items(root: str | None = None, *, num_samples: int, **_options) -> list[int]:
    """The synthetic world has no files: items are sample indices ``0 .. num_samples - 1``."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    return list(range(num_samples))


def load_item(root: str | None, item: int, *, seed: int, height: int, width: int, **_options):
    from ..codec import RawSample

    rgb, depth, meta = render_scene(seed, item, height, width)
    meta = {**meta, "dataset": NAME, "sky": "depth 0 = sky (rays that hit nothing)"}
    return RawSample(key=f"s{seed}-{item:08d}", rgb=rgb, depth=depth, meta=meta, sky=depth <= 0)
