"""The suite's outputs: the terminal table (thread counts on adjacent lines), the merged JSON,
and the figure (samples/s per batch with the GEMM-only bound)."""
import json
import math
import os
import textwrap
import time

SECTIONS = (
    ("train", "Training step (samples/s)"),
    ("epoch", "Epoch (samples/s)"),
    ("loglik", "Importance-weighted log-likelihood ((x, k) pairs/s)"),
    ("ops", "Per-op: fastvae vs NumPy (time per call)"),
    ("memory", "Working memory of one log-likelihood call (MB, lower is better)"),
    ("startup", "Startup: fresh process to the end of the first training step (s, lower is "
                "better)"),
)
CPU_PEERS = ("torch", "torch fused", "jax", "numpy")
GPU_NAMES = ("fastvae cuda", "torch cuda")
MIN_BLOCK_TARGET = 0.4   # under load: no timed block below this fraction of the median


# ---------------------------------------------------------------------------------------------
# number formats
# ---------------------------------------------------------------------------------------------
def fmt_rate(v):
    if not math.isfinite(v):
        return "nan"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.1f}k"
    if v >= 1e3:
        return f"{v / 1e3:.2f}k"
    return f"{v:.1f}"


def fmt_seconds(s):
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.2f}s"


def _spread(r):
    return f" ±{100 * r['spread']:.0f}%" if math.isfinite(r["spread"]) else ""


def _rate_cell(row, r):
    """median (a time per call for per-op rows) and the spread."""
    value = fmt_seconds(1 / r["median"]) if row["unit"] == "calls/s" else fmt_rate(r["median"])
    return value + _spread(r)


def _cost_cell(row, r):
    v = r["value"]
    return f"{v:.2f} s" if row["unit"] == "s" else f"{v:.1f} MB"


def _missing_cell(reason):
    for prefix, cell in (("not installed", "not installed"), ("no GPU", "no GPU"),
                         ("failed", "failed"), ("not run", "not run")):
        if reason.startswith(prefix):
            return cell
    return "n/a"


# ---------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------
def _peer_cell(row, name, cost):
    if name in row["results"]:
        r = row["results"][name]
        cell = _cost_cell(row, r) if cost else _rate_cell(row, r)
        ratio = row.get("ratios", {}).get(name)
        return cell + ("" if ratio is None else f" {ratio:.2f}x")
    if name in row["missing"]:
        return _missing_cell(row["missing"][name])
    return "-"


def _gpu_cell(row, name):
    if name not in row["results"]:
        return _missing_cell(row["missing"][name]) if name in row["missing"] else "-"
    cell = _peer_cell(row, name, cost=False)
    frac = row.get("fraction_of_bound", {}).get(name)
    return cell + ("" if frac is None else f" ({frac['low']:.2f}-{frac['high']:.2f} of bound)")


def _row_groups(merged, workload):
    """{(label, size): [(threads, row)]} for one workload, in first-seen order."""
    groups = {}
    for run in merged["runs"]:
        for row in run["rows"]:
            if row["workload"] == workload:
                groups.setdefault((row["label"], row["size"]), []).append((run["threads"], row))
    return groups


def _section_lines(merged, workload):
    groups = _row_groups(merged, workload)
    if not groups:
        return []
    rows = [row for pairs in groups.values() for _, row in pairs]
    cost = rows[0]["kind"] == "cost"
    peers = [p for p in CPU_PEERS if any(p in r["results"] or p in r["missing"] for r in rows)]
    gpu = [g for g in GPU_NAMES if any(g in r["results"] for r in rows)]
    if not gpu and any(g in r["missing"] for r in rows for g in GPU_NAMES):
        gpu = ["GPU"]
    head = ["work", "size", "thr", "fastvae"]
    if not cost:
        head += ["rate" if workload == "ops" else "GFLOP/s", "of bound"]
    head += peers + gpu
    table = [head]
    for (label, size), pairs in groups.items():
        for i, (threads, row) in enumerate(pairs):
            res = row["results"]
            line = [label if i == 0 else "", size if i == 0 else "", str(threads)]
            if "fastvae" not in res:
                line += [_missing_cell(row["missing"].get("fastvae", "n/a"))]
                line += [] if cost else ["", ""]
            elif cost:
                line += [_cost_cell(row, res["fastvae"])]
            else:
                fv = res["fastvae"]
                metric = "gflops" if row["flops_per_unit"] else "gbs"
                rate = f"{fv[metric]:.1f}" + ("" if workload != "ops" else
                                              " GFLOP/s" if metric == "gflops" else " GB/s")
                frac = row["fraction_of_bound"].get("fastvae")
                line += [_rate_cell(row, fv), rate,
                         "" if frac is None else f"{frac['low']:.2f}-{frac['high']:.2f}"]
            line += [_peer_cell(row, p, cost) for p in peers]
            if gpu == ["GPU"]:
                line += ["no GPU"]
            else:
                line += [_gpu_cell(row, g) for g in gpu]
            table.append(line)
    widths = [max(len(r[c]) for r in table) for c in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if k < 2 else c.rjust(w)  # noqa: E731
                              for k, (c, w) in enumerate(zip(r, widths)))
    title = dict(SECTIONS)[workload]
    out = ["", title, fmt(table[0]), "-" * len(fmt(table[0]))]
    out += [fmt(r) for r in table[1:]]
    notes = sorted({r.get("note") for r in rows if r.get("note")})
    out += [f"  ({n})" for n in notes]
    return out


