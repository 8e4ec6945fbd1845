"""5G NR link tables for the LightTune link-adaptation environment (paper 003).

What lives here (digest sections 5.8, 5.9 and 7.3):

- CQI Table 2 (TS 38.214 Table 5.2.2.1-3, 256QAM) and MCS Table 2 (Table 5.1.3.1-2), the default [rec, digest 5.9]
  because the paper mentions 256QAM; CQI Table 1 / MCS Table 1 (64QAM) as an option.
- The CQI -> MCS map: the highest MCS whose spectral efficiency does not exceed the CQI's, MCS 0 when none does
  (CQI Table 2 -> MCS Table 2 gives 1->0, 2->1, 3->3, ..., 15->27, the digest's column).
- EESM beta per MCS (Sionna ``eesm_beta_table.json`` as quoted in digest 7.3).
- Per-code-block AWGN BLER curves, two models behind one interface (:class:`BlerModel`):
  :class:`LogisticBler` (closed form, digest 7.3: gamma10(SE) = 10 log10(2^SE - 1) + 0.5 + 0.33 SE dB, slope
  s = 0.25 + 0.015 MCS dB, gamma50 = gamma10 - s ln 9) and :class:`TabulatedBler` (link-level curves read from
  ``datasets/nr_bler_sionna.npz``). :func:`default_bler_model` takes the table when the file exists, else the
  closed form.
- Transport block size per TS 38.214 5.1.3.2 (the full quantisation), LDPC code-block segmentation per TS 38.212
  (base-graph choice 7.2.2, segmentation 5.2.2) and the TB-BLER 1 - (1 - BLER_cb)^C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

NUM_CQI = 15
BLER_TARGET = 0.1
DEFAULT_BLER_TABLE = Path(__file__).resolve().parents[2] / "datasets" / "nr_bler_sionna.npz"
"""Where :func:`default_bler_model` looks for the Sionna link-level curves."""

# Index 0 of the CQI tables is "out of range" (no transmission); rows are (Q_m, R x 1024).
CQI_TABLE_1 = np.array([(0, 0), (2, 78), (2, 120), (2, 193), (2, 308), (2, 449), (2, 602), (4, 378), (4, 490),
                        (4, 616), (6, 466), (6, 567), (6, 666), (6, 772), (6, 873), (6, 948)], dtype=float)
"""TS 38.214 Table 5.2.2.1-2 (64QAM), rows CQI 0..15, columns (Q_m, R x 1024)."""
CQI_TABLE_2 = np.array([(0, 0), (2, 78), (2, 193), (2, 449), (4, 378), (4, 490), (4, 616), (6, 466), (6, 567),
                        (6, 666), (6, 772), (6, 873), (8, 711), (8, 797), (8, 885), (8, 948)], dtype=float)
"""TS 38.214 Table 5.2.2.1-3 (256QAM), rows CQI 0..15, columns (Q_m, R x 1024)."""

MCS_TABLE_1 = np.array(
    [(2, 120), (2, 157), (2, 193), (2, 251), (2, 308), (2, 379), (2, 449), (2, 526), (2, 602), (2, 679),
     (4, 340), (4, 378), (4, 434), (4, 490), (4, 553), (4, 616), (4, 658),
     (6, 438), (6, 466), (6, 517), (6, 567), (6, 616), (6, 666), (6, 719), (6, 772), (6, 822), (6, 873), (6, 910),
     (6, 948)], dtype=float)
"""TS 38.214 Table 5.1.3.1-1 (64QAM), rows MCS 0..28, columns (Q_m, R x 1024)."""
MCS_TABLE_2 = np.array(
    [(2, 120), (2, 193), (2, 308), (2, 449), (2, 602),
     (4, 378), (4, 434), (4, 490), (4, 553), (4, 616), (4, 658),
     (6, 466), (6, 517), (6, 567), (6, 616), (6, 666), (6, 719), (6, 772), (6, 822), (6, 873),
     (8, 682.5), (8, 711), (8, 754), (8, 797), (8, 841), (8, 885), (8, 916.5), (8, 948)], dtype=float)
"""TS 38.214 Table 5.1.3.1-2 (256QAM), rows MCS 0..27, columns (Q_m, R x 1024)."""

EESM_BETA_1 = np.array([1.60, 1.61, 1.63, 1.65, 1.67, 1.70, 1.73, 1.76, 1.79, 1.82, 3.97, 4.27, 4.71, 5.16, 5.66,
                        6.16, 6.50, 9.95, 10.97, 12.92, 14.96, 17.06, 19.33, 21.85, 24.51, 27.14, 29.94, 32.05,
                        34.28])
"""EESM beta (linear) per MCS of Table 1 (Sionna ``eesm_beta_table.json``, digest 7.3)."""
EESM_BETA_2 = np.array([1.6, 1.63, 1.67, 1.73, 1.79, 4.27, 4.71, 5.16, 5.66, 6.16, 6.5, 10.97, 12.92, 14.96, 17.06,
                        19.33, 21.85, 24.51, 27.14, 29.94, 56.48, 65.0, 78.58, 92.48, 106.27, 118.74, 126.36,
                        132.54])
"""EESM beta (linear) per MCS of Table 2 (Sionna ``eesm_beta_table.json``, digest 7.3)."""

_CQI_TABLES = {1: CQI_TABLE_1, 2: CQI_TABLE_2}
_MCS_TABLES = {1: MCS_TABLE_1, 2: MCS_TABLE_2}
_EESM_BETAS = {1: EESM_BETA_1, 2: EESM_BETA_2}

TBS_TABLE = np.array([
    24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 152, 160, 168, 176, 184, 192, 208, 224,
    240, 256, 272, 288, 304, 320, 336, 352, 368, 384, 408, 432, 456, 480, 504, 528, 552, 576, 608, 640, 672, 704,
    736, 768, 808, 848, 888, 928, 984, 1032, 1064, 1128, 1160, 1192, 1224, 1256, 1288, 1320, 1352, 1416, 1480,
    1544, 1608, 1672, 1736, 1800, 1864, 1928, 2024, 2088, 2152, 2216, 2280, 2408, 2472, 2536, 2600, 2664, 2728,
    2792, 2856, 2976, 3104, 3240, 3368, 3496, 3624, 3752, 3824])
"""TS 38.214 Table 5.1.3.2-1: the TBS values for N_info <= 3824."""


def spectral_efficiency(qm: float, r1024: float) -> float:
    """Per-layer spectral efficiency Q_m * R in bit/s/Hz (paper eq. 28), with R given x1024."""
    return float(qm) * float(r1024) / 1024.0


@dataclass(frozen=True)
class LinkTables:
    """The CQI table, its MCS table and the per-CQI quantities the simulator needs, indexed by CQI 0..15.

    Build with :func:`link_tables`. Index 0 is CQI 0 ("out of range") and holds zeros; the link
    adaptation never reports it (the lowest CQI is 1).

    Attributes
    ----------
    cqi_table, mcs_table : int
        3GPP table numbers (CQI Table 2 pairs with MCS Table 2, CQI Table 1 with MCS Table 1).
    cqi_se : ndarray [16]
        Q_m * R of each CQI (eq. 28); used by the rank selection (eq. 27).
    mcs : ndarray [16] of int
        The MCS transmitted for each CQI.
    mcs_qm, mcs_r1024, mcs_se : ndarray [16]
        Modulation order, code rate x1024 and spectral efficiency of that MCS (what the TBS and the BLER use).
    eesm_beta : ndarray [16]
        EESM beta of that MCS.
    """

    cqi_table: int
    mcs_table: int
    cqi_se: np.ndarray
    mcs: np.ndarray
    mcs_qm: np.ndarray
    mcs_r1024: np.ndarray
    mcs_se: np.ndarray
    eesm_beta: np.ndarray


@lru_cache(maxsize=4)
def link_tables(cqi_table: int = 2) -> LinkTables:
    """CQI table ``cqi_table`` (1 or 2) with its MCS table, the CQI -> MCS map and the EESM betas.

    The map takes, for each CQI, the highest MCS whose spectral efficiency does not exceed the CQI's
    (MCS 0 when none does, i.e. CQI 1 of Table 2 and CQIs 1-2 of Table 1). With Table 2 this reproduces the
    digest's column 1->0, 2->1, 3->3, 4->5, ..., 15->27.
    """
    if cqi_table not in _CQI_TABLES:
        raise ValueError(f"cqi_table must be 1 or 2, got {cqi_table!r}")
    cqi = _CQI_TABLES[cqi_table]
    mcs_rows = _MCS_TABLES[cqi_table]
    cqi_se = cqi[:, 0] * cqi[:, 1] / 1024.0
    mcs_se_all = mcs_rows[:, 0] * mcs_rows[:, 1] / 1024.0
    mcs = np.zeros(NUM_CQI + 1, dtype=int)
    for q in range(1, NUM_CQI + 1):
        feasible = np.flatnonzero(mcs_se_all <= cqi_se[q] + 1e-9)
        mcs[q] = feasible[-1] if feasible.size else 0
    mcs_qm = mcs_rows[mcs, 0].copy()
    mcs_r = mcs_rows[mcs, 1].copy()
    mcs_qm[0] = mcs_r[0] = 0.0
    beta = _EESM_BETAS[cqi_table][mcs].copy()
    beta[0] = 1.0
    for array in (cqi_se, mcs, mcs_qm, mcs_r, beta):
        array.setflags(write=False)
    mcs_se = mcs_qm * mcs_r / 1024.0
    mcs_se.setflags(write=False)
    return LinkTables(cqi_table, cqi_table, cqi_se, mcs, mcs_qm, mcs_r, mcs_se, beta)


# --------------------------------------------------------------------------- BLER curves


class BlerModel(Protocol):
    """Per-code-block AWGN BLER as a function of the (effective) SNR, for the MCS rows of one MCS table."""

    mcs_table: int

    def cb_bler(self, mcs: np.ndarray | int, snr_db: np.ndarray | float) -> np.ndarray:
        """Code-block BLER of MCS ``mcs`` at ``snr_db`` (broadcast together)."""
        ...

    def snr_at_bler(self, mcs: int, bler: float = BLER_TARGET) -> float:
        """SNR (dB) at which the curve of ``mcs`` crosses ``bler``."""
        ...


def closed_form_gamma10_db(se: np.ndarray | float) -> np.ndarray:
    """AWGN 10 %-BLER SNR of a code of spectral efficiency ``se``: 10 log10(2^SE - 1) + 0.5 + 0.33 SE dB.

    Digest 7.3: fitted to Sionna's CBS-2000 link-level crossings (±0.5 dB), i.e. for long code blocks.
    """
    se = np.asarray(se, dtype=float)
    return 10.0 * np.log10(np.expm1(se * math.log(2.0))) + 0.5 + 0.33 * se


@dataclass(frozen=True)
class LogisticBler:
    """Closed-form waterfall BLER(gamma) = 1 / (1 + exp((gamma_dB - gamma50) / s)) (digest 7.3).

    gamma10 comes from :func:`closed_form_gamma10_db` at the MCS's spectral efficiency; the slope is
    s = 0.25 + 0.015 * m dB, with m the MCS Table 2 index (for Table 1 MCS, the index of the Table 2 row of
    nearest spectral efficiency); gamma50 = gamma10 - s ln 9, so BLER(gamma10) = 0.1 exactly.
    """

    mcs_table: int = 2

    def _params(self, mcs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gamma10, slope = _logistic_params(self.mcs_table)
        return gamma10[mcs], slope[mcs]

    def cb_bler(self, mcs: np.ndarray | int, snr_db: np.ndarray | float) -> np.ndarray:
        gamma10, slope = self._params(np.asarray(mcs, dtype=int))
        gamma50 = gamma10 - slope * math.log(9.0)
        z = np.clip((np.asarray(snr_db, dtype=float) - gamma50) / slope, -60.0, 60.0)
        return 1.0 / (1.0 + np.exp(z))

    def snr_at_bler(self, mcs: int, bler: float = BLER_TARGET) -> float:
        gamma10, slope = self._params(np.asarray(mcs, dtype=int))
        gamma50 = gamma10 - slope * math.log(9.0)
        return float(gamma50 + slope * math.log(1.0 / bler - 1.0))


@lru_cache(maxsize=2)
def _logistic_params(mcs_table: int) -> tuple[np.ndarray, np.ndarray]:
    rows = _MCS_TABLES[mcs_table]
    se = rows[:, 0] * rows[:, 1] / 1024.0
    se2 = MCS_TABLE_2[:, 0] * MCS_TABLE_2[:, 1] / 1024.0
    table2_index = np.abs(se[:, None] - se2[None, :]).argmin(axis=1) if mcs_table != 2 else np.arange(len(se))
    return closed_form_gamma10_db(se), 0.25 + 0.015 * table2_index


class TabulatedBler:
    """Link-level per-code-block BLER curves read from an ``.npz`` file, interpolated in log-BLER over SNR.

    File format (written by ``datasets/sionna_bler_curves.py``; aliases accepted in brackets):

    - ``snr_db`` : [S] increasing SNR grid in dB;
    - ``bler`` (``bler_awgn``) : [M, S] code-block BLER, or [M, B, S] over B code-block sizes;
    - ``mcs`` (``mcs_index``) : [M] MCS indices of the rows (default 0..M-1);
    - ``cbs`` (``cb_size``) : [B] code-block sizes in bits when ``bler`` is 3-D; the largest is used, because
      5G NR segments large TBs into blocks of up to 8448 bits;
    - ``mcs_table`` : optional scalar, 1 or 2 (default 2).

    Curves are made non-increasing (running minimum) and interpolated linearly in log10(BLER), clamped at the
    grid ends. MCS rows missing from the file fall back to ``fallback`` (the closed form by default).

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file.
    fallback : BlerModel, optional
        Model for MCS rows the file does not hold.
    """

    _FLOOR = 1e-7

    def __init__(self, path: str | Path, fallback: BlerModel | None = None):
        with np.load(path) as data:
            keys = set(data.files)
            snr = np.asarray(data["snr_db"], dtype=float)
            bler = np.asarray(data["bler" if "bler" in keys else "bler_awgn"], dtype=float)
            mcs_key = next((k for k in ("mcs", "mcs_index") if k in keys), None)
            cbs_key = next((k for k in ("cbs", "cb_size") if k in keys), None)
            mcs = np.asarray(data[mcs_key], dtype=int) if mcs_key else np.arange(bler.shape[0])
            if bler.ndim == 3:
                pick = int(np.argmax(data[cbs_key])) if cbs_key else bler.shape[1] - 1
                bler = bler[:, pick, :]
            self.mcs_table = int(data["mcs_table"]) if "mcs_table" in keys else 2
        if bler.shape != (len(mcs), len(snr)) or np.any(np.diff(snr) <= 0):
            raise ValueError(f"{path}: expected bler [len(mcs), len(snr_db)] on an increasing grid, got "
                             f"bler {bler.shape}, {len(mcs)} MCS, {len(snr)} SNR points")
        self.path = Path(path)
        self.snr_db = snr
        self.fallback = fallback if fallback is not None else LogisticBler(self.mcs_table)
        num_rows = len(_MCS_TABLES[self.mcs_table])
        self._log_bler = np.full((num_rows, len(snr)), np.nan)
        monotone = np.minimum.accumulate(np.clip(bler, self._FLOOR, 1.0), axis=1)
        self._log_bler[mcs] = np.log10(monotone)
        self._present = ~np.isnan(self._log_bler[:, 0])

    def cb_bler(self, mcs: np.ndarray | int, snr_db: np.ndarray | float) -> np.ndarray:
        mcs, snr = np.broadcast_arrays(np.asarray(mcs, dtype=int), np.asarray(snr_db, dtype=float))
        out = np.empty(mcs.shape)
        present = self._present[mcs]
        if np.any(~present):
            out[~present] = self.fallback.cb_bler(mcs[~present], snr[~present])
        for m in np.unique(mcs[present]):
            sel = present & (mcs == m)
            out[sel] = 10.0 ** np.interp(snr[sel], self.snr_db, self._log_bler[m])
        return out

    def snr_at_bler(self, mcs: int, bler: float = BLER_TARGET) -> float:
        if not self._present[mcs]:
            return self.fallback.snr_at_bler(mcs, bler)
        curve = self._log_bler[mcs]
        # curve is non-increasing; np.interp needs increasing x, so flip it
        return float(np.interp(-math.log10(bler), -curve, self.snr_db))


def default_bler_model(mcs_table: int = 2, table_path: str | Path | None = DEFAULT_BLER_TABLE) -> BlerModel:
    """The tabulated Sionna curves when ``table_path`` exists (and ``mcs_table`` is its table), else the closed form.

    Pass ``table_path=None`` to force the closed form.
    """
    if table_path is not None and Path(table_path).is_file():
        model = TabulatedBler(table_path, fallback=LogisticBler(mcs_table))
        if model.mcs_table == mcs_table:
            return model
    return LogisticBler(mcs_table)


# --------------------------------------------------------------------------- TBS and segmentation


def transport_block_size(qm: float, r1024: float, num_layers: int, num_prb: int, num_dmrs_symbols: int = 1,
                         num_symbols: int = 14, overhead_per_prb: int = 0) -> int:
    """TBS in bits per TS 38.214 5.1.3.2 (the full quantisation).

    N'_RE = 12 N_symb - N_DMRS - N_oh with N_DMRS = 12 per DMRS symbol (type 1, both CDM groups without data,
    digest 5.8); N_RE = min(156, N'_RE) n_PRB; N_info = N_RE R Q_m v; then the small-N_info table lookup
    (Table 5.1.3.2-1) or the large-N_info rounding with the LDPC segmentation constants 3816 / 8424.
    """
    n_re_prb = 12 * num_symbols - 12 * num_dmrs_symbols - overhead_per_prb
    n_re = min(156, n_re_prb) * num_prb
    return tbs_from_n_info(n_re * (r1024 / 1024.0) * qm * num_layers, r1024 / 1024.0)


@lru_cache(maxsize=8192)
def tbs_from_n_info(n_info: float, code_rate: float) -> int:
    """TS 38.214 5.1.3.2 steps 3-4: quantise N_info to a TBS (``code_rate`` = R, not x1024)."""
    if n_info <= 0:
        return 0
    if n_info <= 3824:
        n = max(3, math.floor(math.log2(n_info)) - 6)
        n_info_q = max(24, 2**n * math.floor(n_info / 2**n))
        return int(TBS_TABLE[np.searchsorted(TBS_TABLE, n_info_q)])
    n = math.floor(math.log2(n_info - 24)) - 5
    n_info_q = max(3840, 2**n * _round_half_up((n_info - 24) / 2**n))
    if code_rate <= 0.25:
        c = math.ceil((n_info_q + 24) / 3816)
        return 8 * c * math.ceil((n_info_q + 24) / (8 * c)) - 24
    if n_info_q > 8424:
        c = math.ceil((n_info_q + 24) / 8424)
        return 8 * c * math.ceil((n_info_q + 24) / (8 * c)) - 24
    return 8 * math.ceil((n_info_q + 24) / 8) - 24


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def num_code_blocks(tbs: int, code_rate: float) -> int:
    """Number of LDPC code blocks of a TB (TS 38.212 7.2.2 base-graph choice, 5.2.2 segmentation).

    Base graph 2 (K_cb = 3840) when TBS <= 292, or TBS <= 3824 and R <= 0.67, or R <= 0.25; else base graph 1
    (K_cb = 8448). B = TBS + TB-CRC (24 bits above 3824, else 16); C = 1 if B <= K_cb, else
    ceil(B / (K_cb - 24)). For large TBs with R > 1/4 this is ceil((TBS + 24) / 8424) ~ ceil(TBS / 8448), the
    brief's approximation.
    """
    if tbs <= 0:
        return 0
    base_graph_2 = tbs <= 292 or (tbs <= 3824 and code_rate <= 0.67) or code_rate <= 0.25
    k_cb = 3840 if base_graph_2 else 8448
    b = tbs + (24 if tbs > 3824 else 16)
    return 1 if b <= k_cb else math.ceil(b / (k_cb - 24))


def tb_bler(cb_bler: np.ndarray | float, num_cbs: int) -> np.ndarray:
    """Transport-block error rate 1 - (1 - BLER_cb)^C for C independent code blocks."""
    return -np.expm1(num_cbs * np.log1p(-np.clip(np.asarray(cb_bler, dtype=float), 0.0, 1.0 - 1e-15)))
