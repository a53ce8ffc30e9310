"""Tables I-III, Figures 3-4 and REPORT.md from the result files that the pipeline stages write.

The tables and figures follow the TOAU paper (Liu, Yuan, He, Zhang, Shao, 2026), called "the
paper" below: Table I on motion-capture motion, Table II on estimated motion, Table III the
ablation, Figure 3 accuracy against size, Figure 4 latency against uplink bandwidth.

Inputs (in `results_dir`): tokenizer_metrics.json, benchmark_motion.json, video_tables.json,
ablation.json, video_latency_inputs.json, latency_motion.json, and the executed notebooks in
notebooks/ (for each stage's wall-clock time). An optional `paper_numbers.csv` with columns
table, method, codec, resolution, crf, paper_overall, paper_kb fills the paper's printed values
beside ours; without it that column block stays empty.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from toau.bench.questions import CATEGORIES
from toau.provenance import provenance

PAPER_FILE = "paper_numbers.csv"
PAPER_COLUMNS = ("paper_overall", "paper_kb")
KEY_COLUMNS = ("table", "method", "codec", "resolution", "crf")

# The setting that stands for "video" in the headline ratios: H.264 at the largest size of the
# paper's grid (320x180) and the middle CRF of the default grid.
REFERENCE_VIDEO = {"codec": "libx264", "resolution": "320x180", "crf": 33}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """Render a DataFrame as a GitHub Markdown table, numbers rounded to `digits`."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_fmt(v, digits) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _with_paper_block(frame: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """Append the paper's printed values where results/paper_numbers.csv gives them, else empty columns."""
    paper_path = results_dir / PAPER_FILE
    if not paper_path.is_file():
        for column in PAPER_COLUMNS:
            frame[column] = np.nan
        return frame
    paper = pd.read_csv(paper_path)
    keys = [c for c in KEY_COLUMNS if c in frame.columns and c in paper.columns]
    for column in keys:
        frame[column] = frame[column].astype(str)
        paper[column] = paper[column].astype(str)
    return frame.merge(paper[keys + [c for c in PAPER_COLUMNS if c in paper.columns]], on=keys, how="left")


def video_table(video_tables: dict, table: str, results_dir: Path) -> pd.DataFrame:
    """Table I or II: the motion-packet row, then one row per codec x resolution x CRF."""
    rows = [row for row in video_tables["rows"] if row["table"] == table]
    columns = ["table", "method", "codec", "resolution", "crf", "kb_per_clip", "detection_rate",
               *(f"acc_{c}" for c in CATEGORIES), "acc_overall", "n_overall", "ci_low", "ci_high",
               "visual_tokens", "motion_tokens"]
    frame = pd.DataFrame(rows)[columns]
    return _with_paper_block(frame, results_dir)


def ablation_table(ablation: dict, results_dir: Path) -> pd.DataFrame:
    frame = pd.DataFrame(ablation["rows"])
    frame.insert(0, "table", "III")
    return _with_paper_block(frame.rename(columns={"model": "method"}), results_dir)


def stage_durations(notebooks_dir: Path) -> dict[str, float]:
    """Wall-clock seconds of each executed stage notebook, from the papermill metadata."""
    durations = {}
    for path in sorted(notebooks_dir.glob("*.ipynb")):
        metadata = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        if metadata.get("duration") is not None:
            durations[path.stem] = float(metadata["duration"])
    return durations


# ---------------------------------------------------------------- figures


