"""mpi_model.py - the tables and the scaling model of bench/mpi.sh (BENCHMARKS.md, "Issue 12:
ring attention over MPI"), from the JSON lines it collected (`mha bench --core --json` under
mpirun, each with its per-rank "mpi" record, and bench/mpi_pingpong.c's lines).

    python bench/mpi_model.py RESULTS.jsonl CORES

The model of one ring call on P ranks (each rank holds N/P tokens; Liu et al.'s ring):
  - P steps; at each the rank computes its queries against one key/value block while the next
    block travels (mha_mpi_* post the exchange, compute, then wait);
  - bytes per step: the K and V blocks, kv = B*Hkv*(N/P)*(D+Dv)*4; the backward also sends the
    blocks' dK/dV accumulators (as many bytes again), which make one more hop home at the end:
    a rank sends (P-1)*kv in the forward, (2P-1)*kv in the backward (checked below against
    mha_mpi_stats.bytes_sent);
  - compute per step: the rank's multiply-adds (mha_mpi_stats.work) / P / the rank's rate;
  - communication per step: latency + bytes / bandwidth;
  - time = P * compute + (P - 1) * max(0, communication - compute), plus the backward's last
    dK/dV hop: what compute cannot hide is exposed (the first block is local).
"""
import json
import sys
from collections import defaultdict

B, H, HKV, D, DV = 1, 8, 8, 64, 64  # the shape bench/mpi.sh measures


def load(path):
    rows = defaultdict(list)
    for line in open(path):
        j = json.loads(line)
        rows[j["label"]].append(j)
    return rows


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def transport(rows):
    """(latency s, bandwidth B/s) from the ping-pong: the smallest message's one-way time and
    the best rate of the large ones."""
    pp = rows["pingpong"]
    lat = min(pp, key=lambda j: j["bytes"])["one_way_us"] * 1e-6
    bw = max(j["gbps"] for j in pp if j["bytes"] >= 1 << 18) * 1e9
    return lat, bw


def per_rank(j, d, field):
    return [r[f"{d}_{field}"] for r in j["mpi"]["per_rank"]]


def kv_bytes(n, P):
    return B * HKV * (n / P) * (D + DV) * 4


def sent_bytes(d, n, P):
    """Bytes a rank sends in one call (see the top)."""
    if P == 1:
        return 0.0
    return (P - 1 if d == "fwd" else 2 * P - 1) * kv_bytes(n, P)


def model(d, work_rank, rate, n, P, lat, bw):
    """(compute per step, communication per step, time, exposed communication) in seconds of
    one call on a rank doing work_rank multiply-adds at rate."""
    c = work_rank / P / rate
    m = lat + (1 if d == "fwd" else 2) * kv_bytes(n, P) / bw
    tail = lat + kv_bytes(n, P) / bw if d == "bwd" and P > 1 else 0.0  # dK/dV's last hop
    exposed = (P - 1) * max(0.0, m - c) + tail
    return c, m, P * c + exposed, exposed


