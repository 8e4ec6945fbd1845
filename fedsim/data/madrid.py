"""The synthetic Madrid grid of the any-to-any path-loss paper (004): buildings, a park and roads on pixels.

The paper scales the METIS D6.1 Madrid grid to 140 x 97.5 m and cuts it into 56 x 39 pixels of 2.5 m.
Its block counts ("seven 13x13 buildings, one 13x13 park, eight 13x3 buildings") contradict its 744 road
pixels; 12x12 and 12x3 blocks give exactly 744 (digest Sec. 6.1), which is the layout used here:

- x-bands (56 pixels): road 1 | block 12 | road 2 | block 12 | road 2 | block 12 | road 2 | block 12 | road 1;
- y-bands (39 pixels): road 1 | big 12 | road 2 | thin 3 | road 3 | thin 3 | road 2 | big 12 | road 1;
- 2 rows x 4 big blocks: 7 buildings and 1 park (the third block of the first row); 2 rows x 4 thin
  12x3 buildings.

The normalised spatial loss field (SLF) is 1 in buildings, 0.1 in the park and 0 on roads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

ROAD, BUILDING, PARK = 0, 1, 2
SLF_OF_KIND = np.array([0.0, 1.0, 0.1])
"""Normalised SLF of a road, building and park pixel."""

_X_BLOCKS = (1, 15, 29, 43)
_BIG_Y, _THIN_Y = (1, 26), (15, 21)
_PARK_BLOCK = (2, 0)  # (x index, row) of the big block that is a park


@dataclass(frozen=True)
class Grid:
    """A pixel map of an area.

    Parameters
    ----------
    kinds : ndarray of int, shape (nx, ny)
        ``ROAD``, ``BUILDING`` or ``PARK`` per pixel (x index first).
    pixel_m : float
        Pixel side in metres.
    """

    kinds: np.ndarray
    pixel_m: float = 2.5

    @property
    def shape(self) -> tuple[int, int]:
        return self.kinds.shape

    @property
    def num_pixels(self) -> int:
        """P = nx * ny; pixel p is (ix, iy) = divmod(p, ny)."""
        return self.kinds.size

    @cached_property
    def centres(self) -> np.ndarray:
        """Pixel centres [P, 2] in metres, ((ix + 1/2) * pixel, (iy + 1/2) * pixel), p = ix * ny + iy."""
        ix, iy = np.meshgrid(np.arange(self.shape[0]), np.arange(self.shape[1]), indexing="ij")
        return np.column_stack([(ix.ravel() + 0.5) * self.pixel_m, (iy.ravel() + 0.5) * self.pixel_m])

    @cached_property
    def road_pixels(self) -> np.ndarray:
        """Indices p of the road pixels (where vehicles can be)."""
        return np.flatnonzero(self.kinds.ravel() == ROAD)

    @property
    def slf(self) -> np.ndarray:
        """The normalised SLF of the map, [P]."""
        return SLF_OF_KIND[self.kinds.ravel()]

    def pixel_of(self, xy: np.ndarray) -> np.ndarray:
        """Pixel index of positions [N, 2] in metres.

        Raises
        ------
        ValueError
            If a position lies outside the map.
        """
        xy = np.atleast_2d(np.asarray(xy, dtype=float))
        idx = np.floor(xy / self.pixel_m).astype(int)
        outside = (idx < 0).any(1) | (idx[:, 0] >= self.shape[0]) | (idx[:, 1] >= self.shape[1]) | \
            ~np.isfinite(xy).all(1)
        if outside.any():
            raise ValueError(f"position {xy[np.argmax(outside)].tolist()} m is outside the "
                             f"{self.shape[0] * self.pixel_m:g} x {self.shape[1] * self.pixel_m:g} m map")
        return idx[:, 0] * self.shape[1] + idx[:, 1]


def madrid_grid() -> Grid:
    """The 56 x 39 Madrid grid with 744 road pixels (see the module docstring)."""
    kinds = np.full((56, 39), ROAD, dtype=int)
    for bx, x0 in enumerate(_X_BLOCKS):
        for row, y0 in enumerate(_BIG_Y):
            kinds[x0 : x0 + 12, y0 : y0 + 12] = PARK if (bx, row) == _PARK_BLOCK else BUILDING
        for y0 in _THIN_Y:
            kinds[x0 : x0 + 12, y0 : y0 + 3] = BUILDING
    return Grid(kinds)
