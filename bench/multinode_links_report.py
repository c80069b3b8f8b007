#!/usr/bin/env python3
"""multinode_links_report.py: tables, ring-model fit and plot from bench/multinode_links.sh.

    python3 bench/multinode_links_report.py RESULTS.jsonl OUT_DIR

Reads the rows multinode_links.sh wrote (allreduce_bench lines with rate / algo added, and the
vera-dist step rows), prints a Markdown report on stdout, and writes OUT_DIR/multinode_links.png
(gnuplot; skipped with a note when gnuplot is missing). Standard library only.

The model: a ring all-reduce of B bytes over p nodes takes
    T(p, B) = 2 (p - 1) / p * B / bw + 2 (p - 1) * alpha
For p = 2 that is B / bw + 2 alpha. At every rate alpha comes from the 2-node 1-float all-reduce
(recursive doubling: one exchange each way, = 2 alpha) and bw from the largest 2-node one, each
on its fastest call; every other row (the sizes between, Open MPI's default algorithm, 4 nodes
with the ring) is then predicted from those two numbers, not fitted.
"""
import json
import os
import shutil
import subprocess
import sys

RATE_BPS = {"none": None, "10gbit": 10e9, "1gbit": 1e9, "100mbit": 100e6, "10mbit": 10e6}
# an assumed per-message latency of TCP on a real Ethernet network, for the extrapolation next to
# the one measured here (which is mostly waiting for one of this host's two shared cores)
FABRIC_ALPHA = 20e-6


def ring_time(p, nbytes, bw, alpha):
    return 2.0 * (p - 1) / p * nbytes / bw + 2.0 * (p - 1) * alpha


def fmt_s(t):
    if t is None:
        return "-"
    if t < 1e-6:
        return "< 1 µs"
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs"
    if t < 1.0:
        return f"{t * 1e3:.1f} ms"
    return f"{t:.2f} s"