def plot_figure3(video_tables: dict, path: Path) -> None:
    """Figure 3: accuracy against KB per clip (log x), one line per codec, motion packets as points."""
    import seaborn as sns
    from matplotlib.figure import Figure

    frame = pd.DataFrame([r for r in video_tables["rows"] if r["table"] == "I"])
    video = frame[frame["method"] == "video"].sort_values("kb_per_clip")
    packets = pd.DataFrame([r for r in video_tables["rows"] if r["method"] != "video"])
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    # One line per codec and resolution, through its CRF points; colour is the codec.
    sns.lineplot(data=video, x="kb_per_clip", y="acc_overall", hue="codec", style="resolution", markers=True,
                 dashes=False, estimator=None, sort=True, ax=ax)
    for table, marker in (("I", "*"), ("II", "P")):
        picked = packets[packets["table"] == table]
        ax.scatter(picked["kb_per_clip"], picked["acc_overall"], marker=marker, s=160, color="black", zorder=5,
                   label=f"motion packet (Table {table})")
    ax.set_xscale("log")
    ax.set(xlabel="transmitted KB per clip (log scale)", ylabel="overall accuracy", ylim=(0, 1),
           title="Figure 3: accuracy against transmitted size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def figure4_frame(latency_inputs: dict, video_tables: dict) -> pd.DataFrame:
    """Latency rows per method and bandwidth with the method's overall accuracy (Table I)."""
    frame = pd.DataFrame(latency_inputs["rows"])
    accuracy = pd.DataFrame([r for r in video_tables["rows"] if r["table"] == "I"])
    frame["label"] = [
        f"{m}" if m != "video" else f"{c} {r} crf{q}"
        for m, c, r, q in zip(frame["method"], frame["codec"], frame["resolution"], frame["crf"])
    ]
    accuracy["label"] = [
        f"{m}" if m != "video" else f"{c} {r} crf{q}"
        for m, c, r, q in zip(accuracy["method"], accuracy["codec"], accuracy["resolution"], accuracy["crf"])
    ]
    return frame.merge(accuracy[["label", "acc_overall"]], on="label", how="left")


def plot_figure4(frame: pd.DataFrame, path: Path, max_methods: int = 6) -> None:
    """Figure 4: stacked latency bars (edge, transfer, cloud) per method and bandwidth, accuracy as a line."""
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(frame["label"]))
    # Packets first, then the video settings with the largest payloads (the paper's comparison).
    packets = [m for m in methods if not m.startswith("lib")]
    videos = (frame[frame["label"].str.startswith("lib")].groupby("label")["payload_bytes"].mean()
              .sort_values(ascending=False).index.tolist())
    shown = (packets + videos)[:max_methods]
    bandwidths = sorted(frame["bandwidth_kBps"].unique())

    fig = Figure(figsize=(11, 4.8))
    ax = fig.subplots()
    width = 0.8 / len(shown)
    colours = {"edge_ms": "#4c72b0", "transfer_ms": "#dd8452", "cloud_ms": "#55a868"}
    for i, label in enumerate(shown):
        picked = frame[frame["label"] == label].set_index("bandwidth_kBps").loc[bandwidths]
        x = np.arange(len(bandwidths)) + (i - (len(shown) - 1) / 2) * width
        bottom = np.zeros(len(bandwidths))
        for part, colour in colours.items():
            seconds = picked[part].to_numpy() / 1000
            ax.bar(x, seconds, width, bottom=bottom, color=colour, edgecolor="white", linewidth=0.5,
                   label=part.replace("_ms", "") if i == 0 else None)
            bottom += seconds
        for xi, top in zip(x, bottom):
            ax.text(xi, top, label.replace(" ", "\n"), ha="center", va="bottom", fontsize=5)
    ax.set_xticks(np.arange(len(bandwidths)), [f"{b:g} KB/s" for b in bandwidths])
    ax.set(ylabel="latency (s)", title="Figure 4: end-to-end latency by uplink bandwidth (bars) and accuracy (dots)")
    ax.legend(loc="upper left", fontsize=8)

    twin = ax.twinx()
    for i, label in enumerate(shown):
        accuracy = frame[frame["label"] == label]["acc_overall"].iloc[0]
        x = np.arange(len(bandwidths)) + (i - (len(shown) - 1) / 2) * width
        twin.plot(x, [accuracy] * len(x), "k.", markersize=6)
    twin.set(ylim=(0, 1), ylabel="overall accuracy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- claims


def _reference_row(rows: list[dict]) -> dict | None:
    for row in rows:
        if row["method"] == "video" and all(str(row[k]) == str(v) for k, v in REFERENCE_VIDEO.items()):
            return row
    return None


def headline_claims(video_tables: dict, latency_inputs: dict | None) -> dict:
    """Measured ratios behind the paper's claims: payload, accuracy gap, latency share."""
    table1 = [r for r in video_tables["rows"] if r["table"] == "I"]
    packet = next(r for r in table1 if r["method"] != "video")
    video = _reference_row(table1)
    best_video = max((r for r in table1 if r["method"] == "video"), key=lambda r: r["acc_overall"])
    claims = {
        "packet_kb_per_clip": packet["kb_per_clip"],
        "packet_accuracy": packet["acc_overall"],
        "packet_ci": [packet["ci_low"], packet["ci_high"]],
        "best_video": {k: best_video[k] for k in ("codec", "resolution", "crf", "kb_per_clip", "acc_overall",
                                                  "ci_low", "ci_high")},
    }
    if video is not None:
        claims["reference_video"] = {k: video[k] for k in ("codec", "resolution", "crf", "kb_per_clip", "acc_overall",
                                                           "ci_low", "ci_high")}
        claims["payload_ratio"] = packet["kb_per_clip"] / video["kb_per_clip"]
        claims["accuracy_difference"] = packet["acc_overall"] - video["acc_overall"]
    if latency_inputs is not None and video is not None:
        frame = pd.DataFrame(latency_inputs["rows"])
        # CRF is a float column once packet rows (no CRF) share it, so compare numbers.
        reference = frame[(frame["method"] == "video") & (frame["codec"] == video["codec"])
                          & (frame["resolution"].astype(str) == str(video["resolution"]))
                          & (pd.to_numeric(frame["crf"], errors="coerce") == float(video["crf"]))]
        # Two packet paths: from motion capture (edge = tokenizer only) and from video through the
        # edge pipeline (edge = decode + pose + tokenizer), which is the paper's deployment.
        claims["latency_share"] = {}
        for method in [m for m in frame["method"].unique() if m != "video"]:
            motion = frame[frame["method"] == method]
            shares = {}
            for bandwidth in sorted(motion["bandwidth_kBps"].unique()):
                ours = motion[motion["bandwidth_kBps"] == bandwidth]["total_ms"].mean()
                theirs = reference[reference["bandwidth_kBps"] == bandwidth]["total_ms"].mean()
                shares[f"{bandwidth:g}"] = ours / theirs if theirs else float("nan")
            claims["latency_share"][method] = shares
    return claims


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "holds" if ok else "does not hold"


def report_markdown(results_dir: Path, claims: dict, tables: dict[str, pd.DataFrame], durations: dict,
                    tokenizer: dict | None, benchmark: dict | None, link: dict | None) -> str:
    """Compose REPORT.md from the measured claims, the tables and the stage times."""
    record = provenance()
    lines = ["# TOAU replication report", "",
             f"Generated {record['created']} from commit {record['git_commit'][:10]} on "
             f"{record['machine']['cpu']} ({record['machine']['cores']} cores), Python {record['machine']['python']}, "
             + ", ".join(f"{k} {v}" for k, v in record["packages"].items()) + ".", ""]

    lines += ["## The paper's claims on this data", ""]
    ratio = claims.get("payload_ratio")
    lines.append(
        f"- Payload about 1 % of video: {_verdict(ratio is not None and ratio <= 0.02 if ratio is not None else None)}. "
        f"A motion packet is {claims['packet_kb_per_clip']:.3f} KB per clip"
        + (f", {100 * ratio:.2f} % of {REFERENCE_VIDEO['codec']} {REFERENCE_VIDEO['resolution']} CRF "
           f"{REFERENCE_VIDEO['crf']} ({claims['reference_video']['kb_per_clip']:.1f} KB)." if ratio is not None else ".")
    )
    if "accuracy_difference" in claims:
        ref = claims["reference_video"]
        overlap = not (claims["packet_ci"][1] < ref["ci_low"] or ref["ci_high"] < claims["packet_ci"][0])
        lines.append(
            f"- Comparable accuracy: {_verdict(overlap or claims['accuracy_difference'] >= 0)}. Packets "
            f"{claims['packet_accuracy']:.3f} [{claims['packet_ci'][0]:.3f}, {claims['packet_ci'][1]:.3f}] against "
            f"video {ref['acc_overall']:.3f} [{ref['ci_low']:.3f}, {ref['ci_high']:.3f}] (95 % Wilson intervals); "
            f"the best video setting ({claims['best_video']['codec']} {claims['best_video']['resolution']} CRF "
            f"{claims['best_video']['crf']}) reaches {claims['best_video']['acc_overall']:.3f}."
        )
    if "latency_share" in claims:
        # The verdict uses packets made from video on the edge (pose estimation included) where
        # they were measured, since that is what an edge camera runs.
        all_shares = claims["latency_share"]
        deciding = next((m for m in all_shares if "estimated" in m), next(iter(all_shares), None))
        if deciding is not None:
            ok = all(v <= 0.3 for v in all_shares[deciding].values())
            parts = []
            for method, shares in all_shares.items():
                values = ", ".join(f"{v:.0%} at {k} KB/s" for k, v in shares.items())
                parts.append(f"{method}: {values}")
            lines.append(f"- Latency about 20 % of the video pipeline's: {_verdict(ok)} (judged on {deciding}). "
                         f"Latency relative to {REFERENCE_VIDEO['codec']} {REFERENCE_VIDEO['resolution']} CRF "
                         f"{REFERENCE_VIDEO['crf']}, analytic transfer, measured edge and cloud compute; "
                         + "; ".join(parts) + ".")
    lines.append("")
    lines.append("Video accuracy comes from the pixel pipeline (decode, MediaPipe pose, the same motion model), "
                 "not from a vision-language model, because no VLM weights can be had offline; the visual-token "
                 "columns give what Qwen3-VL would read for the same video.")
    lines.append("")

    if tokenizer:
        lines += ["## Tokenizer", ""]
        for model in ("vqvae", "autoencoder"):
            test = tokenizer.get(model, {}).get("splits", {}).get("test")
            if test:
                codes = f", {test['codes_used']} of {test['codebook_size']} codes used" if test.get("codes_used") else ""
                lines.append(f"- {model}: test MPJPE {test['mpjpe_mm']:.1f} mm over {test['frames']} frames{codes}")
        packets = tokenizer.get("packets", {})
        for kind in ("fixed", "entropy"):
            if kind in packets:
                lines.append(f"- {kind} packets: {packets[kind]['payload_bits_per_frame']:.2f} payload bits per frame, "
                             f"{packets[kind]['packet_bits_per_frame']:.2f} with the header")
        lines.append("")
    if benchmark:
        lines += ["## Motion QA benchmark (full test subset)", "",
                  markdown_table(pd.DataFrame([r for r in benchmark["rows"] if r["category"] == "overall"])[
                      ["method", "accuracy", "ci_low", "ci_high", "n", "kb_fixed", "motion_tokens", "text_tokens"]])]
    for name, frame in tables.items():
        lines += [f"## {name}", "", markdown_table(frame)]
    if link:
        lines += ["## Measured link", "", f"- {json.dumps(link.get('link', {}))}", ""]
    if durations:
        lines += ["## Stage wall-clock times", "",
                  "Times of the latest execution of each stage notebook. A stage whose training run was "
                  "already in its cache (cache/tokenizer_runs, cache/cloud/runs, build/video) only reloads "
                  "it, so these can be far below the time of a first run.", "",
                  "| stage | seconds |", "|---|---:|"]
        lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in durations.items()]
        lines += [f"| total | {sum(durations.values()):.0f} |", ""]
    if not (results_dir / PAPER_FILE).is_file():
        lines += ["The paper's printed numbers are not part of this repository; the `paper_*` columns stay empty "
                  f"until a `{PAPER_FILE}` with them is placed in results/.", ""]
    return "\n".join(lines)


