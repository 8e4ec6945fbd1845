"""Ray-traced Wi-Fi CSI (channel frequency responses) of the SPG-MIBO room with a person in it (paper 001).

    pip install -c requirements/constraints.txt ".[sionna]"   # sionna-rt 2.2.0; on CPU also libLLVM >= 16
    nice -n 10 python datasets/sionna_csi.py                   # writes datasets/csi_sionna.npz (144 KB)

The room of ``fedsim.data.csi.CSIRoom()`` (4 m x 3 m, here with a 2.8 m ceiling) is a closed box: floor,
ceiling and four walls are 0.2 m slabs of ITU "concrete" whose inner faces are the room's boundary. One
transmitter and two receivers stand at the generator's positions (isotropic, vertically polarised, one
element each), so the two links are the generator's. The person is a box of body tissue (a custom radio
material, relative permittivity 50 and conductivity 4 S/m, roughly muscle at 5 GHz) whose size and pose
depend on the activity:

- standing: 0.4 (x) x 0.3 (y) x 1.7 (z) m on the floor, centred on the grid point;
- sitting: 0.4 x 0.5 x 1.3 m on the floor (torso and thighs of a seated person in one box), centred;
- lying: 1.7 x 0.4 x 0.3 m on the floor along x, chest on the grid point: the head end 0.35 m from it towards
  the nearer wall x = 0 or x = 4 m, the feet towards the room centre (so the body stays inside the room).

Sionna RT's PathSolver traces line of sight, specular reflection and wedge diffraction (no refraction, no
diffuse reflection; ``--depth`` interactions, default 3; the vertices are merged so that box edges are wedges)
for the empty room and for the body on every ``--stride``-th grid point of the generator's 0.2 m grid in both
x and y (default 2: 9 x 6 = 54 points, 0.4 m apart) and each of the 3 activities. For every trace the
channel frequency response at the generator's M = 32 subcarrier frequencies (5.18 GHz, 40 MHz) is computed
from the paths' complex gains and absolute delays (no delay normalisation) and split into the paths that
touch the body (``body``) and the others (``rest``: the room's paths that the body does not block, so
``rest - static`` is the shadowing). Snapshots, respiration and impairments are synthesised by the loader,
``fedsim.data.csi_sionna.load_sionna_csi``. The file records its settings and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from fedsim.data.csi import ACTIVITIES, CSIRoom

_LLVM_19 = "/usr/lib/x86_64-linux-gnu/libLLVM-19.so"
"""Dr.Jit's LLVM backend needs LLVM >= 16; LLVM 14/15 (also installed here) are not found or crash."""

SLAB_M = 0.2
BODY_SIZE_M = {"standing": (0.4, 0.3, 1.7), "sitting": (0.4, 0.5, 1.3), "lying": (1.7, 0.4, 0.3)}
LYING_HEAD_M = 0.35  # distance from the chest (the grid point) to the head end of a lying body


def body_box(activity: str, x: float, y: float, room: CSIRoom) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corner (x, y, z) [m] of the body box for a person at grid point (x, y)."""
    sx, sy, sz = BODY_SIZE_M[activity]
    if activity == "lying":
        if x < room.width / 2:  # head towards x = 0, feet towards the centre
            low_x, high_x = x - LYING_HEAD_M, x - LYING_HEAD_M + sx
        else:
            low_x, high_x = x + LYING_HEAD_M - sx, x + LYING_HEAD_M
    else:
        low_x, high_x = x - sx / 2, x + sx / 2
    low, high = np.array([low_x, y - sy / 2, 0.0]), np.array([high_x, y + sy / 2, sz])
    if low[0] < 0 or low[1] < 0 or high[0] > room.width or high[1] > room.height:
        raise ValueError(f"{activity} body at ({x}, {y}) leaves the room")
    return low, high


def _cube(name: str, low, high, material_id: str) -> str:
    low, high = np.asarray(low, float), np.asarray(high, float)
    scale = ", ".join(f"{v:.6g}" for v in (high - low) / 2)
    shift = ", ".join(f"{v:.6g}" for v in (high + low) / 2)
    return f"""    <shape type="cube" id="{name}">
        <transform name="to_world"><scale value="{scale}"/><translate value="{shift}"/></transform>
        <ref id="{material_id}" name="bsdf"/>
    </shape>