def fmt_bw(bytes_per_s):
    bits = bytes_per_s * 8
    return f"{bits / 1e9:.2f} Gbit/s" if bits >= 1e9 else f"{bits / 1e6:.1f} Mbit/s"


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: multinode_links_report.py RESULTS.jsonl OUT_DIR")
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    out_dir = sys.argv[2]
    rates = [r for r in RATE_BPS if any(x["rate"] == r for x in rows)]
    ar = [x for x in rows if x["kind"] == "allreduce"]
    steps = {x["rate"]: x for x in rows if x["kind"] == "vera-dist step"}
    sizes = sorted({x["floats"] for x in ar if x["nodes"] == 2 and x["floats"] > 16384})
    if len(sizes) < 2:
        raise SystemExit("multinode_links_report: expected the VeRA, LoRA and full sizes in the results")
    names = {sizes[0]: "VeRA", sizes[1]: "LoRA r16"}
    if len(sizes) > 2:
        names[sizes[2]] = "full"
    # the full size is the largest one asked for anywhere
    full_floats = max(sizes)

    def meas(rate, nodes, algo, floats):
        for x in ar:
            if x["rate"] == rate and x["nodes"] == nodes and x["algo"] == algo and x["floats"] == floats:
                return x["median_s"]
        return None

    def meas_min(rate, nodes, algo, floats):
        for x in ar:
            if x["rate"] == rate and x["nodes"] == nodes and x["algo"] == algo and x["floats"] == floats:
                return x["min_s"]
        return None

    # the link: alpha and bw per rate from the 2-node recursive-doubling rows (one exchange of B
    # each way: the model's p = 2 case, T = B / bw + 2 alpha): alpha from the 1-float all-reduce,
    # bw from the largest one, each on its fastest call (this host's two cores are shared, and a
    # median includes waits for a core, not for the network). The sizes between are predicted.
    fits = {}
    for r in rates:
        t1 = meas_min(r, 2, "rd", 1)
        big = max((x["floats"] for x in ar if x["rate"] == r and x["nodes"] == 2 and x["algo"] == "rd"), default=None)
        if t1 is None or big is None or big == 1:
            raise SystemExit(f"multinode_links_report: no 1-float and large recursive-doubling rows at {r}")
        alpha = t1 / 2.0
        fits[r] = (4.0 * big / max(meas_min(r, 2, "rd", big) - 2 * alpha, 1e-9), alpha)  # bw (bytes/s), alpha (s)

    p = print
    p("### Results: one all-reduce between 2 nodes (1 rank each)\n")
    p("Median (fastest) of the timed calls; B · 8 / rate is the time the bytes need on the wire.\n")
    p("| link | size | B · 8 / rate | Open MPI default (vera-dist's) | recursive doubling | model B / bw + 2 α |")
    p("|---|---|---|---|---|---|")
    for r in rates:
        bw, alpha = fits[r]
        for s in [1] + sizes:
            wire = "-" if RATE_BPS[r] is None else fmt_s(4.0 * s * 8 / RATE_BPS[r])
            cells = []
            for algo in ("default", "rd"):
                t, tmin = meas(r, 2, algo, s), meas_min(r, 2, algo, s)
                cells.append("not measured" if t is None else f"{fmt_s(t)} ({fmt_s(tmin)})")
            label = "1 float" if s == 1 else f"{names[s]} ({4 * s / 1e6:.3g} MB)"
            p(f"| {r} | {label} | {wire} | {cells[0]} | {cells[1]} | {fmt_s(ring_time(2, 4.0 * s, bw, alpha))} |")
    p("")
    p("| link | fitted bw | fitted α | vera-dist step, VeRA (median, fastest) | VeRA's all-reduce in it (default algorithm, median) |")
    p("|---|---|---|---|---|")
    for r in rates:
        bw, alpha = fits[r]
        st = steps.get(r)
        t_v = meas(r, 2, "default", sizes[0])
        share = f"{100 * t_v / st['median_s']:.1f} %" if st and t_v else "-"
        p(f"| {r} | {fmt_bw(bw)} | {fmt_s(alpha)} | "
          f"{(fmt_s(st['median_s']) + ' (' + fmt_s(st['min_s']) + ')') if st else '-'} | {share} |")
    p("")

    p("### The model checked on 4 nodes × 1 rank (ring algorithm forced), predicted from the 2-node fit\n")
    p("| link | size | measured median (fastest) | model 1.5 · B / bw + 6 α | fastest / model |")
    p("|---|---|---|---|---|")
    for r in rates:
        bw, alpha = fits[r]
        for s in sizes[:2]:
            t, tmin = meas(r, 4, "ring", s), meas_min(r, 4, "ring", s)
            if t is None:
                continue
            m = ring_time(4, 4.0 * s, bw, alpha)
            p(f"| {r} | {names[s]} | {fmt_s(t)} ({fmt_s(tmin)}) | {fmt_s(m)} | {tmin / m:.2f} |")
    p("")

    # compute part of vera-dist's step: the unshaped step minus its all-reduce there
    base = "none" if "none" in steps else (rates[0] if rates[0] in steps else None)
    compute = None
    if base is not None:
        t_ar = meas(base, 2, "default", sizes[0]) or 0.0
        compute = steps[base]["median_s"] - t_ar
        p(f"vera-dist's step without the network (the median `{base}` step minus its all-reduce there): "
          f"{fmt_s(compute)}.\n")

    # a real link of rate R: bw = eta R, eta = what the shaped links delivered where the shaper
    # (not this host's CPUs) was the bottleneck: the rates whose fitted bw is under 90 % of the
    # unshaped one
    ceiling = fits["none"][0] if "none" in fits else float("inf")
    bound = [r for r in rates if RATE_BPS[r] is not None and fits[r][0] < 0.9 * ceiling]
    eta = sum(fits[r][0] * 8 / RATE_BPS[r] for r in bound) / len(bound) if bound else 1.0
    alpha_host = fits[base][1] if base else FABRIC_ALPHA
    p("### Extrapolated with the ring model\n")
    p(f"bw = {eta:.2f} × the link rate (the mean of fitted bw / rate at {', '.join(bound) or 'no rate'}, where "
      f"the shaper was the bottleneck), α = this host's ({fmt_s(alpha_host)}, the unshaped 1-float fit: "
      f"mostly waiting for a shared core) or an assumed {fmt_s(FABRIC_ALPHA)} (TCP on a real Ethernet network). "
      f"VeRA's share of a step: against the {fmt_s(compute) if compute else '-'} of compute measured here.\n")
    p("| link | α | nodes | VeRA | LoRA r16 | full | VeRA share of a step |")
    p("|---|---|---|---|---|---|---|")
    for r in rates:
        if RATE_BPS[r] is None:
            continue
        bw = eta * RATE_BPS[r] / 8
        for a_name, a in (("this host", alpha_host), ("assumed", FABRIC_ALPHA)):
            for nodes in (2, 64, 512):
                tv = ring_time(nodes, 4.0 * sizes[0], bw, a)
                tl = ring_time(nodes, 4.0 * sizes[1], bw, a)
                tf = ring_time(nodes, 4.0 * full_floats, bw, a)
                share = f"{100 * tv / (tv + compute):.1f} %" if compute else "-"
                p(f"| {r} | {a_name} {fmt_s(a)} | {nodes} | {fmt_s(tv)} | {fmt_s(tl)} | {fmt_s(tf)} | {share} |")
    p("")

    if compute:
        p("### Where VeRA's step stops depending on the network\n")
        p("The slowest link rate at which VeRA's all-reduce is at most 1 % (5 %) of the step, from the ring model "
          f"(bandwidth term 2(p−1)/p · B / ({eta:.2f} · rate), latency term 2(p−1) α; where the latency alone passes "
          "the limit, no rate is enough):\n")
        p("| α | nodes | ≤ 1 % of the step | ≤ 5 % |")
        p("|---|---|---|---|")
        for a_name, a in (("this host", alpha_host), ("assumed", FABRIC_ALPHA)):
            for nodes in (2, 64, 512):
                cells = []
                for frac in (0.01, 0.05):
                    budget = frac * compute - 2 * (nodes - 1) * a
                    if budget <= 0:
                        cells.append("none (latency alone)")
                    else:
                        need = 2.0 * (nodes - 1) / nodes * 4.0 * sizes[0] / budget / eta
                        cells.append(fmt_bw(need))
                p(f"| {a_name} {fmt_s(a)} | {nodes} | " + " | ".join(cells) + " |")
        p("")

    plot(out_dir, rates, sizes, fits, meas, steps, compute, full_floats, eta)