def build_report(results_dir: str | os.PathLike) -> dict:
    """Write table1-3 (.csv, .md), figures/figure3.png, figures/figure4.png and REPORT.md; return the claims."""
    results_dir = Path(results_dir)
    video_tables = _read_json(results_dir / "video_tables.json")
    if video_tables is None:
        raise FileNotFoundError(f"{results_dir / 'video_tables.json'} not found; run the video stage first")
    ablation = _read_json(results_dir / "ablation.json")
    latency_inputs = _read_json(results_dir / "video_latency_inputs.json")

    tables = {"Table I: motion from motion capture": video_table(video_tables, "I", results_dir),
              "Table II: motion estimated from rendered video": video_table(video_tables, "II", results_dir)}
    if ablation is not None:
        tables["Table III: ablation"] = ablation_table(ablation, results_dir)
    for number, frame in zip(("table1", "table2", "table3"), tables.values()):
        frame.to_csv(results_dir / f"{number}.csv", index=False)
        (results_dir / f"{number}.md").write_text(markdown_table(frame))

    plot_figure3(video_tables, results_dir / "figures" / "figure3.png")
    if latency_inputs is not None:
        plot_figure4(figure4_frame(latency_inputs, video_tables), results_dir / "figures" / "figure4.png")

    claims = headline_claims(video_tables, latency_inputs)
    text = report_markdown(results_dir, claims, tables, stage_durations(results_dir / "notebooks"),
                           _read_json(results_dir / "tokenizer_metrics.json"),
                           _read_json(results_dir / "benchmark_motion.json"),
                           _read_json(results_dir / "latency_motion.json"))
    (results_dir / "REPORT.md").write_text(text)
    (results_dir / "claims.json").write_text(json.dumps(claims, indent=2) + "\n")
    return claims
