"""`make bench`: run every benchmark and write bench/RESULTS.md."""

from __future__ import annotations

import datetime
from pathlib import Path

import shutil

from bench import (b1_engine_overhead, b2_teacher_cache, b3_data_path, b4_api_load, b5_queue_latency,
                   b6_scale, b7_gpu, b8_sse_load)
from bench.timing import machine

OUT = Path(__file__).resolve().parent / "RESULTS.md"


def main() -> None:
    b1, b2, b3 = b1_engine_overhead.run(), b2_teacher_cache.run(), b3_data_path.run()
    b4 = b4_api_load.run() if shutil.which("wrk") else None
    b5 = b5_queue_latency.run()
    b6 = b6_scale.run()
    b7 = b7_gpu.run()
    b8 = b8_sse_load.run() if shutil.which("wrk") else None
    m = machine()
    lines = [
        "# Benchmark results", "",
        f"Measured {datetime.date.today().isoformat()} with `make bench` (each also runs alone: "
        "`python -m bench.NAME`). Medians of repeats; every ratio compares two things measured in the same run.", "",
        "| machine | " + " | ".join(m) + " |", "|---" * (len(m) + 1) + "|", "| | " + " | ".join(m.values()) + " |", "",
        "| benchmark | figure | target | command |", "|---|---|---|---|",
        f"| B1 engine overhead | kdcore {b1['kdcore_s_per_epoch']:.3f} s/epoch vs plain loop "
        f"{b1['plain_s_per_epoch']:.3f} s/epoch: **{b1['ratio']:.2f}×** | ≤ 1.05× | `python -m bench.b1_engine_overhead` |",
        f"| B2 teacher-logit cache | cached {b2['cached_s_per_epoch']:.3f} s/epoch vs live {b2['live_s_per_epoch']:.3f}: "
        f"**{b2['ratio']:.2f}×**; cache built once in {b2['cache_build_s']:.3f} s; accuracy cached "
        f"{100 * b2['cached_accuracy']:.1f} % vs live {100 * b2['live_accuracy']:.1f} % (teacher/student MACs "
        f"{b2['teacher_to_student_macs']:.0f}×) | ≤ 0.5×, accuracy within 0.5 pt | `python -m bench.b2_teacher_cache` |",
        f"| B3 data path | index batches {b3['index_steps_per_s']:.0f} steps/s vs DataLoader "
        f"{b3['dataloader_steps_per_s']:.0f} steps/s: **{b3['speedup']:.1f}×** | — | `python -m bench.b3_data_path` |",
        "", "Setups:", "",
        f"- B1: {b1['setup']}.", f"- B2: {b2['setup']}.", f"- B3: {b3['setup']}.", "",
        *_b4_lines(b4), *_b5_lines(b5), *_b6_lines(b6), *_b7_lines(b7), *_b8_lines(b8)]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


def _b4_lines(b4) -> list[str]:
    if b4 is None:
        return ["B4 skipped: wrk is not installed (`apt-get install wrk`).", ""]
    lines = [f"B4 API under load (`python -m bench.b4_api_load`): uvicorn with {b4['api_processes']} processes, "
             f"PostgreSQL, Redis, wrk (1 thread, 10 s timeout) for {b4['duration_s']} s per cell; medians of "
             f"{b4.get('rounds', 1)} rounds, the reads interleaved with /healthz.", "",
             "| route | connections | requests/s | p50 ms | p99 ms | API CPU ms/request | non-2xx | socket errors |",
             "|---|---|---|---|---|---|---|---|"]
    for route, cells in b4["results"].items():
        for n, r in cells.items():
            cpu = f"{r['api_cpu_ms']:.2f}" if "api_cpu_ms" in r else "—"
            lines.append(f"| {route} | {n} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {cpu} | "
                         f"{r['non_2xx']} | {r['socket_errors'] or 'none'} |")
    shares = ", ".join(f"{100 * v:.0f} % at {n}" for n, v in b4["get_job_share_of_healthz"].items())
    lines += ["", f"GET job throughput as a share of /healthz: {shares} (target ≥ 50 %; p99 target < 50 ms at 64)."]
    if "list_share_of_healthz" in b4:
        shares = ", ".join(f"{100 * v:.0f} % at {n}" for n, v in b4["list_share_of_healthz"].items())
        lines += [f"GET /v1/jobs?limit=20 as a share of /healthz: {shares} (target ≥ 30 %); POST /v1/jobs target "
                  "≥ 100/s."]
    lines += [""]
    return lines


