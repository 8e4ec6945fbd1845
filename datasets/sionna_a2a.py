"""Ray-traced any-to-any (vehicle-to-vehicle) path gains on the Madrid grid, for the A2A path-loss learner (004).

    pip install "sionna-rt==2.2.0"       # the `sionna` extra; on CPU also: apt-get install libllvm19
    python datasets/sionna_a2a.py         # writes datasets/a2a_sionna.npz (tens of KB)

The scene is built from ``fedsim.data.madrid.madrid_grid()``: every building block of the grid (a connected
rectangle of BUILDING pixels) is extruded into a concrete box (ITU "concrete", 20 m high by default), the park
is left as open ground (no foliage object: the paper's park SLF of 0.1 has no counterpart in the scene), and a
concrete slab is the ground. Transmitters stand on a spread-out subset of road pixels (farthest-point
sampling from a seeded start), receivers on every road pixel, both at 1.5 m (vehicle antennas), with
isotropic vertically polarised antennas at 5.9 GHz (V2X). Sionna RT's PathSolver traces line of sight,
specular reflection, refraction (through the building walls) and wedge diffraction for one transmitter at a
time (the digest measured that several transmitters per call cost more than the sum of single calls).
The path gain of a link is the sum over its paths of ``|a|^2``; a link with no path is stored with
``path_gain_db = -inf`` (censored: weaker than anything the tracer resolves) and dropped by the loader by
default (``fedsim.data.a2a_links.load_sionna_a2a``). Links whose two ends share a pixel are not stored.

The PathSolver cost is about linear in the number of transmitters (tens of seconds each on 2 shared cores);
``--num-tx`` bounds the wall time. The file records its own wall time and settings.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from fedsim.data.madrid import BUILDING, Grid, madrid_grid

_LLVM_19 = "/usr/lib/x86_64-linux-gnu/libLLVM-19.so"
"""Dr.Jit's LLVM backend needs LLVM >= 16; LLVM 14/15 (also installed here) are not found or crash."""

GROUND_THICKNESS_M = 0.2