"""


def scene_xml(room: CSIRoom, ceiling_m: float, body: tuple[np.ndarray, np.ndarray] | None,
              permittivity: float, conductivity: float) -> str:
    """Mitsuba XML of the closed room (six concrete slabs, no overlaps) and optionally the body box."""
    w, h, c, t = room.width, room.height, ceiling_m, SLAB_M
    shapes = [
        _cube("floor", (-t, -t, -t), (w + t, h + t, 0), "concrete"),
        _cube("ceiling", (-t, -t, c), (w + t, h + t, c + t), "concrete"),
        _cube("wall_x0", (-t, -t, 0), (0, h + t, c), "concrete"),
        _cube("wall_x1", (w, -t, 0), (w + t, h + t, c), "concrete"),
        _cube("wall_y0", (0, -t, 0), (w, 0, c), "concrete"),
        _cube("wall_y1", (0, h, 0), (w, h + t, c), "concrete"),
    ]
    if body is not None:
        shapes.append(_cube("body", body[0], body[1], "body-tissue"))
    return f"""<scene version="2.1.0">
    <bsdf type="itu-radio-material" id="concrete">
        <string name="type" value="concrete"/>
        <float name="thickness" value="{t}"/>
    </bsdf>
    <bsdf type="radio-material" id="body-tissue">
        <float name="relative_permittivity" value="{permittivity}"/>
        <float name="conductivity" value="{conductivity}"/>
        <float name="thickness" value="0.3"/>
    </bsdf>
{"".join(shapes)}</scene>
"""


def make_scene(room: CSIRoom, xml: str):
    """Scene from XML with the room's radios (isotropic V-pol single elements), carrier = room.carrier_hz."""
    from sionna.rt import PlanarArray, Receiver, Transmitter, load_scene_from_string

    scene = load_scene_from_string(xml, merge_shapes=True, merge_shapes_exclude_regex="body",
                                   remove_duplicate_vertices=True)  # merged vertices: box edges are wedges
    scene.frequency = room.carrier_hz
    scene.tx_array = PlanarArray(num_rows=1, num_cols=1, pattern="iso", polarization="V")
    scene.rx_array = scene.tx_array
    for i, p in enumerate(room.tx):
        scene.add(Transmitter(f"tx{i}", position=[float(v) for v in p]))
    for i, p in enumerate(room.rx):
        scene.add(Receiver(f"rx{i}", position=[float(v) for v in p]))
    return scene


