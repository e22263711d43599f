#!/usr/bin/env python3
"""How many machines each tier needs for a peak, from the per-core figures the benchmarks measured.

    scripts/capacity.py                                   # 1 M taps/s in, 50 M viewers out
    scripts/capacity.py --taps-per-s 2e6 --viewers 1e8 --machine-cores 32 --machine-gib 128

Inputs are the `key=value` files the benchmarks write into .run/bench/ (ingest.txt from
scripts/bench_ingest.sh, dataflow.txt from scripts/bench_dataflow.sh, fanout.txt from
scripts/bench_fanout.sh). A missing file is taken from docs/capacity-inputs/, the figures measured
on the 2-core development machine and committed with docs/capacity.md; the output says which
file each figure came from. docs/capacity.md explains the model and its assumptions.
"""

import argparse
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FRESH = ROOT / ".run" / "bench"
COMMITTED = ROOT / "docs" / "capacity-inputs"
SOURCES = []


def read_inputs(name, fresh_dir):
    """The key=value figures of one benchmark, fresh if present, else the committed ones."""
    for folder in (fresh_dir, COMMITTED):
        path = folder / f"{name}.txt"
        if path.exists():
            figures = {}
            header = ""
            for line in path.read_text().splitlines():
                if line.startswith("#"):
                    header = header or line.lstrip("# ")
                elif "=" in line:
                    key, value = line.split("=", 1)
                    figures[key.strip()] = value.strip()
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            SOURCES.append(f"{shown}: {header}")
            return figures, str(shown)
    sys.exit(f"no {name}.txt in {fresh_dir} or {COMMITTED}: run the benchmark first")


def number(figures, key, source):
    try:
        return float(figures[key])
    except (KeyError, ValueError):
        sys.exit(f"{source}: no numeric {key}")


