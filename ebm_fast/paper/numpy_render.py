"""Pure-NumPy ray caster for the MuJoCo Scenes dataset (fallback when GL is missing).

The renderer knows nothing about the dataset's sampling: it draws a list of
primitives (sphere, cylinder, box) standing on the plane ``z = 0`` under one
directional light, seen through a pinhole camera with MuJoCo's conventions
(camera looks along its local ``-z`` axis, ``x`` right, ``y`` up, vertical field
of view ``fovy`` in degrees).  :mod:`ebm_fast.paper.scenes` supplies the camera,
light, palette and checker ground so that both back ends draw the same scene;
the geometry (positions, sizes, occlusion, cast shadows) is exact, the shading
(Lambert + Blinn-Phong + head light, no texture filtering) only approximates
MuJoCo's OpenGL pipeline.

Shape codes: 0 = sphere (radius ``s``), 1 = cylinder (radius ``s``, half-height
``s``, axis ``z``), 2 = box (half-extent ``s`` on every axis, rotated by ``yaw``
about ``z``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Shading", "NumpyCamera", "render_numpy"]

SPHERE, CYLINDER, BOX = 0, 1, 2
_EPS = 1e-4


@dataclass(frozen=True)
class Shading:
    """Light and material constants shared with the MuJoCo model.

    Colours are linear RGB in [0, 1]; the final image is ``clip(colour, 0, 1)``.
    ``checker`` colours alternate on squares of side ``checker_cell`` (metres).
    """

    ambient: float = 0.3  # ambient of the directional light (absent in its shadow)
    headlight_ambient: float = 0.1
    headlight_diffuse: float = 0.25
    specular: float = 0.125  # light specular x MuJoCo's default material specular (0.5)
    shininess: float = 64.0  # MuJoCo's default material shininess 0.5 x 128
    checker_a: tuple[float, float, float] = (0.58, 0.58, 0.58)
    checker_b: tuple[float, float, float] = (0.48, 0.48, 0.48)
    checker_cell: float = 0.5
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class NumpyCamera:
    """Pinhole camera: ``pos`` (3,), orthonormal ``xaxis``/``yaxis`` (3,), ``fovy`` degrees."""

    pos: tuple[float, float, float]
    xaxis: tuple[float, float, float]
    yaxis: tuple[float, float, float]
    fovy: float


@lru_cache(maxsize=8)
def _ray_directions(camera: NumpyCamera, size: int) -> np.ndarray:
    """Unit ray directions, shape ``(size * size, 3)``, row-major from the image top."""
    x = np.asarray(camera.xaxis, dtype=np.float64)
    y = np.asarray(camera.yaxis, dtype=np.float64)
    forward = -np.cross(x, y)
    half = np.tan(np.deg2rad(camera.fovy) / 2.0)
    coords = ((np.arange(size) + 0.5) / size * 2.0 - 1.0) * half
    u = coords[None, :]  # column -> right
    v = -coords[:, None]  # row -> down
    d = forward[None, None, :] + u[..., None] * x + v[..., None] * y
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    d = d.reshape(-1, 3)
    d.setflags(write=False)
    return d


def _safe_inv(d: np.ndarray) -> np.ndarray:
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    return 1.0 / d


def _hit_sphere(o, d, c, s):
    oc = o - c
    b = np.einsum("ij,ij->i", oc, d)
    cc = np.einsum("ij,ij->i", oc, oc) - s * s
    disc = b * b - cc
    ok = disc >= 0
    t = -b - np.sqrt(np.where(ok, disc, 0.0))
    t = np.where(ok & (t > _EPS), t, np.inf)
    n = (o + t[:, None] * d - c) / s
    return t, n


def _hit_cylinder(o, d, c, s):
    oc = o - c
    ox, oy, oz = oc[:, 0], oc[:, 1], oc[:, 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    cc = ox * ox + oy * oy - s * s
    disc = b * b - a * cc
    ok = (disc >= 0) & (a > 1e-12)
    t_side = (-b - np.sqrt(np.where(ok, disc, 0.0))) / np.where(a > 1e-12, a, 1.0)
    z_side = oz + t_side * dz
    t_side = np.where(ok & (t_side > _EPS) & (np.abs(z_side) <= s), t_side, np.inf)

    inv_dz = _safe_inv(dz)
    t_top = (s - oz) * inv_dz
    t_bot = (-s - oz) * inv_dz
    t_cap = np.where(dz < 0, t_top, t_bot)  # the cap facing the ray
    px, py = ox + t_cap * dx, oy + t_cap * dy
    t_cap = np.where((t_cap > _EPS) & (px * px + py * py <= s * s), t_cap, np.inf)

    use_cap = t_cap < t_side
    t = np.minimum(t_side, t_cap)
    p = oc + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    n_side = np.stack([p[:, 0] / s, p[:, 1] / s, np.zeros_like(t)], axis=1)
    n_cap = np.zeros_like(n_side)
    n_cap[:, 2] = np.where(dz < 0, 1.0, -1.0)
    n = np.where(use_cap[:, None], n_cap, n_side)
    return t, n


def _hit_box(o, d, c, s, yaw):
    cs, sn = np.cos(yaw), np.sin(yaw)
    # world -> local rotation is R(-yaw) about z.
    rot = np.array([[cs, sn, 0.0], [-sn, cs, 0.0], [0.0, 0.0, 1.0]])
    ol = (o - c) @ rot.T
    dl = d @ rot.T
    inv = _safe_inv(dl)
    t1 = (-s - ol) * inv
    t2 = (s - ol) * inv
    tlo = np.minimum(t1, t2)
    thi = np.maximum(t1, t2)
    tmin = tlo.max(axis=1)
    tmax = thi.min(axis=1)
    ok = (tmax >= tmin) & (tmin > _EPS)
    t = np.where(ok, tmin, np.inf)
    axis = tlo.argmax(axis=1)
    nl = np.zeros_like(ol)
    rows = np.arange(len(axis))
    nl[rows, axis] = -np.sign(dl[rows, axis])
    n = nl @ rot  # local -> world is R(yaw) = rot.T, applied to row vectors
    return t, n


_HITS = {SPHERE: _hit_sphere, CYLINDER: _hit_cylinder, BOX: _hit_box}


def _hit(shape: int, o, d, c, s, yaw):
    """Nearest hit ``t`` (inf on a miss) and unit normal of rays ``o + t d`` (``(P, 3)`` each).

    Rays are first culled against the primitive's bounding sphere, so the exact
    test only runs on the few rays that pass near it.
    """
    if shape not in _HITS:
        raise ValueError(f"shape: expected 0 (sphere), 1 (cylinder) or 2 (box), got {shape}")
    o = np.broadcast_to(o, d.shape)
    oc = c - o
    along = np.einsum("ij,ij->i", oc, d)
    miss2 = np.einsum("ij,ij->i", oc, oc) - along * along  # squared ray-centre distance
    radius = s * (np.sqrt(3.0) if shape == BOX else np.sqrt(2.0) if shape == CYLINDER else 1.0)
    near = np.flatnonzero((miss2 <= radius * radius + 1e-9) & (along > -radius))
    t = np.full(len(d), np.inf)
    n = np.zeros((len(d), 3))
    if len(near):
        args = (o[near], d[near], c, s) + ((yaw,) if shape == BOX else ())
        t[near], n[near] = _HITS[shape](*args)
    return t, n


@dataclass(frozen=True)
class _Ground:
    """Scene-independent primary-ray data for one (camera, size, shading)."""

    dirs: np.ndarray  # (P, 3) unit ray directions
    t: np.ndarray  # (P,) distance to the plane z = 0 (inf where the ray misses it)
    points: np.ndarray  # (P, 3) hit points on the plane
    colour: np.ndarray  # (P, 3) checker colour (background colour where missed)
    head: float  # head-light term of the plane (its normal is constant)
    forward: np.ndarray  # (3,) camera viewing axis


@lru_cache(maxsize=8)
def _ground(camera: NumpyCamera, size: int, shading: Shading) -> _Ground:
    d = _ray_directions(camera, size)
    o = np.asarray(camera.pos, dtype=np.float64)
    dz = d[:, 2]
    down = dz < -1e-9
    t = np.where(down, -o[2] / np.where(down, dz, -1.0), np.inf)
    points = o + np.where(down, t, 0.0)[:, None] * d
    cell = np.floor(points[:, 0] / shading.checker_cell) + np.floor(points[:, 1] / shading.checker_cell)
    odd = (cell.astype(np.int64) % 2 == 1)[:, None]  # MuJoCo's rgb1 squares
    colour = np.where(odd, np.asarray(shading.checker_a), np.asarray(shading.checker_b))
    colour = np.where(down[:, None], colour, np.asarray(shading.background))
    # MuJoCo's head light is a directional light along the camera's viewing axis.
    forward = -np.cross(np.asarray(camera.xaxis), np.asarray(camera.yaxis))
    head = shading.headlight_ambient + shading.headlight_diffuse * max(0.0, -forward[2])
    for a in (t, points, colour):
        a.setflags(write=False)
    return _Ground(d, t, points, colour, head, forward)


def render_numpy(
    camera: NumpyCamera,
    shapes: np.ndarray,
    centers: np.ndarray,
    sizes: np.ndarray,
    yaws: np.ndarray,
    rgbs: np.ndarray,
    light_dir: np.ndarray,
    light_diffuse: float,
    resolution: int,
    shading: Shading = Shading(),
    supersample: int = 2,
) -> np.ndarray:
    """Ray-cast one scene.

    Args:
        camera: the pinhole camera.
        shapes: ``(M,)`` int shape codes (see module docstring).
        centers: ``(M, 3)`` world centres of the primitives.
        sizes: ``(M,)`` half-extents ``s`` in metres.
        yaws: ``(M,)`` rotation about ``z`` in radians (only boxes use it).
        rgbs: ``(M, 3)`` base colours in [0, 1].
        light_dir: ``(3,)`` direction the directional light travels (pointing down).
        light_diffuse: diffuse intensity of the directional light.
        resolution: output height = width in pixels.
        shading: material and ambient constants.
        supersample: rays per pixel along each axis (box-filtered), default 2.

    Returns:
        ``(resolution, resolution, 3)`` uint8 image.
    """
    size = resolution * supersample
    g = _ground(camera, size, shading)
    d = g.dirs
    o = np.asarray(camera.pos, dtype=np.float64)[None, :]
    n_rays = d.shape[0]

    # Primary visibility: the plane (cached), then every primitive.
    t_best = g.t.copy()
    owner = np.full(n_rays, -1)  # -1 plane/background, k primitive k
    normal = np.zeros((n_rays, 3))
    for k in range(len(shapes)):
        t, n = _hit(int(shapes[k]), o, d, centers[k], float(sizes[k]), float(yaws[k]))
        closer = np.flatnonzero(t < t_best)
        t_best[closer] = t[closer]
        normal[closer] = n[closer]
        owner[closer] = k
    obj = np.flatnonzero(owner >= 0)
    points = g.points.copy()
    points[obj] = o + t_best[obj, None] * d[obj]
    normal[owner < 0, 2] = 1.0

    # Cast shadows: a ray towards the light blocked by any primitive.
    to_light = -np.asarray(light_dir, dtype=np.float64)
    to_light /= np.linalg.norm(to_light)
    lit = np.isfinite(g.t) | (owner >= 0)
    origin = points + normal * 1e-3
    dl = np.broadcast_to(to_light, d.shape)
    for k in range(len(shapes)):
        t, _ = _hit(int(shapes[k]), origin, dl, centers[k], float(sizes[k]), float(yaws[k]))
        lit &= ~np.isfinite(t)

    # Plane: constant normal, textured.  MuJoCo draws the head light and the
    # shadow-casting light in separate passes and clamps each pass's light sum to
    # 1 before it modulates a texture; its shadow test also removes the
    # shadow-casting light's ambient term.
    sun_plane = min(1.0, shading.ambient + light_diffuse * max(0.0, to_light[2]))
    colour = g.colour * (lit * sun_plane + min(1.0, g.head))[:, None]

    # Primitives: Lambert + Blinn-Phong, untextured (no clamp before the final one).
    if len(obj):
        n_o = normal[obj]
        ndotl = n_o @ to_light
        lit_o = lit[obj] & (ndotl > 0)  # faces turned away from the light are in their own shadow
        sun = (shading.ambient + light_diffuse * np.clip(ndotl, 0.0, None)) * lit_o
        head = shading.headlight_ambient + shading.headlight_diffuse * np.clip(-(n_o @ g.forward), 0.0, None)
        half_vec = to_light[None, :] - d[obj]
        half_vec /= np.linalg.norm(half_vec, axis=1, keepdims=True)
        spec = np.clip(np.einsum("ij,ij->i", n_o, half_vec), 0.0, None) ** shading.shininess
        colour[obj] = rgbs[owner[obj]] * (sun + head)[:, None] + (spec * lit_o * shading.specular)[:, None]

    img = colour.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