def _fraction(v):
    return f"{v:.2f}" if v is not None and math.isfinite(v) else "nan"


def _load_share(load):
    """The busy loop's share of one core over the loaded blocks, e.g. "0.55 core"."""
    cpu, wall = load.get("cpu_s"), load.get("wall_s")
    return "" if cpu is None or not wall else f"{cpu / wall:.2f} core"


def _under_load_table(merged):
    """[header, lines...]: one line per training-step row, thread count and contender."""
    table = [["work", "size", "thr", "contender", "quiet", "loaded", "kept", "min/median",
              "load CPU"]]
    for (label, size), pairs in _row_groups(merged, "train").items():
        first = True
        for threads, row in pairs:
            ul = row.get("under_load")
            if ul is None:
                continue
            for i, (name, r) in enumerate(ul["results"].items()):
                low = r["min_over_median"] is not None and \
                    r["min_over_median"] < MIN_BLOCK_TARGET
                table.append([label if first else "", size if first else "",
                              str(threads) if i == 0 else "", name, fmt_rate(r["quiet"]),
                              fmt_rate(r["loaded"]), _fraction(r["kept"]),
                              _fraction(r["min_over_median"]) + (" !" if low else ""),
                              _load_share(ul["load"]) if i == 0 else ""])
                first = False
    return table


def _under_load_lines(merged):
    """The "under load" section (--under-load): per training-step row and contender, the quiet
    and loaded median samples/s, the share kept (loaded / quiet), the slowest loaded block over
    the loaded median, and the load process's share of a core. [] when the mode was off."""
    table = _under_load_table(merged)
    if len(table) == 1:
        return []
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    fmt = lambda r: "  ".join(c.ljust(w) if k in (0, 1, 3) else c.rjust(w)  # noqa: E731
                              for k, (c, w) in enumerate(zip(r, widths)))
    out = ["", "Training step under load: the same blocks beside one busy-loop process on the "
               "worker's cores (samples/s)", fmt(table[0]), "-" * len(fmt(table[0]))]
    out += [fmt(r).rstrip() for r in table[1:]]
    out.append(f"  (kept = loaded / quiet median; min/median = slowest loaded block / loaded "
               f"median, ! below the {MIN_BLOCK_TARGET:.2f} target; load CPU = the busy loop's "
               f"CPU time / wall time of the loaded blocks)")
    return out


def _probe_line(run):
    """'threads=N probes start -> end: key a->b, ...' (GFLOP/s or GB/s)."""
    start, end = run["probes"]["start"]["cpu"], run["probes"]["end"]["cpu"]
    if not start:
        return []
    parts = []
    for key, s in start.items():
        metric = "gflops" if "gflops" in s else "gbs"
        name = key.replace("train:", "step ").replace(":b", " b").replace("loglik:", "loglik ")
        parts.append(f"{name} {s[metric]:.0f}->{end[key][metric]:.0f}" +
                     (" GB/s" if metric == "gbs" else ""))
    text = (f"threads={run['threads']}: GEMM-only probe, NumPy float32 GFLOP/s at start -> end: "
            + ", ".join(parts))
    lines = textwrap.wrap(text, 118, subsequent_indent="    ")
    gpu_start = run["probes"]["start"].get("gpu")
    if gpu_start:
        gpu_end = run["probes"]["end"]["gpu"]
        gparts = [f"{k} {v.get('gflops', v.get('gbs')):.0f}->"
                  f"{gpu_end[k].get('gflops', gpu_end[k].get('gbs')):.0f}"
                  for k, v in gpu_start.items()]
        lines += textwrap.wrap("    GPU (CuPy/cuBLAS): " + ", ".join(gparts), 118,
                               subsequent_indent="    ")
    return lines


