"""Ray-traced path-gain maps of the 12 cells on Sionna RT's Munich scene (the paper's scene), for vehicular-qos.

    pip install "sionna-rt==2.2.0"            # and, on CPU: apt-get install libllvm19 (Dr.Jit needs LLVM >= 16)
    python datasets/sionna_radio_map.py        # writes datasets/munich_path_gain.npz (about 1 MB)

Each of the 12 eNBs of the authors' simulator (fedsim.data.qos.ENB_POSITIONS) is a transmitter at 3.5 GHz
with an isotropic antenna; Sionna RT's RadioMapSolver computes the path gain on a 10 m grid at 1.5 m
height (line of sight, specular reflection, refraction and diffraction; 10^7 rays per transmitter, depth 5).
The generator uses the file when ``qos-radio-map`` points at it: a UE is placed on a grid cell that the
serving eNB covers within the cell radius, and RSRP comes from the ray-traced path gain (plus the
regime's shadowing spread) instead of the log-distance model. The file is data; this script only needs
to run again to change the scene or the resolution.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from fedsim.data.qos import ENB_POSITIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("munich_path_gain.npz")))
    parser.add_argument("--cell-size", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=10**7)
    parser.add_argument("--depth", type=int, default=5)
    args = parser.parse_args()
    import sionna.rt as rt
    from sionna.rt import PlanarArray, RadioMapSolver, Transmitter, load_scene

    start = time.time()
    scene = load_scene(rt.scene.munich)
    scene.frequency = 3.5e9
    scene.tx_array = PlanarArray(num_rows=1, num_cols=1, vertical_spacing=0.5, horizontal_spacing=0.5,
                                 pattern="iso", polarization="V")
    scene.rx_array = scene.tx_array
    for i, position in enumerate(ENB_POSITIONS):
        scene.add(Transmitter(f"enb{i + 1}", position=[float(v) for v in position]))
    radio_map = RadioMapSolver()(scene, cell_size=(args.cell_size, args.cell_size), samples_per_tx=args.samples,
                                 max_depth=args.depth, diffraction=True, seed=0)
    gain = radio_map.path_gain.numpy()
    with np.errstate(divide="ignore"):
        gain_db = np.where(gain > 0, 10 * np.log10(gain), -np.inf).astype(np.float32)
    centers = radio_map.cell_centers.numpy()[..., :2].astype(np.float32)
    np.savez_compressed(args.out, path_gain_db=gain_db, cell_centers=centers,
                        enb_positions=ENB_POSITIONS.astype(np.float32), frequency_hz=np.float32(3.5e9),
                        cell_size_m=np.float32(args.cell_size))
    covered = np.isfinite(gain_db).mean(axis=(1, 2))
    print(f"wrote {args.out}: {gain_db.shape[0]} cells, grid {gain_db.shape[1]}x{gain_db.shape[2]}, "
          f"covered {covered.min():.0%}-{covered.max():.0%} of the grid per eNB, {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