def main():
    rows = load(sys.argv[1])
    cores = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    lat, bw = transport(rows)
    print(f"transport between two ranks on this machine (Open MPI shared memory): latency "
          f"{lat * 1e6:.2f} us, bandwidth {bw * 1e-9:.2f} GB/s (ping-pong)\n")

    # --- the measured ring: time split, balance, bytes per step -------------------------------
    print("| P | mask | dir | wall ms (slowest rank) | compute ms | comm wait ms (mean / max) | "
          "rest ms | work balance max/mean | MiB sent per rank | (P-1) or (2P-1) x kv |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rates = {}
    for causal in (False, True):
        for P in (1, 2, 4):
            lab = f"ring_p{P}" + ("_causal" if causal else "")
            if lab not in rows:
                continue
            j = rows[lab][0]
            n = j["seq"]
            for d, wall in (("fwd", j["fwd_median_ms"]), ("bwd", j.get("bwd_median_ms"))):
                if wall is None:
                    continue
                comp = per_rank(j, d, "compute_ms")
                wait = per_rank(j, d, "comm_wait_ms")
                tot = per_rank(j, d, "total_ms")
                work = per_rank(j, d, "work")
                sent = per_rank(j, d, "bytes_sent")
                bal = j["mpi"][f"{d}_work_balance"]
                if P == 1:
                    rates[(causal, d)] = mean(work) / (mean(comp) * 1e-3)
                print(f"| {P} | {'causal' if causal else 'none'} | {d} | {wall:.1f} | "
                      f"{mean(comp):.1f} | {mean(wait):.2f} / {max(wait):.2f} | "
                      f"{mean(tot) - mean(comp) - mean(wait):.2f} | {bal:.4f} | "
                      f"{mean(sent) / 2**20:.3f} | {sent_bytes(d, n, P) / 2**20:.3f} |")
    print()
    for (causal, d), r in sorted(rates.items()):
        print(f"rate at P = 1 ({'causal' if causal else 'no mask'}, {d}): "
              f"{r * 1e-9:.2f} G multiply-adds/s per thread ({2 * r * 1e-9:.1f} GFLOP/s)")
    print()

    # --- the model against the measured P = 2 and 4 --------------------------------------------
    print("The model against the measured points (per call, mean over the ranks; P > cores: "
          f"the {cores} cores shared, each rank's rate scaled by cores / P):\n")
    print("| P | mask | dir | compute per step ms | compute predicted / measured ms | "
          "comm per step ms | exposed comm predicted / measured wait ms | "
          "total predicted / measured ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for causal in (False, True):
        for P in (2, 4):
            lab = f"ring_p{P}" + ("_causal" if causal else "")
            if lab not in rows:
                continue
            j = rows[lab][0]
            n = j["seq"]
            for d in ("fwd", "bwd"):
                if (causal, d) not in rates or f"{d}_work" not in j["mpi"]["per_rank"][0]:
                    continue
                rate = rates[(causal, d)] * min(1.0, cores / P)
                work = mean(per_rank(j, d, "work"))
                c, m, pred, x = model(d, work, rate, n, P, lat, bw)
                comp = mean(per_rank(j, d, "compute_ms"))
                meas = mean(per_rank(j, d, "total_ms"))
                wait = mean(per_rank(j, d, "comm_wait_ms"))
                print(f"| {P} | {'causal' if causal else 'none'} | {d} | {c * 1e3:.1f} | "
                      f"{P * c * 1e3:.0f} / {comp:.0f} | {m * 1e3:.3f} | "
                      f"{x * 1e3:.2f} / {wait:.2f} | {pred * 1e3:.0f} / {meas:.0f} |")
    print()

    # --- memory: the largest causal forwards ----------------------------------------------------
    big = sorted((k for k in rows if k.startswith("big_")), key=lambda k: (int(k.split("_")[2]),
                                                                           k))
    if big:
        print("| ranks | N | wall s | peak memory per rank MiB (max) | q, k, v, out shards + "
              "2 ring blocks MiB |")
        print("|---|---:|---:|---:|---:|")
        for k in big:
            j = rows[k][0]
            P, n = j["mpi"]["ranks"], j["seq"]
            peak = max(r["peak_rss_mib"] for r in j["mpi"]["per_rank"])
            shards = (4 + 2 * 2) * B * H * (n / P) * D * 4 / 2**20
            print(f"| {P} | {n} | {j['median_ms'] * 1e-3:.1f} | {peak:.0f} | {shards:.0f} |")
        print()

    # --- predictions for 8-64 ranks -------------------------------------------------------------
    nets = [("InfiniBand 100 Gb/s", 2e-6, 12.5e9), ("Ethernet 25 Gb/s", 25e-6, 3.125e9)]
    threads = 32
    if (True, "fwd") not in rates:
        return
    rate = {d: rates.get((True, d), rates[(True, "fwd")]) * threads for d in ("fwd", "bwd")}
    print(f"Predictions, causal, B={B} H={H} Hkv={HKV} D={D}: one rank = one node of {threads} "
          f"threads at the per-thread rates measured here ({rate['fwd'] * 1e-9:.0f} and "
          f"{rate['bwd'] * 1e-9:.0f} G multiply-adds/s per node, forward and backward); "
          "efficiency = compute / predicted time:\n")
    print("| N | P | network | fwd compute per step ms | fwd comm per step ms | fwd efficiency | "
          "bwd compute per step ms | bwd comm per step ms | bwd efficiency |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in (131072, 1048576):
        fwd_work = B * H * n * n / 2 * (D + DV)  # the causal forward's multiply-adds
        for P in (8, 16, 32, 64):
            for name, l, b in nets:
                out = []
                for d, work in (("fwd", fwd_work), ("bwd", 2 * fwd_work)):
                    c, m, t, _ = model(d, work / P, rate[d], n, P, l, b)
                    out.append(f"{c * 1e3:.1f} | {m * 1e3:.2f} | {P * c / t:.2f}")
                print(f"| {n} | {P} | {name} | {' | '.join(out)} |")
    print()
    # the smallest shard whose compute hides a step's transfer: B H n^2 (D+Dv)/2 / R >=
    # lat + B Hkv n (D+Dv) 4 / bw
    for name, l, b in nets:
        a2 = B * H * (D + DV) / 2 / rate["fwd"]
        a1 = B * HKV * (D + DV) * 4 / b
        nmin = (a1 + (a1 * a1 + 4 * a2 * l) ** 0.5) / (2 * a2)
        print(f"{name}: the forward hides the transfer once N/P >= {nmin:.0f} tokens per rank")


if __name__ == "__main__":
    main()