def table_lines(merged):
    """The whole report as lines: header (machine, versions, probes, peers), then sections."""
    v, m = merged["versions"], merged["machine"]
    out = [f"fastvae bench  {time.strftime('%Y-%m-%d %H:%M', time.localtime(merged['created']))}"
           f"  commit {merged['git_commit'] or 'unknown'}",
           f"machine: {m['cpu']} ({m['cpus']} CPUs), {m['platform']}",
           "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
           f"threads: {', '.join(map(str, merged['threads']))} (each in a fresh process, pinned); "
           f"{'quick' if merged['settings']['quick'] else 'full'} run: "
           f"{merged['settings']['repeats']} interleaved blocks of "
           f"~{merged['settings']['block_s']:.2f} s per row"]
    for run in merged["runs"]:
        out += _probe_line(run)
    gpu = merged["gpu"]
    out.append("GPU: " + (f"{gpu.get('name', 'CUDA device')}; fastvae device='cuda', "
                          f"synchronized blocks" if gpu["available"] else
                          f"not measured ({gpu['reason']})"))
    missing = {n: p["reason"] for n, p in merged["peers"].items() if p["reason"]}
    out += [f"{n}: {why}" for n, why in missing.items()]
    out.append("cells: median ± spread (max-min)/median; peer cells end with fastvae's advantage "
               "(fastvae/peer for rates, peer/fastvae for s and MB: > 1 means fastvae ahead); "
               "'of bound' = fastvae / GEMM-only bound, from the probe with the higher to the "
               "one with the lower bound")
    for workload, _ in SECTIONS:
        out += _section_lines(merged, workload)
        if workload == "train":
            out += _under_load_lines(merged)
    return out


def print_table(merged):
    print("\n".join(table_lines(merged)), flush=True)


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------
def merge(runs, argv, wall_s):
    """One dict for all thread counts: shared facts from the first run, every run in full."""
    first = runs[0]
    return dict(suite="fastvae bench", schema=1, created=time.time(), command=list(argv),
                machine=first["machine"], versions=first["versions"],
                git_commit=first["git_commit"], gpu=first["gpu"], peers=first["peers"],
                settings=first["settings"], threads=[r["threads"] for r in runs], runs=runs,
                wall_s=wall_s)


def _finite(obj):
    """NaN/Inf -> None, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(obj, path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_finite(obj), f, indent=1, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------------------------
def figure(merged, path):
    """Training-step samples/s against batch size: one panel per model and thread count, one
    line per contender (bars: min-max over blocks), the GEMM-only bound as a band (start/end
    probes) with a dashed line at its higher end. Returns the path, or None (no train rows, or
    no matplotlib)."""
    train = [(run["threads"], row) for run in merged["runs"] for row in run["rows"]
             if row["workload"] == "train"]
    if not train:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = list(dict.fromkeys(row["model"] for _, row in train))
    threads = merged["threads"]
    fig, axes = plt.subplots(len(models), len(threads), squeeze=False, sharex=True,
                             figsize=(5.2 * len(threads), 3.8 * len(models)))
    log_y = any(n in row["results"] for _, row in train for n in GPU_NAMES)
    for i, model in enumerate(models):
        for j, t in enumerate(threads):
            rows = sorted((r for tt, r in train if tt == t and r["model"] == model),
                          key=lambda r: r["batch"])
            _panel(axes[i][j], rows, log_y)
            axes[i][j].set_title(f"{model}, {t} thread{'s' if t > 1 else ''}", fontsize=10)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(f"fastvae bench: training step (commit {str(merged['git_commit'])[:12]}, "
                 f"{merged['machine']['cpu']})", fontsize=10)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _panel(ax, rows, log_y):
    if not rows:
        return
    batches = [r["batch"] for r in rows]
    names = list(dict.fromkeys(n for r in rows for n in r["results"]))
    for name in names:
        pts = [(r["batch"], r["results"][name]) for r in rows if name in r["results"]]
        x = [b for b, _ in pts]
        med = [s["median"] for _, s in pts]
        lo = [m - min(s["rates"]) for m, (_, s) in zip(med, pts)]
        hi = [max(s["rates"]) - m for m, (_, s) in zip(med, pts)]
        ax.errorbar(x, med, yerr=[lo, hi], marker="o", capsize=3, label=name)
    for dev, label in (("cpu", "GEMM-only bound (NumPy)"), ("gpu", "GEMM-only bound (cuBLAS)")):
        bounds = [r["bound"].get(dev) for r in rows]
        if not all(bounds):
            continue
        color = "k" if dev == "cpu" else "tab:purple"
        low, high = [b["low"] for b in bounds], [b["high"] for b in bounds]
        if len(batches) > 1:
            ax.fill_between(batches, low, high, color=color, alpha=0.15)
            ax.plot(batches, high, "--", color=color, label=label)
        else:   # one batch size: the band as a bar, the high end as a wide tick
            ax.errorbar(batches, high, yerr=[[h - lo for h, lo in zip(high, low)], [0]],
                        fmt="_", markersize=30, color=color, alpha=0.6, label=label)
    if len(batches) == 1:
        ax.set_xlim(batches[0] / 1.6, batches[0] * 1.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    if log_y:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("batch")
    ax.set_ylabel("samples/s")
    ax.grid(alpha=0.3)
