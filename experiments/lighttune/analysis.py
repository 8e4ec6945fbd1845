"""Tables and figures of a finished LightTune suite, beside the paper's numbers.

    python experiments/lighttune/analysis.py results/suite-lighttune

Reads every run's per-UE episode metrics (``record-clients``) and writes into the suite folder:

- ``analysis.md``: the offline learnability gate (accuracy of the federated FF model vs the
  majority-class predictor, ours and the paper-literal recipe), the BLER-prediction error per UE channel
  without and with fine-tuning (Fig. 4, the paper's -43.5 / -36 / -48.8 %), false alarms (Fig. 5),
  trigger rates, and the throughput gains of CQI-Tune and RI-CQI-Tune over OLLA at medium (16-24 dB) and
  high (32-40 dB) SNR for every setting (Tables VII-X, XIII): the ratio of range-averaged throughputs per
  seed (digest Sec. 5.8), then mean +- std over seeds;
- ``fig4_error_vs_snr.png``, ``fig5_false_alarm.png``, ``fig7_throughput.png`` (main setting, mean over seeds).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedsim.results import read_run  # noqa: E402

MEDIUM, HIGH = (16.0, 24.0), (32.0, 40.0)
PAPER_ERROR = {"TDL-A30@10": "-43.5 %", "TDL-B50@30": "-36 %", "TDL-B100@50": "-48.8 %"}
"""Fig. 4: one-step LightTune vs no fine-tuning, low correlation, 80 ms, averaged over 0-40 dB."""
PAPER_GAIN = {  # (setting, UE) -> (CQI-Tune medium, RI-CQI-Tune medium, CQI-Tune high, RI-CQI-Tune high), in %
    ("main", "TDL-B50@30"): ("12.1", "2", "8.1", "1.1"),
    ("main", "TDL-C200@50"): ("9.1", "1.3", "8.5", "10.9"),
    ("main", "TDL-B200@50/medium"): ("1.5", "6.2", "3.4", "15.5"),
    ("hard", "TDL-B50@30"): ("9.0", "", "2.1", ""),
    ("hard", "TDL-C200@50"): ("12.4", "", "12.2", ""),
    ("period-40", "TDL-C200@50"): ("3", "6.7", "0.7", "9.1"),
    ("period-10", "TDL-B50@30"): ("2", "1", "0.2", "1.8"),
    ("period-10", "TDL-C200@50"): ("0.7", "0.1", "-0.2", "7.7"),
}


def load_setting(folder: Path) -> tuple[dict, list[dict]]:
    """Per seed: {(ue, snr): metrics}; and the runs' configs."""
    runs, configs = [], []
    for run_dir in sorted(p for p in folder.iterdir() if (p / "rounds.jsonl").exists()):
        config, rounds = read_run(run_dir)
        ues = [e.strip() for e in config["la-ues"].split(",")]
        episodes = {}
        for record in rounds:
            for pid, metrics in record.get("clients", {}).items():
                if "snr-db" in metrics:
                    episodes[(ues[int(pid) % len(ues)], metrics["snr-db"])] = metrics
        offline = [r for r in rounds if r["round"] == config["deploy-after"]]
        runs.append({"episodes": episodes, "offline": offline[0] if offline else {}, "config": config})
        configs.append(config)
    return runs, configs


def ue_names(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(ue for run in runs for ue, _ in run["episodes"]))


def snrs_of(runs: list[dict]) -> list[float]:
    return sorted({snr for run in runs for _, snr in run["episodes"]})


def fmt(values, scale: float = 1.0, digits: int = 3) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    arr = scale * np.asarray(values)
    return f"{arr.mean():.{digits}g} ± {arr.std():.2g}" if len(arr) > 1 else f"{arr.mean():.{digits}g}"


def mean_over_snr(run: dict, ue: str, key: str, snrs) -> float | None:
    values = [run["episodes"].get((ue, s), {}).get(key) for s in snrs]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def gate_table(settings: dict) -> list[str]:
    lines = ["## Offline learnability gate (federated FF model after the training rounds, UEs' held-out periods)", "",
             "| setting | FF accuracy | majority accuracy | FF BLER error | majority BLER error | separation |",
             "|---|---|---|---|---|---|"]
    for name in ("main", "paper-literal"):
        if name not in settings:
            continue
        offline = [run["offline"] for run in settings[name][0]]
        lines.append(f"| {name} | " + " | ".join(fmt([o.get(f"eval-{k}") for o in offline]) for k in (
            "accuracy", "majority-accuracy", "bler-error", "majority-bler-error", "separation")) + " |")
    return lines + [""]