def building_boxes(grid: Grid, height_m: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Axis-aligned boxes (centre [3], half-size [3], metres) of the building blocks of a grid.

    A block is a connected component of BUILDING pixels; on the Madrid grid every block is a rectangle,
    which is checked (a non-rectangular block would be extruded as its bounding box).
    """
    labels, _ = ndimage.label(grid.kinds == BUILDING)
    boxes = []
    for index, (sx, sy) in enumerate(ndimage.find_objects(labels), start=1):
        if not (labels[sx, sy] == index).all():
            raise ValueError(f"building block {index} is not a rectangle")
        low = np.array([sx.start * grid.pixel_m, sy.start * grid.pixel_m, 0.0])
        high = np.array([sx.stop * grid.pixel_m, sy.stop * grid.pixel_m, height_m])
        boxes.append(((low + high) / 2, (high - low) / 2))
    return boxes


def scene_xml(grid: Grid, height_m: float, material: str, wall_thickness_m: float) -> str:
    """Mitsuba XML of the grid: one ``cube`` per building block and a ground slab, ITU radio materials."""
    width, depth = grid.shape[0] * grid.pixel_m, grid.shape[1] * grid.pixel_m
    shapes = []
    for i, (centre, half) in enumerate(building_boxes(grid, height_m)):
        shapes.append(_cube(f"building_{i}", centre, half, "building-mat"))
    margin = 10.0  # the ground reaches beyond the map so that ground reflections near the edges exist
    ground_half = np.array([width / 2 + margin, depth / 2 + margin, GROUND_THICKNESS_M / 2])
    shapes.append(_cube("ground", np.array([width / 2, depth / 2, -GROUND_THICKNESS_M / 2]), ground_half,
                        "ground-mat"))
    return f"""<scene version="2.1.0">
    <bsdf type="itu-radio-material" id="building-mat">
        <string name="type" value="{material}"/>
        <float name="thickness" value="{wall_thickness_m}"/>
    </bsdf>
    <bsdf type="itu-radio-material" id="ground-mat">
        <string name="type" value="concrete"/>
        <float name="thickness" value="{GROUND_THICKNESS_M}"/>
    </bsdf>
{"".join(shapes)}</scene>
"""


def _cube(name: str, centre: np.ndarray, half: np.ndarray, material_id: str) -> str:
    scale = ", ".join(f"{v:g}" for v in half)
    shift = ", ".join(f"{v:g}" for v in centre)
    return f"""    <shape type="cube" id="{name}">
        <transform name="to_world"><scale value="{scale}"/><translate value="{shift}"/></transform>
        <ref id="{material_id}" name="bsdf"/>
    </shape>
"""


def spread_road_pixels(grid: Grid, count: int, seed: int) -> np.ndarray:
    """``count`` road pixels spread over the map: farthest-point sampling from a seeded random start."""
    roads = grid.road_pixels
    xy = grid.centres[roads]
    chosen = [int(np.random.default_rng(seed).integers(len(roads)))]
    nearest = np.linalg.norm(xy - xy[chosen[0]], axis=1)
    while len(chosen) < min(count, len(roads)):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(xy - xy[chosen[-1]], axis=1))
    return roads[np.array(chosen)]


def trace_one_tx(scene, solver, tx_xyz: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """Path gain [num_rx] in dB (-inf: no path) from one transmitter to all receivers of the scene."""
    from sionna.rt import Transmitter

    scene.add(Transmitter("tx", position=[float(v) for v in tx_xyz]))
    try:
        paths = solver(scene, max_depth=args.depth, samples_per_src=args.samples, los=True,
                       specular_reflection=True, refraction=True, diffraction=args.diffraction,
                       edge_diffraction=False, seed=args.seed)
        a_real, a_imag = (np.asarray(part.numpy()) for part in paths.a)
    finally:
        scene.remove("tx")
    gain = (a_real**2 + a_imag**2).reshape(a_real.shape[0], -1).sum(axis=1)  # [num_rx], 1 antenna each
    with np.errstate(divide="ignore"):
        return np.where(gain > 0, 10 * np.log10(gain), -np.inf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("a2a_sionna.npz")))
    parser.add_argument("--num-tx", type=int, default=20, help="transmitters (road pixels), ~linear cost")
    parser.add_argument("--samples", type=int, default=10**5, help="rays per transmitter")
    parser.add_argument("--depth", type=int, default=3, help="maximum number of interactions per path")
    parser.add_argument("--no-diffraction", dest="diffraction", action="store_false")
    parser.add_argument("--frequency", type=float, default=5.9e9, help="carrier [Hz] (V2X)")
    parser.add_argument("--antenna-height", type=float, default=1.5, help="Tx and Rx height [m]")
    parser.add_argument("--building-height", type=float, default=20.0)
    parser.add_argument("--material", default="concrete", help="ITU material of the buildings")
    parser.add_argument("--wall-thickness", type=float, default=0.3, help="[m], for refraction")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if "DRJIT_LIBLLVM_PATH" not in os.environ and Path(_LLVM_19).exists():
        os.environ["DRJIT_LIBLLVM_PATH"] = _LLVM_19

    start = time.time()
    import sionna.rt
    from sionna.rt import PathSolver, PlanarArray, Receiver, load_scene_from_string

    grid = madrid_grid()
    scene = load_scene_from_string(scene_xml(grid, args.building_height, args.material, args.wall_thickness),
                                   remove_duplicate_vertices=True)  # shared edges, needed for diffraction
    scene.frequency = args.frequency
    scene.tx_array = PlanarArray(num_rows=1, num_cols=1, pattern="iso", polarization="V")
    scene.rx_array = scene.tx_array
    rx_pixels = grid.road_pixels
    for k, p in enumerate(rx_pixels):
        x, y = grid.centres[p]
        scene.add(Receiver(f"rx{k}", position=[float(x), float(y), args.antenna_height]))
    tx_pixels = spread_road_pixels(grid, args.num_tx, args.seed)
    solver = PathSolver()
    import_s = time.time() - start

    tx_xy, rx_xy, gain_db, tx_pix, rx_pix = [], [], [], [], []
    for i, p in enumerate(tx_pixels):
        t0 = time.time()
        gains = trace_one_tx(scene, solver, np.append(grid.centres[p], args.antenna_height), args)
        keep = rx_pixels != p  # a link needs two distinct pixels
        tx_xy.append(np.repeat(grid.centres[p][None], keep.sum(), axis=0))
        rx_xy.append(grid.centres[rx_pixels[keep]])
        gain_db.append(gains[keep])
        tx_pix.append(np.full(keep.sum(), p))
        rx_pix.append(rx_pixels[keep])
        print(f"tx {i + 1}/{len(tx_pixels)} (pixel {p}): {np.isfinite(gains[keep]).mean():.0%} of receivers "
              f"with a path, {time.time() - t0:.1f} s", flush=True)
    wall_s = time.time() - start
    metadata = {
        "carrier_hz": args.frequency, "antenna_height_m": args.antenna_height,
        "building_height_m": args.building_height, "building_material": args.material,
        "wall_thickness_m": args.wall_thickness, "ground": f"concrete slab {GROUND_THICKNESS_M} m",
        "park": "open ground (no object)", "antenna": "isotropic, vertical polarisation, 1 element",
        "solver": "PathSolver", "samples_per_src": args.samples, "max_depth": args.depth,
        "los": True, "specular_reflection": True, "refraction": True, "diffraction": args.diffraction,
        "edge_diffraction": False, "seed": args.seed, "num_tx": len(tx_pixels), "num_rx": len(rx_pixels),
        "sionna_rt_version": sionna.rt.__version__, "wall_time_s": round(wall_s, 1),
        "setup_time_s": round(import_s, 1), "pixel_m": grid.pixel_m, "grid": "fedsim.data.madrid.madrid_grid()",
    }
    gain_db = np.concatenate(gain_db).astype(np.float32)
    np.savez_compressed(args.out, tx_xy=np.concatenate(tx_xy).astype(np.float32),
                        rx_xy=np.concatenate(rx_xy).astype(np.float32), path_gain_db=gain_db,
                        tx_pixel=np.concatenate(tx_pix).astype(np.int32),
                        rx_pixel=np.concatenate(rx_pix).astype(np.int32), metadata=json.dumps(metadata))
    found = np.isfinite(gain_db)
    print(f"wrote {args.out}: {len(gain_db)} links, {found.mean():.0%} with a path, path loss "
          f"{-gain_db[found].max():.1f}-{-gain_db[found].min():.1f} dB, {wall_s:.1f} s", flush=True)


if __name__ == "__main__":
    main()