def machines(cores_needed, machine_cores, spare):
    """Whole machines for `cores_needed` busy cores, plus `spare` to lose one and keep the peak."""
    return math.ceil(cores_needed / machine_cores) + spare


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--taps-per-s", type=float, default=1e6, help="peak taps per second in (default 1e6)")
    ap.add_argument("--taps-per-request", type=float, default=1,
                    help="taps a client sends per HTTP request at the peak (default 1: every tap its own request)")
    ap.add_argument("--viewers", type=float, default=50e6, help="peak concurrent viewers (default 50e6)")
    ap.add_argument("--machine-cores", type=int, default=16, help="cores per machine (default 16)")
    ap.add_argument("--machine-gib", type=float, default=64, help="memory per machine, GiB (default 64)")
    ap.add_argument("--utilization", type=float, default=0.6,
                    help="share of a core planned busy at the peak, the rest is headroom (default 0.6)")
    ap.add_argument("--memory-share", type=float, default=0.75,
                    help="share of a subscriber machine's memory planned for viewers (default 0.75)")
    ap.add_argument("--viewer-bytes-per-epoch", type=float, default=1500,
                    help="bytes a viewer receives per epoch: its stream's epoch frame and the trend "
                         "frames, with WebSocket headers (default 1500)")
    ap.add_argument("--window-s", type=float, default=2, help="epoch length, seconds (default 2)")
    ap.add_argument("--tap-bytes", type=float, default=110,
                    help="bytes of one tap's NDJSON line in emoji-events before compression (default 110)")
    ap.add_argument("--subscribers-per-cluster", type=int, default=100,
                    help="subscriber links one cluster publisher serves (default 100)")
    ap.add_argument("--spare", type=int, default=1, help="spare machines per tier (default 1: N+1)")
    ap.add_argument("--results", type=pathlib.Path, default=FRESH,
                    help="folder of the benchmarks' result files (default .run/bench)")
    a = ap.parse_args()

    ingest, ingest_src = read_inputs("ingest", a.results)
    dataflow, dataflow_src = read_inputs("dataflow", a.results)
    fanout, fanout_src = read_inputs("fanout", a.results)

    # Per-core rates: work done per CPU-second of the tier's own processes, so whatever else
    # shared the benchmark machine (load generator, broker, swarm) does not count against it.
    requests_per_core = number(ingest, "single_requests_ok", ingest_src) / number(ingest, "single_gateway_cpu_s", ingest_src)
    batch_taps_per_core = number(ingest, "batch_emojis_landed", ingest_src) / number(ingest, "batch_gateway_cpu_s", ingest_src)
    cases = sorted(int(k.split("_")[2]) for k in dataflow if k.startswith("catch_up_") and k.endswith("_cpu_s"))
    if not cases:
        sys.exit(f"{dataflow_src}: no catch_up_<n>_processes_cpu_s")
    n = cases[-1]
    taps_per_dataflow_core = number(dataflow, f"catch_up_{n}_processes_taps", dataflow_src) / number(
        dataflow, f"catch_up_{n}_processes_cpu_s", dataflow_src)
    # The fan-out benchmark is bound by latency, not CPU: its viewers held within the p99 limit,
    # over every core of its machine (which the swarm and the publishers shared), per core.
    held = number(fanout, "held_viewers", fanout_src)
    if held == 0:
        sys.exit(f"{fanout_src}: no level held within the p99 limit (last level: "
                 f"{fanout.get('last_level_viewers')} viewers, p99 {fanout.get('last_level_p99_ms')} ms, "
                 f"floor {fanout.get('last_level_floor_p99_ms')} ms); run scripts/bench_fanout.sh on a quiet machine")
    viewers_per_core = held / number(fanout, "machine_cores", fanout_src)
    kib_per_viewer = number(fanout, "subscriber_rss_per_viewer_kib", fanout_src) + number(
        fanout, "kernel_per_viewer_kib", fanout_src)

    u, cores = a.utilization, a.machine_cores
    requests_per_s = a.taps_per_s / a.taps_per_request
    per_tap_request_cores = requests_per_s / (requests_per_core * u)
    gateway_cores = per_tap_request_cores if a.taps_per_request == 1 else (
        requests_per_s / (requests_per_core * u) + a.taps_per_s / (batch_taps_per_core * u))
    dataflow_cores = a.taps_per_s / (taps_per_dataflow_core * u)
    subscriber_cores = a.viewers / (viewers_per_core * u)
    subscriber_by_memory = a.viewers * kib_per_viewer / (a.machine_gib * 2**20 * a.memory_share)
    subscriber_machines = max(math.ceil(subscriber_cores / cores), math.ceil(subscriber_by_memory)) + a.spare
    subscribers_per_machine = 1  # one subscriber process per machine, one fan-out lane per core
    clusters = math.ceil(subscriber_machines * subscribers_per_machine / a.subscribers_per_cluster)
    egress_gbit = a.viewers * a.viewer_bytes_per_epoch * 8 / a.window_s / 1e9
    ingress_mb = a.taps_per_s * a.tap_bytes / 1e6

    print(f"Capacity for {a.taps_per_s:,.0f} taps/s in ({a.taps_per_request:g} per request) and "
          f"{a.viewers:,.0f} concurrent viewers; machines of {cores} cores and {a.machine_gib:g} GiB, "
          f"cores planned {u:.0%} busy, {a.spare} spare per tier.\n")
    print("Measured per core (the tier's own CPU time):")
    print(f"  gateway          {requests_per_core:>12,.0f} single-tap requests/s")
    print(f"  gateway, batches {batch_taps_per_core:>12,.0f} taps/s landed")
    print(f"  dataflow         {taps_per_dataflow_core:>12,.0f} taps/s ({n} processes)")
    print(f"  subscriber       {viewers_per_core:>12,.0f} viewers within the p99 limit, {kib_per_viewer:.1f} KiB each")
    print("from:")
    for source in SOURCES:
        print(f"  {source}")
    print()
    print(f"| tier | load at the peak | cores at {u:.0%} busy | machines |")
    print("|---|---|---|---|")
    print(f"| gateway | {requests_per_s:,.0f} requests/s | {gateway_cores:,.0f} | "
          f"{machines(gateway_cores, cores, a.spare)} |")
    print(f"| Kafka (emoji-events) | {ingress_mb:,.0f} MB/s of NDJSON before lz4, written once, read once | "
          f"broker's own sizing | - |")
    print(f"| dataflow | {a.taps_per_s:,.0f} taps/s | {dataflow_cores:,.0f} | "
          f"{machines(dataflow_cores, cores, a.spare)} |")
    print("| main publisher | one frame per stream per epoch, to every cluster | < 1 | 1 + 1 standby |")
    print(f"| cluster publishers | {a.subscribers_per_cluster} subscriber links each | < 1 each | {clusters} + {a.spare} |")
    print(f"| subscribers | {a.viewers:,.0f} viewers, {egress_gbit:,.1f} Gbit/s out | {subscriber_cores:,.0f} "
          f"(memory: {a.viewers * kib_per_viewer / 2**20:,.0f} GiB) | {subscriber_machines} |")
    bound = "cores" if math.ceil(subscriber_cores / cores) >= math.ceil(subscriber_by_memory) else "memory"
    print(f"\nSubscribers are bound by {bound}; each machine sends "
          f"{egress_gbit / max(subscriber_machines - a.spare, 1):.2f} Gbit/s at the peak.")


if __name__ == "__main__":
    main()
