"""Link-level BLER curves of the 5G NR PDSCH MCS Table 2 simulated with NVIDIA Sionna 2.2 (PHY, PyTorch, CPU).

    pip install -c requirements/constraints.txt torch==2.13.0 "sionna-no-rt==2.2.0"   # a separate venv is fine
    python datasets/sionna_bler_curves.py               # writes datasets/nr_bler_sionna.npz (~10 KB)
    python datasets/sionna_bler_curves.py --quick --out /tmp/q.npz   # smoke test, ~220 CPU-s (4 min here)

Part 1, AWGN: for each MCS 0-27 of 3GPP TS 38.214 Table 5.1.3.1-2, code blocks of ``--code-block-bits``
information bits are LDPC-encoded and rate-matched (TS 38.212, ``sionna.phy.fec.ldpc``), Gray-mapped to QAM,
sent over AWGN at Es/N0 = SNR per resource element, demapped (exact APP) and decoded (flooding
sum-product, 20 iterations). The SNR grid is common (-10 to 30 dB, 0.25 dB); each MCS is swept from a
guess of its 10 % point downwards until every code block of a point fails and upwards until none does.
Points outside the swept window are filled with 1 (below) and 0 (above), and each row is made
non-increasing by a weighted isotonic (pool-adjacent-violators) fit over the simulated points.

Part 2, fading: MCS 5, 11, 17, 23 over TR 38.901 TDL-A 30 ns, TDL-B 100 ns and TDL-C 200 ns (3.5 GHz,
10 Hz Doppler), OFDM with 24 PRB at 30 kHz SCS (288 subcarriers x 14 symbols per slot), one transmit and
two receive antennas, perfect CSI and Sionna's LMMSE equaliser (maximum-ratio combining for one stream).
Each slot carries one simulated code block, mapped frequency-first from the first OFDM symbol. Per code
block the post-equalisation SINRs of its resource elements give the EESM effective SNR
gamma_eff(beta) = -beta ln(mean exp(-SINR / beta)), and the EESM beta of each (profile, MCS) is fitted by
maximum likelihood: each block's error indicator is Bernoulli with p = BLER_awgn(gamma_eff(beta)), taken
from the part-1 curve of the same MCS, and beta is searched on a log grid (1/8 to 8 times the digest
table's value).

Decoding stops early for a code block once its decoded information bits are correct (checked every
2 iterations; an ideal CRC-aided stop). That changes the BLER only by blocks that would be lost again
by iteration 20 (measured at MCS 0, 11 and 24: at most 0.31 % absolute, 1 % relative) and saves
15-50 % of the decoding work at and above the waterfall. The work runs in ``--workers`` processes with
``--threads`` torch threads each (2 x 1 by default: on a shared 2-core box, 2 threads per process make
every small tensor operation wait for the other thread). Everything is seeded per simulated point, so
reruns, and runs with another worker count, give identical numbers.

Cost: 1,600-1,800 CPU-seconds (about 1,300 AWGN + 400 fading), i.e. about 15 minutes on an idle 2-core
x86_64 CPU; 28 and 40 minutes measured on a shared one at load average 6-10 (``meta`` in the output
records the wall and CPU times of the run). The data card is datasets/nr-bler-sionna.md.
"""

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path

import numpy as np

MCS_QM = (2,) * 5 + (4,) * 6 + (6,) * 9 + (8,) * 8
MCS_R1024 = (120, 193, 308, 449, 602, 378, 434, 490, 553, 616, 658, 466, 517, 567, 616, 666, 719, 772, 822, 873,
             682.5, 711, 754, 797, 841, 885, 916.5, 948)
# EESM beta per MCS (Table 2) from sionna/sys/esm_params/eesm_beta_table.json, as quoted in the digest
# (shared/reference/003-lighttune.md, section 7.3), which the fitted betas are compared with
DIGEST_BETA = (1.6, 1.63, 1.67, 1.73, 1.79, 4.27, 4.71, 5.16, 5.66, 6.16, 6.5, 10.97, 12.92, 14.96, 17.06, 19.33,
               21.85, 24.51, 27.14, 29.94, 56.48, 65.0, 78.58, 92.48, 106.27, 118.74, 126.36, 132.54)
