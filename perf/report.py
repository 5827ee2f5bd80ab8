#!/usr/bin/env python3
"""Turns the raw JSON lines of one perf/run.sh run into the markdown report (stdout) and a CSV
beside the raw file (one row per load run, every round).

Ratios compare each target with nginx in the same scenario: req/s ×nginx above 1 is faster,
p99 ×nginx below 1 is better. With several rounds, the round with the median req/s is shown.
"""

import csv
import json
import sys
from pathlib import Path

SIZE_LABEL = {"small": "100 B", "16k": "16 KiB", "1m": "1 MiB"}
TARGET_ORDER = ["nginx", "haproxy", "kcdproxy", "direct"]
IDLE_GOAL_KIB = 16


def fmt(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    return None if a is None or not b else a / b


def scenario_name(run):
    return f"{run['mode']} {SIZE_LABEL.get(run['size'], run['size'])} ×{run['conns']}"


def median_round(runs):
    """The run whose req/s is the median of the rounds (lower middle for an even count)."""
    ok = [r for r in runs if r.get("result")]
    if not ok:
        return runs[0]
    ok.sort(key=lambda r: r["result"]["rps"])
    return ok[(len(ok) - 1) // 2]


def noise_pct(run):
    """Share of the proxy CPU busy with anything but the target during the run (other processes,
    and interrupt/softirq time, part of which is the target's own loopback traffic). Not shown
    for the direct row, whose server runs on the other CPU."""
    total = run.get("proxy_cpu_total_ticks")
    if not total or run["target"] == "direct":
        return None
    other = run["proxy_cpu_busy_ticks"] - run["target_ticks_outer"]
    return min(100.0, max(0.0, 100.0 * other / total))


def main():
    raw = Path(sys.argv[1])
    lines = [json.loads(l) for l in raw.read_text().splitlines() if l.strip()]
    env = next((l for l in lines if l["kind"] == "env"), {})
    end = next((l for l in lines if l["kind"] == "end"), {})
    loads = [l for l in lines if l["kind"] == "load"]
    idles = [l for l in lines if l["kind"] == "idle"]

    out = []
    p = out.append
    p(f"## kcdproxy perf run {env.get('stamp', '?')}")
    p("")
    p(
        f"- {env.get('date', '?')}, {env.get('host_cpus', '?')} CPUs ({env.get('cpu_model', '?')}), "
        f"kernel {env.get('kernel', '?')}; load average {env.get('loadavg_start', '?')} at start, "
        f"{end.get('loadavg_end', '?')} at end"
    )
    p(
        f"- proxies pinned to CPU {env.get('proxy_cpu')}, origin + kcdload to CPU {env.get('load_cpu')}; "
        f"{env.get('warmup_s')} s warm-up + {env.get('duration_s')} s measured per run, "
        f"{env.get('rounds')} round(s){' (quick smoke mode)' if env.get('quick') else ''}"
    )
    p(
        f"- nginx {env.get('nginx', '?')}, haproxy {env.get('haproxy', '?')}, "
        f"kcdproxy {env.get('kcdproxy_rev', '?')}; states: "
        + ", ".join(f"{k} {v}" for k, v in env.get("states", {}).items())
    )
    p("")
    p(
        "| scenario | target | req/s | req/s ×nginx | p50 µs | p99 µs | p99 ×nginx "
        "| CPU µs/req | CPU % | errors | noise % |"
    )
    p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")

    # Group rounds by scenario, keeping the run order of scenarios.
    scenarios = {}
    for r in loads:
        key = (r["mode"], r["size"], r["conns"])
        scenarios.setdefault(key, {}).setdefault(r["target"], []).append(r)

    goal = {"met": 0, "of": 0}
    for key, by_target in scenarios.items():
        shown = {t: median_round(runs) for t, runs in by_target.items()}
        base = (shown.get("nginx") or {}).get("result") or {}
        for t in sorted(shown, key=lambda t: TARGET_ORDER.index(t) if t in TARGET_ORDER else 99):
            run = shown[t]
            name = scenario_name(run)
            label = "direct (origin)" if t == "direct" else t
            res = run.get("result")
            if not res:
                why = run.get("state") if run.get("state") != "ok" else "kcdload failed"
                p(f"| {name} | {label} | {why} | — | — | — | — | — | — | — | — |")
                continue
            rps_x = ratio(res["rps"], base.get("rps"))
            p99_x = ratio(res["p99_us"], base.get("p99_us"))
            if t == "kcdproxy" and rps_x is not None and p99_x is not None:
                goal["of"] += 1
                goal["met"] += rps_x >= 1.0 and p99_x <= 1.0
            # No request completed in the window (e.g. 256 TLS handshakes on a starved core in
            # a --quick window): say so rather than print a bare zero.
            rps = fmt(res["rps"]) if res["requests"] else "0 (none completed)"
            p(
                f"| {name} | {label} | {rps} | {fmt(rps_x, 2)} | {fmt(res['p50_us'], 1)} "
                f"| {fmt(res['p99_us'], 1)} | {fmt(p99_x, 2)} | {fmt(res.get('target_cpu_us_per_req'), 1)} "
                f"| {fmt(res.get('target_cpu_pct'))} | {res['errors']} | {fmt(noise_pct(run))} |"
            )
    p("")
    if goal["of"]:
        p(
            f"kcdproxy ≥ nginx in req/s with p99 ≤ nginx's: {goal['met']} of {goal['of']} scenarios."
        )
    else:
        p("kcdproxy figures pending: it did not run in this run (see its state above).")

    if idles:
        p("")
        p(f"### Idle plain keep-alive connections (goal ≤ {IDLE_GOAL_KIB} KiB each)")
        p("")
        p(
            "| proxy | idle conns | Pss before MiB | Pss with all idle MiB "
            "| KiB / conn, 2nd batch (Pss) | KiB / conn, all (Pss) | KiB / conn, 2nd batch (RSS) | goal |"
        )
        p("|---|--:|--:|--:|--:|--:|--:|---|")
        for r in idles:
            batches = r.get("batches") or []
            if r.get("state") != "ok" or not all(batches):
                p(f"| {r['target']} | {r.get('state', 'failed')} | — | — | — | — | — | — |")
                continue
            n1, n2 = (b["established"] for b in batches)
            asked = sum(b["requested"] for b in batches)
            pss, rss = r["pss_kb"], r["rss_kb"]
            second = (pss[2] - pss[1]) / n2 if n2 else None
            overall = (pss[2] - pss[0]) / (n1 + n2) if n1 + n2 else None
            second_rss = (rss[2] - rss[1]) / n2 if n2 else None
            verdict = "—" if second is None else ("met" if second <= IDLE_GOAL_KIB else "NOT met")
            p(
                f"| {r['target']} | {n1 + n2:,} of {asked:,} | {fmt(pss[0] / 1024, 1)} "
                f"| {fmt(pss[2] / 1024, 1)} | {fmt(second, 2)} | {fmt(overall, 2)} "
                f"| {fmt(second_rss, 2)} | {verdict} |"
            )
    print("\n".join(out))

    fields = [
        "mode", "size", "conns", "target", "round", "state", "rps", "p50_us", "p90_us", "p99_us",
        "p999_us", "max_us", "mean_us", "requests", "errors", "bytes_per_s", "connects",
        "target_cpu_us_per_req", "target_cpu_pct", "loadgen_cpu_pct", "noise_pct", "tls",
        "first_error",
    ]
    with open(raw.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in loads:
            row = {**r, **(r.get("result") or {}), "noise_pct": noise_pct(r)}
            w.writerow(row)


if __name__ == "__main__":
    main()