def trace(scene, solver, room: CSIRoom, args: argparse.Namespace, body_id: int | None):
    """CFR of the body paths and of the other paths, two complex128 arrays (n_pair, M), and path counts.

    Links are TX-major like the generator's (``l = i_tx * n_rx + i_rx``).
    """
    paths = solver(scene, max_depth=args.depth, samples_per_src=args.samples, los=True, specular_reflection=True,
                   diffuse_reflection=False, refraction=False, diffraction=args.diffraction, edge_diffraction=False,
                   seed=args.seed)
    a_re, a_im = (np.asarray(part.numpy(), dtype=np.float64) for part in paths.a)
    a = (a_re + 1j * a_im)[:, 0, :, 0, :]  # (num_rx, num_tx, P): one antenna element each
    tau = np.asarray(paths.tau.numpy(), dtype=np.float64)  # (num_rx, num_tx, P) with synthetic arrays
    valid = np.asarray(paths.valid.numpy(), dtype=bool).reshape(a.shape)
    a = np.where(valid, a, 0)
    touches = np.zeros(a.shape, dtype=bool)
    if body_id is not None:
        objects = np.asarray(paths.objects.numpy()).reshape(-1, *a.shape)  # (depth, num_rx, num_tx, P)
        touches = (objects == body_id).any(axis=0) & valid
    phase = np.exp(-2j * np.pi * room.frequencies[:, None, None, None] * tau[None])  # (M, rx, tx, P)
    h_body = np.einsum("rtp,mrtp->trm", np.where(touches, a, 0), phase)
    h_rest = np.einsum("rtp,mrtp->trm", np.where(touches, 0, a), phase)
    # Cross-check against Sionna's own CFR. Paths.cfr works in complex baseband (its coefficients include the
    # carrier phase exp(-j 2 pi f_c tau)), so it takes the subcarrier offsets f_n - f_c; out_type="numpy"
    # returns one complex array [num_rx, rx_ant, num_tx, tx_ant, time, M].
    sionna_h = paths.cfr(frequencies=room.frequencies - room.carrier_hz, normalize_delays=False,
                         out_type="numpy")[:, 0, :, 0, 0, :].transpose(1, 0, 2)  # (tx, rx, M)
    error = np.abs(sionna_h - h_body - h_rest).max() / np.abs(sionna_h).max()
    if error > 1e-3:
        raise RuntimeError(f"own CFR differs from paths.cfr by {error:.2e} (relative)")
    n = room.n_pair
    return (h_body.reshape(n, -1), h_rest.reshape(n, -1), int(valid.sum()), int(touches.sum()))


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces the run (every option spelled out, ``--out`` left off)."""
    options = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
               if k not in ("out", "diffraction") and v is not None]
    return " ".join(["python datasets/sionna_csi.py", *options] + ([] if args.diffraction else ["--no-diffraction"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("csi_sionna.npz")))
    parser.add_argument("--stride", type=int, default=2, help="trace every stride-th grid point in x and y")
    parser.add_argument("--samples", type=int, default=3 * 10**5, help="rays per source")
    parser.add_argument("--depth", type=int, default=3, help="maximum number of interactions per path")
    parser.add_argument("--no-diffraction", dest="diffraction", action="store_false")
    parser.add_argument("--ceiling", type=float, default=2.8, help="ceiling height [m]")
    parser.add_argument("--permittivity", type=float, default=50.0, help="body relative permittivity")
    parser.add_argument("--conductivity", type=float, default=4.0, help="body conductivity [S/m]")
    parser.add_argument("--max-positions", type=int, default=None, help="trace only the first few (a smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.stride < 1:
        parser.error("--stride must be >= 1")
    if "DRJIT_LIBLLVM_PATH" not in os.environ and Path(_LLVM_19).exists():
        os.environ["DRJIT_LIBLLVM_PATH"] = _LLVM_19

    start = time.time()
    cpu_start = time.process_time()
    load_start = os.getloadavg()
    import sionna.rt
    from sionna.rt import PathSolver

    room = CSIRoom()
    xs, ys = room.grid_axis(0)[::args.stride], room.grid_axis(1)[::args.stride]
    positions = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)  # x-major like the generator
    positions = positions[:args.max_positions]
    solver = PathSolver()

    scene = make_scene(room, scene_xml(room, args.ceiling, None, args.permittivity, args.conductivity))
    _, static, n_static, _ = trace(scene, solver, room, args, None)
    print(f"empty room: {n_static} paths, {time.time() - start:.1f} s", flush=True)

    shape = (len(ACTIVITIES), len(positions), room.n_pair, room.n_subcarriers)
    body, rest = np.zeros(shape, complex), np.zeros(shape, complex)
    n_paths, n_body_paths = np.zeros(shape[:2], np.int32), np.zeros(shape[:2], np.int32)
    trace_s = []
    for a, activity in enumerate(ACTIVITIES):
        first = body_box(activity, *positions[0], room)
        scene = make_scene(room, scene_xml(room, args.ceiling, first, args.permittivity, args.conductivity))
        person = scene.objects["body"]
        for p, (x, y) in enumerate(positions):
            t0 = time.time()
            low, high = body_box(activity, x, y, room)
            person.position = [float(v) for v in (low + high) / 2]  # the centre of the bounding box
            body[a, p], rest[a, p], n_paths[a, p], n_body_paths[a, p] = trace(scene, solver, room, args,
                                                                              person.object_id)
            trace_s.append(time.time() - t0)
        print(f"{activity}: {len(positions)} positions, {np.mean(n_body_paths[a]):.0f} body paths on average, "
              f"{time.time() - start:.1f} s", flush=True)
    wall_s = time.time() - start
    metadata = {
        "room": {"width_m": room.width, "height_m": room.height, "ceiling_m": args.ceiling, "tx": room.tx,
                 "rx": room.rx, "walls": f"ITU concrete slabs {SLAB_M} m (floor, ceiling, 4 walls)"},
        "carrier_hz": room.carrier_hz, "bandwidth_hz": room.bandwidth_hz, "n_subcarriers": room.n_subcarriers,
        "grid_m": room.grid, "margin_m": room.margin, "stride": args.stride, "activities": list(ACTIVITIES),
        "body": {"size_m": BODY_SIZE_M, "lying_head_m": LYING_HEAD_M, "relative_permittivity": args.permittivity,
                 "conductivity_s_per_m": args.conductivity},
        "antenna": "isotropic, vertical polarisation, 1 element", "solver": "PathSolver",
        "samples_per_src": args.samples, "max_depth": args.depth, "los": True, "specular_reflection": True,
        "diffraction": args.diffraction, "edge_diffraction": False, "refraction": False,
        "diffuse_reflection": False, "seed": args.seed, "sionna_rt_version": sionna.rt.__version__,
        "num_traces": 1 + len(trace_s), "wall_time_s": round(wall_s, 1),
        "cpu_time_s": round(time.process_time() - cpu_start, 1),
        "trace_time_s": {"mean": round(float(np.mean(trace_s)), 2), "max": round(float(np.max(trace_s)), 2)},
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
        "command": _command(args),
    }
    np.savez_compressed(args.out, frequencies=room.frequencies, positions=positions, static=static.astype(np.complex64),
                        body=body.astype(np.complex64), rest=rest.astype(np.complex64), n_paths=n_paths,
                        n_body_paths=n_body_paths, n_static_paths=np.int32(n_static), metadata=json.dumps(metadata))
    dynamic = body + rest - static
    ratio_db = 10 * np.log10(np.mean(np.abs(dynamic) ** 2, axis=(2, 3)) / np.mean(np.abs(static) ** 2))
    print(f"wrote {args.out}: {len(positions)} positions x {len(ACTIVITIES)} activities, |H - H_static|^2 / "
          f"|H_static|^2 median {np.median(ratio_db):.1f} dB (range {ratio_db.min():.1f} to {ratio_db.max():.1f}), "
          f"{wall_s:.1f} s wall", flush=True)


if __name__ == "__main__":
    main()