PROFILES = (("TDL-A30", "A", 30e-9), ("TDL-B100", "B", 100e-9), ("TDL-C200", "C", 200e-9))
FADING_MCS = (5, 11, 17, 23)
AWGN_GRID_DB = np.round(np.arange(-10.0, 30.0 + 1e-9, 0.25), 2)
FADING_GRID_DB = np.arange(-2.0, 30.0 + 1e-9, 2.0)
BETA_RATIOS = 2.0 ** np.linspace(-3.0, 3.0, 61)
CARRIER_HZ = 3.5e9
DOPPLER_HZ = 10.0
NUM_PRB = 24
SCS_HZ = 30e3
NUM_RX_ANT = 2
NUM_ITER = 20
STOP_CHECK_ITER = 2
MACHINE = "2-core x86_64 CPU, no GPU"


def gamma10_guess_db(mcs):
    """Starting guess of the AWGN 10 % BLER point, from the digest's closed form.

    Parameters
    ----------
    mcs : int
        MCS index in Table 2.

    Returns
    -------
    float
        ``10 log10(2^SE - 1) + 0.5 + 0.33 SE`` in dB, with SE = Q_m R.
    """
    se = MCS_QM[mcs] * MCS_R1024[mcs] / 1024
    return 10 * math.log10(2**se - 1) + 0.5 + 0.33 * se


