#!/usr/bin/env python3
"""bench/report.py: turns the --json files of bench_cpu.py into the Markdown rows of
docs/benchmarks.md.

    python3 bench/report.py /tmp/vera-bench-results/*.json
"""
import json
import statistics
import sys


WARMUP = 2


def medstep(runs):
    """tok/s at each run's median step time (robust to bursts of load from other processes)."""
    return [r["tokens_per_step"] / (statistics.median(r["step_ms"][WARMUP:]) / 1e3) for r in runs if "tok_s" in r]


def fastest(runs):
    """tok/s of the fastest measured step over all rounds: the least disturbed by other load."""
    ms = [x for r in runs if "tok_s" in r for x in r["step_ms"][WARMUP:]]
    return runs[0]["tokens_per_step"] / (min(ms) / 1e3) if ms else None


def main(paths):
    print("| run | system | tok/s median [min–max] | rounds | ÷ PEFT eager, median [per-round range] | "
          "÷ PEFT eager at median step | ÷ PEFT eager, fastest steps | peak RSS MiB | training RSS MiB | last loss | "
          "max rel. loss diff vs vera-dist | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        label = d.get("label") or p
        summ = d["summary"]
        ref = summ.get("peft-eager", {}).get("tok_s_median")
        ref_fast = fastest(d["runs"]["peft-eager"]) if d["runs"].get("peft-eager") else None
        ref_ms = statistics.median(medstep(d["runs"]["peft-eager"])) if d["runs"].get("peft-eager") and ref else None
        for name, s in summ.items():
            if "skipped" in s:
                print(f"| {label} | {name} | skipped: {s['skipped']} | | | | | | | | | |")
                continue
            toks = s["tok_s"]
            rr = s.get("ratio_to_peft_eager") or []
            ratio = f"{statistics.median(toks) / ref:.2f}× [{min(rr):.2f}–{max(rr):.2f}]" if ref and rr else "–"
            loads = [x[0] for x in s.get("load", [])]
            load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else ""
            med = statistics.median
            ms = medstep(d["runs"][name])
            ms_ratio = f"{med(ms) / ref_ms:.2f}×" if ref_ms and ms else "–"
            fr = fastest(d["runs"][name])
            fast = f"{fr / ref_fast:.2f}× ({fr:.0f} tok/s)" if fr and ref_fast else "–"
            print(f"| {label} | {name} | {med(toks):.0f} [{min(toks):.0f}–{max(toks):.0f}] | {len(toks)} | {ratio} | "
                  f"{ms_ratio} | {fast} | "
                  f"{med(s['maxrss_kb']) / 1024:.0f} | {med(s['train_rss_kb']) / 1024:.0f} | {s['last_loss']:.6f} | "
                  f"{s['max_rel_loss_diff_vs_vd']:.1e} | {load} |")


if __name__ == "__main__":
    main(sys.argv[1:])