def _b5_lines(b5) -> list[str]:
    lines = [f"B5 queue latency (`python -m bench.b5_queue_latency`), {b5['jobs']} jobs one at a time, idle worker; "
             f"{b5['note']}.", "", "| broker | submit → running median / p95 s | running → first metric median / p95 s |",
             "|---|---|---|"]
    for name in ("redis", "embedded"):
        r = b5[name]
        lines.append(f"| {name} | {r['submit_to_running']['median_s']:.3f} / {r['submit_to_running']['p95_s']:.3f} | "
                     f"{r['running_to_first_metric']['median_s']:.3f} / {r['running_to_first_metric']['p95_s']:.3f} |")
    return lines + ["", "Target: median submit → running < 0.5 s on Redis.", ""]


def _b6_lines(b6) -> list[str]:
    lines = [f"B6 scale (`python -m bench.b6_scale`): {b6['jobs']} tiny jobs (digits, 1 epoch, no baseline) submitted "
             "at once; worker processes with one torch thread each, PostgreSQL, Redis.", "",
             "| workers | jobs/min | × vs 1 worker | all succeeded | none ran twice | jobs per worker |",
             "|---|---|---|---|---|---|"]
    for r in b6["results"]:
        lines.append(f"| {r['workers']} | {r['jobs_per_min']:.0f} | {r['speedup_vs_1']:.2f}× | "
                     f"{'yes' if r['all_succeeded'] else 'NO: ' + str(r['statuses'])} | "
                     f"{'yes' if r['none_ran_twice'] else 'NO'} | {', '.join(map(str, r['jobs_per_worker']))} |")
    return lines + ["", "None ran twice: every job's attempt is 1, its events were all written under one attempt, "
                        "and it has exactly one metric row.", ""]


def _b7_lines(b7) -> list[str]:
    if b7 is None:
        return ["B7 GPU (`python -m bench.b7_gpu`): not measured: no CUDA device on this machine, and no accelerator "
                "was lent to the session that ran this. The script is ready to run as one short job on a GPU.", ""]
    keys = [k for k in b7 if k.endswith("samples_per_s")]
    lines = [f"B7 GPU (`python -m bench.b7_gpu`) on {b7['gpu']} (torch {b7['torch']}, CUDA {b7['cuda']}): "
             f"{b7['setup']}; cache built once in {b7['cache_build_s']:.2f} s.", "",
             "| run | samples/s |", "|---|---|"]
    lines += [f"| {k.removesuffix('_samples_per_s')} | {b7[k]:.0f} |" for k in keys]
    lines += ["", f"bf16/fp32 (plain, live) {b7['bf16_over_fp32_plain_live']:.2f}×; cached/live (plain, bf16) "
                  f"{b7['cached_over_live_plain_bf16']:.2f}×; kdcore/plain (bf16) live {b7['kdcore_over_plain_bf16_live']:.2f}×, "
                  f"cached {b7['kdcore_over_plain_bf16_cached']:.2f}×.", ""]
    return lines


def _b8_lines(b8) -> list[str]:
    if b8 is None:
        return ["B8 skipped: wrk is not installed (`apt-get install wrk`).", ""]
    lines = [f"B8 reads under live streams (`python -m bench.b8_sse_load`): GET /v1/jobs/{{id}} with wrk (1 thread, "
             f"8 s per cell), uvicorn with {b8['api_processes']} processes, PostgreSQL, Redis; without streams, with "
             f"{b8['streams']} open SSE streams on /v1/jobs/{{id}}/events (one per queued job), and without again.", "",
             "| connections | without: requests/s | with streams: requests/s | without again: requests/s | "
             "with / without | p99 ms with streams |", "|---|---|---|---|---|---|"]
    for n in b8["without"]:
        lines.append(f"| {n} | {b8['without'][n]['rps']:.0f} | {b8['with_streams'][n]['rps']:.0f} | "
                     f"{b8['without_again'][n]['rps']:.0f} | {100 * b8['share_with_streams'][n]:.0f} % | "
                     f"{b8['with_streams'][n]['p99_ms']:.1f} |")
    return lines + ["", f"The open streams alone (no other request) took {b8['api_cpu_cores_for_idle_streams']:.2f} "
                        f"of a core of API CPU; {b8['streams_open_at_end']} were still open at the end. Target: with "
                        "≥ 50 % of without (the mean of the runs before and after).", ""]


if __name__ == "__main__":
    main()