class CodedLink:
    """One MCS's code-block chain: bits, 5G LDPC, QAM, and back with early-stopped BP decoding.

    Parameters
    ----------
    mcs : int
        MCS index in Table 2.
    k : int
        Information bits per code block.

    Notes
    -----
    The rate-matched length is ``n = Q_m ceil(k / (R Q_m))``. Sionna's encoder refuses R < 1/5 (MCS 0 and 1
    here), so those are encoded at n = 5k and repeated cyclically to n, as the NR circular buffer does, and
    the repeated LLRs are added before decoding. Sionna's circular buffer is 5k long instead of NR's
    ``N_cb`` (about 3 % longer for k = 1000), and the QPSK bit interleaver is skipped (it is immaterial for
    Gray QPSK).
    """

    def __init__(self, mcs, k):
        import torch
        from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder
        from sionna.phy.mapping import BinarySource, Constellation, Demapper, Mapper

        self.qm = MCS_QM[mcs]
        self.k = k
        self.n = self.qm * math.ceil(k * 1024 / (MCS_R1024[mcs] * self.qm))
        n_mother = min(self.n, 5 * k)
        self.repeated = n_mother < self.n
        self.encoder = LDPC5GEncoder(k, n_mother, num_bits_per_symbol=None if self.repeated else self.qm)
        self.decoder = LDPC5GDecoder(self.encoder, hard_out=True, num_iter=STOP_CHECK_ITER, return_state=True)
        self.repeat_index = torch.arange(self.n) % n_mother
        constellation = Constellation("qam", self.qm)
        self.mapper = Mapper(constellation=constellation)
        self.demapper = Demapper("app", constellation=constellation)
        self.source = BinarySource()

    def transmit(self, batch):
        """Draw, encode and map ``batch`` code blocks.

        Parameters
        ----------
        batch : int
            Number of code blocks.

        Returns
        -------
        bits : torch.Tensor
            ``[batch, k]`` information bits.
        symbols : torch.Tensor
            ``[batch, n / Q_m]`` unit-energy QAM symbols.
        """
        bits = self.source([batch, self.k])
        codewords = self.encoder(bits)
        if self.repeated:
            codewords = codewords[:, self.repeat_index]
        return bits, self.mapper(codewords)

    def block_errors(self, y, no, bits):
        """Demap and decode received symbols; return which code blocks failed.

        Parameters
        ----------
        y : torch.Tensor
            ``[batch, n / Q_m]`` equalised symbols.
        no : torch.Tensor
            Noise variance, scalar or per symbol.
        bits : torch.Tensor
            ``[batch, k]`` transmitted information bits (for the ideal CRC check).

        Returns
        -------
        torch.Tensor
            ``[batch]`` bool, True where the block is still wrong after ``NUM_ITER`` iterations.
        """
        import torch

        llr = self.demapper(y, no)
        if self.repeated:
            llr = torch.zeros(llr.shape[0], self.encoder.n).index_add_(1, self.repeat_index, llr)
        failed = torch.ones(llr.shape[0], dtype=torch.bool)
        active = torch.arange(llr.shape[0])
        state = None
        for _ in range(NUM_ITER // STOP_CHECK_ITER):
            bits_hat, state = self.decoder(llr[active], msg_v2c=state)
            done = (bits_hat == bits[active]).all(dim=-1)
            failed[active[done]] = False
            active, state = active[~done], state[~done]
            if active.numel() == 0:
                break
        return failed


def sweep(simulate_point, num_points, start):
    """Simulate grid points from ``start`` down until all blocks fail, then up until none fails.

    Parameters
    ----------
    simulate_point : callable
        ``simulate_point(index) -> dict`` with at least ``blocks`` and ``errors``.
    num_points : int
        Length of the SNR grid.
    start : int
        First grid index to simulate.

    Returns
    -------
    dict
        Grid index -> the point's result, for the simulated points only.
    """
    results = {}
    for index in range(start, -1, -1):
        results[index] = simulate_point(index)
        if results[index]["errors"] == results[index]["blocks"]:
            break
    if results[start]["errors"] > 0:
        for index in range(start + 1, num_points):
            results[index] = simulate_point(index)
            if results[index]["errors"] == 0:
                break
    return results


def init_worker(threads):
    """Process-pool initialiser: limit torch's intra-op threads.

    Parameters
    ----------
    threads : int
        Torch threads in this worker.
    """
    import torch

    torch.set_num_threads(threads)


def seed_point(seed):
    """Seed Sionna's generators, torch's default generator and numpy's global one.

    Parameters
    ----------
    seed : int
        Seed of one simulated point.
    """
    import sionna.phy
    import torch

    sionna.phy.config.seed = seed
    torch.manual_seed(seed)
    np.random.seed(seed)


def awgn_task(mcs, cfg):
    """Sweep one MCS over AWGN.

    Parameters
    ----------
    mcs : int
        MCS index.
    cfg : dict
        Run settings (``code_block_bits``, ``codewords``, ``target_errors``, ``batch``, ``seed``).

    Returns
    -------
    dict
        ``mcs``, ``points`` (grid index -> blocks, errors), ``n`` coded bits and ``cpu_s``.
    """
    import torch
    from sionna.phy.channel import AWGN

    cpu0 = time.process_time()
    link = CodedLink(mcs, cfg["code_block_bits"])
    channel = AWGN()

    def simulate_point(index):
        seed_point(cfg["seed"] + 1000 * mcs + index)
        snr_db = float(AWGN_GRID_DB[index])
        no = torch.tensor(10 ** (-snr_db / 10))
        blocks = errors = 0
        while blocks < cfg["codewords"] and errors < cfg["target_errors"]:
            bits, x = link.transmit(cfg["batch"])
            errors += int(link.block_errors(channel(x, no), no, bits).sum())
            blocks += cfg["batch"]
        print(f"[awgn] MCS {mcs:2d} SNR {snr_db:6.2f} dB  BLER {errors / blocks:.4f} ({errors}/{blocks})", flush=True)
        return {"blocks": blocks, "errors": errors}

    with torch.inference_mode():
        points = sweep(simulate_point, len(AWGN_GRID_DB), int(np.argmin(np.abs(AWGN_GRID_DB - gamma10_guess_db(mcs)))))
    return {"mcs": mcs, "points": points, "n": link.n, "cpu_s": time.process_time() - cpu0}


def fading_task(profile, mcs, start_db, cfg):
    """Sweep one (TDL profile, MCS) pair; keep every block's error flag and EESM SNRs for the beta fit.

    Parameters
    ----------
    profile : int
        Index into ``PROFILES``.
    mcs : int
        MCS index.
    start_db : float
        SNR at which the sweep starts (snapped to ``FADING_GRID_DB``).
    cfg : dict
        Run settings (``code_block_bits``, ``fading_codewords``, ``target_errors``, ``batch``, ``seed``).

    Returns
    -------
    dict
        ``profile``, ``mcs``, ``points`` (grid index -> blocks, errors, per-block ``failed`` flags,
        ``gamma_eff_db`` of shape ``[blocks, len(BETA_RATIOS)]``) and ``cpu_s``.
    """
    import torch
    from sionna.phy.channel import ApplyOFDMChannel, GenerateOFDMChannel
    from sionna.phy.channel.tr38901 import TDL
    from sionna.phy.mimo import lmmse_equalizer
    from sionna.phy.ofdm import ResourceGrid

    cpu0 = time.process_time()
    link = CodedLink(mcs, cfg["code_block_bits"])
    num_re = link.n // link.qm
    grid = ResourceGrid(num_ofdm_symbols=14, fft_size=12 * NUM_PRB, subcarrier_spacing=SCS_HZ)
    speed = DOPPLER_HZ * 299792458.0 / CARRIER_HZ
    _, model, delay_spread = PROFILES[profile]
    tdl = TDL(model, delay_spread, CARRIER_HZ, min_speed=speed, max_speed=speed, num_rx_ant=NUM_RX_ANT, num_tx_ant=1)
    generate_channel = GenerateOFDMChannel(tdl, grid, normalize_channel=False)
    apply_channel = ApplyOFDMChannel()
    betas = torch.tensor(DIGEST_BETA[mcs] * BETA_RATIOS, dtype=torch.float64)
    slot_shape = (14, 12 * NUM_PRB)
    eye = torch.eye(NUM_RX_ANT, dtype=torch.complex64)

    def simulate_point(index):
        seed_point(cfg["seed"] + 100000 + 10000 * profile + 100 * mcs + index)
        snr_db = float(FADING_GRID_DB[index])
        no = torch.tensor(10 ** (-snr_db / 10))
        failed, gamma_eff = [], []
        blocks = errors = 0
        while blocks < cfg["fading_codewords"] and errors < cfg["target_errors"]:
            batch = cfg["batch"]
            bits, x = link.transmit(batch)
            x_slot = torch.zeros(batch, slot_shape[0] * slot_shape[1], dtype=x.dtype)
            x_slot[:, :num_re] = x
            h = generate_channel(batch)  # [batch, 1, rx_ant, 1, 1, 14, 288]
            y = apply_channel(x_slot.reshape(batch, 1, 1, *slot_shape), h, no)  # [batch, 1, rx_ant, 14, 288]
            y = y.reshape(batch, NUM_RX_ANT, -1)[..., :num_re].transpose(1, 2)  # [batch, re, rx_ant]
            h = h.reshape(batch, NUM_RX_ANT, -1)[..., :num_re].transpose(1, 2).unsqueeze(-1)
            x_hat, no_eff = lmmse_equalizer(y, h, (no * eye).expand(batch, num_re, NUM_RX_ANT, NUM_RX_ANT))
            block_failed = link.block_errors(x_hat[..., 0], no_eff[..., 0], bits)
            sinr = 1.0 / no_eff[..., 0].double()
            log_mean = torch.logsumexp(-sinr[:, :, None] / betas, dim=1) - math.log(num_re)
            gamma_eff.append((10 * torch.log10(-betas * log_mean)).float().numpy())
            failed.append(block_failed.numpy())
            errors += int(block_failed.sum())
            blocks += batch
        print(f"[fading] {PROFILES[profile][0]:8s} MCS {mcs:2d} SNR {snr_db:5.1f} dB  BLER {errors / blocks:.4f} "
              f"({errors}/{blocks})", flush=True)
        return {"blocks": blocks, "errors": errors, "failed": np.concatenate(failed),
                "gamma_eff_db": np.concatenate(gamma_eff)}

    with torch.inference_mode():
        points = sweep(simulate_point, len(FADING_GRID_DB), int(np.argmin(np.abs(FADING_GRID_DB - start_db))))
    return {"profile": profile, "mcs": mcs, "points": points, "cpu_s": time.process_time() - cpu0}


def monotone_curve(points, grid_len):
    """Turn simulated (blocks, errors) points into a non-increasing BLER row on the full grid.

    Parameters
    ----------
    points : dict
        Grid index -> ``{"blocks", "errors"}`` for a contiguous run of simulated indices.
    grid_len : int
        Length of the SNR grid.

    Returns
    -------
    numpy.ndarray
        ``[grid_len]`` BLER: 1 below the simulated window, 0 above it, and inside it the weighted
        (by blocks) antitonic least-squares fit of the measured BLERs.
    """
    from scipy.optimize import isotonic_regression

    index = np.array(sorted(points))
    blocks = np.array([points[i]["blocks"] for i in index], dtype=float)
    bler = np.array([points[i]["errors"] for i in index]) / blocks
    row = np.zeros(grid_len)
    row[: index[0]] = 1.0
    row[index] = isotonic_regression(bler, weights=blocks, increasing=False).x
    return row


def crossing_db(snr_db, bler, level=0.1):
    """SNR at which a non-increasing BLER curve crosses ``level`` (linear in dB, log in BLER).

    Parameters
    ----------
    snr_db : numpy.ndarray
        Increasing SNR grid in dB.
    bler : numpy.ndarray
        Non-increasing BLER on that grid.
    level : float
        BLER level.

    Returns
    -------
    float
        The interpolated crossing, NaN if the curve never crosses.
    """
    below = np.nonzero(bler <= level)[0]
    if below.size == 0 or below[0] == 0:
        return float("nan")
    j = below[0]
    lo, hi = np.log10(max(bler[j - 1], 1e-6)), np.log10(max(bler[j], 1e-6))
    frac = (lo - math.log10(level)) / (lo - hi)
    return float(snr_db[j - 1] + frac * (snr_db[j] - snr_db[j - 1]))


def eesm_likelihood(gamma_eff_db, failed, snr_db, bler_row):
    """Bernoulli log-likelihood of the block errors under EESM + AWGN curve, per beta column.

    Parameters
    ----------
    gamma_eff_db : numpy.ndarray
        ``[blocks, betas]`` effective SNR in dB.
    failed : numpy.ndarray
        ``[blocks]`` bool error flags.
    snr_db, bler_row : numpy.ndarray
        The AWGN curve of the MCS.

    Returns
    -------
    loglik : numpy.ndarray
        ``[betas]`` log-likelihood.
    p : numpy.ndarray
        ``[blocks, betas]`` predicted BLER, clipped to [1e-4, 1 - 1e-4].
    """
    p = np.clip(np.interp(gamma_eff_db, snr_db, bler_row), 1e-4, 1 - 1e-4)
    loglik = np.where(failed[:, None], np.log(p), np.log1p(-p)).sum(axis=0)
    return loglik, p


def summarise_fading(fading, bler_awgn):
    """Fading BLER curves, fitted EESM betas and per-point EESM predictions from the fading tasks.

    Parameters
    ----------
    fading : list of dict
        Results of ``fading_task``.
    bler_awgn : numpy.ndarray
        ``[28, len(AWGN_GRID_DB)]`` AWGN curves.

    Returns
    -------
    fading_bler : numpy.ndarray
        ``[profiles, mcs, len(FADING_GRID_DB)]`` BLER, filled and made monotone like the AWGN rows.
    beta_fit : numpy.ndarray
        ``[profiles, mcs]`` maximum-likelihood EESM beta.
    meta : dict
        Raw (blocks, errors) counts, the betas within 2 log-likelihood units of the best, and per point the
        mean EESM SNR (dB of the linear mean) and the mean predicted BLER, with the digest and fitted betas.
    """
    num_p, num_f, num_s = len(PROFILES), len(FADING_MCS), len(FADING_GRID_DB)
    fading_bler = np.zeros((num_p, num_f, num_s))
    counts = np.zeros((num_p, num_f, num_s, 2), dtype=int)
    beta_fit = np.zeros((num_p, num_f))
    beta_interval = np.zeros((num_p, num_f, 2))
    detail = {key: np.full((num_p, num_f, num_s), np.nan) for key in
              ("gamma_eff_db_digest", "gamma_eff_db_fit", "pred_bler_digest", "pred_bler_fit")}
    digest_col = int(np.argmin(np.abs(BETA_RATIOS - 1.0)))
    for res in fading:
        p, f, mcs = res["profile"], FADING_MCS.index(res["mcs"]), res["mcs"]
        index = np.array(sorted(res["points"]))
        pts = [res["points"][i] for i in index]
        fading_bler[p, f] = monotone_curve(res["points"], num_s)
        counts[p, f, index] = [(pt["blocks"], pt["errors"]) for pt in pts]
        gamma_eff = np.concatenate([pt["gamma_eff_db"] for pt in pts])
        failed = np.concatenate([pt["failed"] for pt in pts])
        loglik, prob = eesm_likelihood(gamma_eff, failed, AWGN_GRID_DB, bler_awgn[mcs])
        best = int(np.argmax(loglik))
        beta_fit[p, f] = DIGEST_BETA[mcs] * BETA_RATIOS[best]
        inside = np.nonzero(loglik >= loglik[best] - 2.0)[0]
        beta_interval[p, f] = DIGEST_BETA[mcs] * BETA_RATIOS[[inside[0], inside[-1]]]
        bounds = np.cumsum([0] + [pt["blocks"] for pt in pts])
        for j, i in enumerate(index):
            rows = slice(bounds[j], bounds[j + 1])
            for key, col in (("digest", digest_col), ("fit", best)):
                detail[f"gamma_eff_db_{key}"][p, f, i] = 10 * np.log10(np.mean(10 ** (gamma_eff[rows, col] / 10)))
                detail[f"pred_bler_{key}"][p, f, i] = prob[rows, col].mean()
    meta = {
        "fading_blocks_errors": counts.tolist(),
        "digest_beta": [DIGEST_BETA[m] for m in FADING_MCS],
        "eesm_beta_fit_interval_2loglik": np.round(beta_interval, 3).tolist(),
        **{f"fading_{key}": json_floats(val) for key, val in detail.items()},
    }
    return fading_bler, beta_fit, meta


def json_floats(values, decimals=4):
    """Round an array for JSON, with None for NaN.

    Parameters
    ----------
    values : numpy.ndarray
        Any float array.
    decimals : int
        Decimals kept.

    Returns
    -------
    list
        Nested lists of floats and None.
    """
    return np.where(np.isfinite(values), np.round(values, decimals), None).tolist()


def sionna_table_check(k, bler_awgn):
    """Compare the AWGN curves with Sionna's own PDSCH Table 2 BLER table (code-block size nearest ``k``).

    Parameters
    ----------
    k : int
        Information bits per code block.
    bler_awgn : numpy.ndarray
        ``[28, len(AWGN_GRID_DB)]`` AWGN curves.

    Returns
    -------
    dict
        ``cbs`` (the table's code-block size), ``points`` (MCS -> [SNR, table BLER, our BLER, shift] at the
        table's SNRs with 0.01 < BLER < 0.99; shift = SNR at which our curve reaches the table's BLER minus
        the table's SNR, in dB) and ``mean_shift_db``. The table has no MCS 0 and 1 and a 1.58 dB grid.
    """
    import importlib.resources

    path = importlib.resources.files("sionna.sys") / "bler_tables" / "PDSCH_table2.json"
    table = json.loads(path.read_text())["category"]["1"]["index"]["2"]["MCS"]
    points, shifts, cbs = {}, [], None
    for mcs, entry in table.items():
        cbs = min((int(c) for c in entry["CBS"]), key=lambda c: abs(c - k))
        row = bler_awgn[int(mcs)]
        points[mcs] = []
        for snr, bler in zip(entry["SNR_db"], entry["CBS"][str(cbs)]["BLER"]):
            if 0.01 < bler < 0.99:
                shift = crossing_db(AWGN_GRID_DB, row, bler) - snr
                shifts.append(shift)
                points[mcs].append([round(snr, 3), round(bler, 4), round(float(np.interp(snr, AWGN_GRID_DB, row)), 4),
                                    round(shift, 3)])
    return {"cbs": cbs, "points": points, "mean_shift_db": round(float(np.mean(shifts)), 3)}


def sionna_version():
    """Installed Sionna distribution and version, without importing it.

    Returns
    -------
    str
        ``"sionna-no-rt 2.2.0"`` or ``"sionna 2.2.0"`` (the PHY package comes in either).
    """
    for name in ("sionna-no-rt", "sionna"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def run_pool(pool, fn, arg_list):
    """Run ``fn(*args)`` for every tuple in ``arg_list`` on the pool and return the results in order.

    Parameters
    ----------
    pool : concurrent.futures.Executor
        The worker pool.
    fn : callable
        Task function.
    arg_list : list of tuple
        Arguments of each task.

    Returns
    -------
    list
        The results, in the order of ``arg_list``.
    """
    futures = [pool.submit(fn, *args) for args in arg_list]
    return [future.result() for future in futures]


def parse_args():
    """Parse the command line.

    Returns
    -------
    argparse.Namespace
        The options, with the ``--quick`` presets applied.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("nr_bler_sionna.npz")))
    parser.add_argument("--code-block-bits", type=int, default=1000, help="LDPC information bits per code block")
    parser.add_argument("--codewords", type=int, default=600, help="max code blocks per AWGN point")
    parser.add_argument("--fading-codewords", type=int, default=600, help="max code blocks per fading point")
    parser.add_argument("--target-errors", type=int, default=100, help="stop a point after this many block errors")
    parser.add_argument("--batch", type=int, default=200, help="code blocks per simulated batch")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--seed", type=int, default=20260)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 100 blocks per point, 20 target errors, batches of 50")
    args = parser.parse_args()
    if args.quick:
        args.codewords = args.fading_codewords = 100
        args.target_errors, args.batch = 20, 50
    return args


def main():
    """Simulate both parts, fit the EESM betas and write the npz."""
    args = parse_args()
    cfg = {key: getattr(args, key) for key in
           ("code_block_bits", "codewords", "fading_codewords", "target_errors", "batch", "seed")}
    start = time.time()
    load_start = os.getloadavg()
    pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=init_worker,
                               initargs=(args.threads,))
    with pool:
        t0 = time.time()
        order = sorted(range(28), key=lambda m: -min(1024 / MCS_R1024[m], 5))  # longest codes first
        awgn = {r["mcs"]: r for r in run_pool(pool, awgn_task, [(m, cfg) for m in order])}
        awgn_wall = time.time() - t0
        bler_awgn = np.stack([monotone_curve(awgn[m]["points"], len(AWGN_GRID_DB)) for m in range(28)])
        gamma10 = [crossing_db(AWGN_GRID_DB, row) for row in bler_awgn]
        print(f"AWGN part: {awgn_wall:.0f} s wall", flush=True)

        t0 = time.time()
        jobs = [(p, m, gamma10[m] + 2.0, cfg) for p in range(len(PROFILES)) for m in FADING_MCS]
        fading = run_pool(pool, fading_task, jobs)
        fading_wall = time.time() - t0
        print(f"fading part: {fading_wall:.0f} s wall", flush=True)

    fading_bler, beta_fit, fading_meta = summarise_fading(fading, bler_awgn)
    total_wall = time.time() - start

    meta = {
        "what": "code-block BLER of 5G NR LDPC + QAM, PDSCH MCS Table 2 (TS 38.214 Table 5.1.3.1-2), Sionna PHY",
        "sionna_version": sionna_version(),
        "torch_version": metadata.version("torch"),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": MACHINE,
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed,
        "workers_x_threads": [args.workers, args.threads],
        "wall_s": {"awgn": round(awgn_wall, 1), "fading": round(fading_wall, 1), "total": round(total_wall, 1)},
        "cpu_s": {"awgn": round(sum(r["cpu_s"] for r in awgn.values()), 1),
                  "fading": round(sum(r["cpu_s"] for r in fading), 1)},
        "code_block_bits": args.code_block_bits,
        "codewords_per_point": {"awgn_max": args.codewords, "fading_max": args.fading_codewords,
                                "stop_after_errors": args.target_errors, "batch": args.batch},
        "decoder": f"LDPC5GDecoder boxplus-phi flooding, {NUM_ITER} iterations, ideal-CRC stop checked every "
                   f"{STOP_CHECK_ITER}", "demapper": "app", "snr": "Es/N0 per resource element (dB)",
        "awgn_grid": "common -10..30 dB step 0.25; swept per MCS, 1 below / 0 above the swept window, "
                     "weighted isotonic fit inside",
        "awgn_coded_bits": [awgn[m]["n"] for m in range(28)],
        "awgn_points": {str(m): [[float(AWGN_GRID_DB[i]), awgn[m]["points"][i]["blocks"],
                                  awgn[m]["points"][i]["errors"]] for i in sorted(awgn[m]["points"])]
                        for m in range(28)},
        "gamma10_db": json_floats(np.array(gamma10), 3),
        "sionna_table_check": sionna_table_check(args.code_block_bits, bler_awgn),
        "fading_setup": f"{NUM_PRB} PRB x 30 kHz SCS, 14 symbols, 1x{NUM_RX_ANT} antennas, perfect CSI, LMMSE, "
                        f"{CARRIER_HZ / 1e9} GHz, {DOPPLER_HZ} Hz Doppler, one code block per slot mapped "
                        "frequency-first; fading_bler is filled with 1 below / 0 above the swept window "
                        "(blocks = 0 in fading_blocks_errors) and isotonic inside, as for AWGN",
        "eesm_beta_fit_method": "max Bernoulli likelihood of per-block errors, p = AWGN BLER at the block's "
                                "gamma_eff(beta), beta on a log grid of 61 points from 1/8 to 8 x digest beta",
        **fading_meta,
    }
    np.savez_compressed(
        args.out, snr_db=AWGN_GRID_DB.astype(np.float64), mcs=np.arange(28, dtype=np.int64), bler_awgn=bler_awgn,
        code_block_bits=np.array(args.code_block_bits, dtype=np.int64),
        fading_profiles=np.array([name for name, _, _ in PROFILES]), fading_mcs=np.array(FADING_MCS, dtype=np.int64),
        fading_snr_db=FADING_GRID_DB.astype(np.float64), fading_bler=fading_bler, eesm_beta_fit=beta_fit,
        meta=np.array(json.dumps(meta)))
    print(json.dumps({k: meta[k] for k in ("wall_s", "cpu_s", "gamma10_db")}))
    print("eesm_beta_fit:", np.round(beta_fit, 2).tolist())
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KB) in {total_wall:.0f} s")


if __name__ == "__main__":
    main()