def plot(out_dir, rates, sizes, fits, meas, steps, compute, full_floats, eta):
    if shutil.which("gnuplot") is None:
        print("(gnuplot not found: no plot)")
        return
    shaped = [r for r in rates if RATE_BPS[r] is not None]
    dat = os.path.join(out_dir, "links.dat")
    with open(dat, "w") as f:
        # rate_gbit, VeRA, LoRA, full measured (NaN = not measured), vera-dist step
        for r in shaped:
            vals = [meas(r, 2, "default", s) for s in sizes] + [None] * (3 - len(sizes))
            st = steps.get(r, {}).get("median_s")
            f.write(f"{RATE_BPS[r] / 1e9:g} " + " ".join("NaN" if v is None else f"{v:g}" for v in vals) +
                    f" {'NaN' if st is None else st:}\n")
    model = os.path.join(out_dir, "model.dat")
    bw, alpha = eta * 1e9 / 8, (fits["none"][1] if "none" in fits else fits[shaped[0]][1])
    with open(model, "w") as f:
        p = 2
        while p <= 1024:
            f.write(f"{p} " + " ".join(f"{ring_time(p, 4.0 * s, bw, alpha):g}" for s in (sizes[0], sizes[1], full_floats)) +
                    " " + " ".join(f"{ring_time(p, 4.0 * s, bw, FABRIC_ALPHA):g}" for s in (sizes[0], sizes[1], full_floats)) + "\n")
            p *= 2
    png = os.path.join(out_dir, "multinode_links.png")
    comp = f"{compute:g}" if compute else "NaN"
    script = f"""
set terminal pngcairo size 1400,560 font ",11"
set output '{png}'
set multiplot layout 1,2
set logscale xy
set grid
set key top right
set format y "%g"
set title "One all-reduce, 2 nodes x 1 rank (measured) vs link rate"
set xlabel "link rate (Gbit/s, tbf on every node's link)"
set ylabel "seconds"
set xrange [0.007:14]
plot '{dat}' using 1:2 with linespoints pt 7 lw 2 title "VeRA (0.84 MB)", \\
     '{dat}' using 1:3 with linespoints pt 5 lw 2 title "LoRA r16 (19.5 MB)", \\
     '{dat}' using 1:4 with linespoints pt 9 lw 2 title "full fine-tune (538 MB)", \\
     '{dat}' using 1:5 with linespoints pt 13 lw 2 dt 2 title "vera-dist step (VeRA, SmolLM2)", \\
     {comp} with lines lw 2 lc rgb "#606060" dt 4 title "vera-dist step without the network"
set title "Ring model at 1 Gbit/s (bw = {eta:.2f} x rate), over nodes"
set xlabel "nodes p"
set xrange [2:1024]
set key top left
plot '{model}' using 1:2 with lines lw 2 lc 1 title "VeRA, this host alpha", \\
     '{model}' using 1:3 with lines lw 2 lc 2 title "LoRA r16, this host alpha", \\
     '{model}' using 1:4 with lines lw 2 lc 3 title "full, this host alpha", \\
     '{model}' using 1:5 with lines lw 2 lc 1 dt 2 title "VeRA, alpha 20 us (assumed)", \\
     '{model}' using 1:6 with lines lw 2 lc 2 dt 2 title "LoRA r16, alpha 20 us (assumed)", \\
     '{model}' using 1:7 with lines lw 2 lc 3 dt 2 title "full, alpha 20 us (assumed)", \\
     {comp} with lines lw 2 lc rgb "#606060" dt 4 title "vera-dist step without the network"
unset multiplot
"""
    res = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if res.returncode != 0:
        raise SystemExit(f"multinode_links_report: gnuplot failed: {res.stderr.strip()}")
    print(f"(plot: {png})")


if __name__ == "__main__":
    main()