def prediction_table(runs: list[dict]) -> list[str]:
    variants = [v for v in ("frozen", "one-step", "adam", "sgd", "backprop")
                if any(f"bler-error-{v}" in m for run in runs for m in run["episodes"].values())]
    snrs = snrs_of(runs)
    lines = ["## BLER prediction error, mean |P_hat - P| over the SNR points (Fig. 4)", "",
             "| UE channel | " + " | ".join(variants) + " | one-step vs frozen | paper (one-step) | "
             "trigger rate one-step |", "|---|" + "---|" * (len(variants) + 3)]
    for ue in ue_names(runs):
        errors = {v: [mean_over_snr(r, ue, f"bler-error-{v}", snrs) for r in runs] for v in variants}
        change = [100 * (o - f) / f for o, f in zip(errors.get("one-step", []), errors["frozen"]) if f]
        rate = [mean_over_snr(r, ue, "trigger-rate-one-step", snrs) for r in runs]
        lines.append(f"| {ue} | " + " | ".join(fmt(errors[v]) for v in variants)
                     + f" | {fmt(change, digits=2)} % | {PAPER_ERROR.get(ue, '')} | {fmt(rate, digits=2)} |")
    lines += ["", "Per SNR (frozen -> one-step), first UE (TDL-A30, the training channel; training range 0-12 dB):",
              ""]
    ue = ue_names(runs)[0]
    for snr in snrs:
        frozen = [r["episodes"].get((ue, snr), {}).get("bler-error-frozen") for r in runs]
        tuned = [r["episodes"].get((ue, snr), {}).get("bler-error-one-step") for r in runs]
        lines.append(f"- {snr:g} dB: {fmt(frozen)} -> {fmt(tuned)}")
    return lines + [""]


def false_alarm_table(runs: list[dict]) -> list[str]:
    snrs = snrs_of(runs)
    lines = ["## False alarms P(P_hat >= 0.9 | P < 0.9) (Fig. 5), mean over seeds", "",
             "| UE channel | variant | " + " | ".join(f"{s:g} dB" for s in snrs) + " |",
             "|---|---|" + "---|" * len(snrs)]
    for ue in ue_names(runs):
        for v in ("frozen", "one-step"):
            cells = [fmt([r["episodes"].get((ue, s), {}).get(f"false-alarm-{v}") for r in runs], digits=2)
                     for s in snrs]
            lines.append(f"| {ue} | {v} | " + " | ".join(cells) + " |")
    return lines + [""]


def gain(run: dict, ue: str, policy: str, snr_range) -> float | None:
    tp = mean_over_snr(run, ue, f"tput-{policy}", snr_range)
    base = mean_over_snr(run, ue, "tput-olla", snr_range)
    return None if tp is None or not base else 100 * (tp - base) / base


def throughput_table(settings: dict) -> list[str]:
    lines = ["## Throughput gain over OLLA, % (ratio of range-averaged throughputs; medium 16-24 dB, high 32-40 dB)",
             "", "| setting | UE channel | CQI-Tune medium | RI-CQI-Tune medium | CQI-Tune high | RI-CQI-Tune high "
             "| paper (same order) | OLLA Mbit/s medium / high |", "|---|---|---|---|---|---|---|---|"]
    for name, (runs, _) in settings.items():
        if not any("tput-cqi-tune" in m for r in runs for m in r["episodes"].values()):
            continue
        for ue in ue_names(runs):
            cells = [fmt([gain(r, ue, p, rng) for r in runs], digits=2)
                     for rng in (MEDIUM, HIGH) for p in ("cqi-tune", "ri-cqi-tune")]
            paper = " / ".join(v or "-" for v in PAPER_GAIN.get((name, ue), ()))
            base = " / ".join(fmt([mean_over_snr(r, ue, "tput-olla", rng) for r in runs], digits=4)
                              for rng in (MEDIUM, HIGH))
            lines.append(f"| {name} | {ue} | " + " | ".join(cells) + f" | {paper} | {base} |")
    return lines + [""]


def curves(runs: list[dict], keys: list[str], ylabel: str, path: Path, scale: float = 1.0) -> None:
    ues, snrs = ue_names(runs), snrs_of(runs)
    fig, axes = plt.subplots(1, len(ues), figsize=(3.2 * len(ues), 3), sharey=True, squeeze=False)
    for ax, ue in zip(axes[0], ues):
        for key in keys:
            values = np.array([[r["episodes"].get((ue, s), {}).get(key, np.nan) for s in snrs] for r in runs])
            if np.all(np.isnan(values)):
                continue
            ax.plot(snrs, scale * np.nanmean(values, 0), marker="o", ms=3, label=key.split("-", 2)[-1]
                    if key.startswith("bler") or key.startswith("false") else key[5:])
        ax.set_title(ue, fontsize=9)
        ax.set_xlabel("SNR [dB]")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite_dir", type=Path)
    args = parser.parse_args()
    settings = {}
    for folder in sorted(p for p in args.suite_dir.iterdir() if p.is_dir()):
        runs, configs = load_setting(folder)
        if runs:
            settings[folder.name] = (runs, configs)
    lines = ["# LightTune suite analysis", ""] + gate_table(settings)
    main_runs = settings["main"][0]
    lines += prediction_table(main_runs) + false_alarm_table(main_runs)
    for name, (runs, _) in settings.items():
        if name not in ("main", "paper-literal"):
            lines += [f"### setting {name}", ""] + prediction_table(runs)[:4 + len(ue_names(runs))] + [""]
    lines += throughput_table(settings)
    curves(main_runs, [f"bler-error-{v}" for v in ("frozen", "one-step", "adam", "backprop")],
           "mean |P_hat - P|", args.suite_dir / "fig4_error_vs_snr.png")
    curves(main_runs, ["false-alarm-frozen", "false-alarm-one-step"], "P_FA", args.suite_dir / "fig5_false_alarm.png")
    curves(main_runs, ["tput-olla", "tput-cqi-tune", "tput-ri-cqi-tune"], "throughput [Mbit/s]",
           args.suite_dir / "fig7_throughput.png")
    (args.suite_dir / "analysis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
