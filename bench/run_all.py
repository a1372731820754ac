"""`make bench`: run every benchmark and write bench/RESULTS.md."""

from __future__ import annotations

import datetime
from pathlib import Path

from bench import b1_engine_overhead, b2_teacher_cache, b3_data_path
from bench.timing import machine

OUT = Path(__file__).resolve().parent / "RESULTS.md"


def main() -> None:
    b1, b2, b3 = b1_engine_overhead.run(), b2_teacher_cache.run(), b3_data_path.run()
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
        "Not yet measured: B4 (API under load), B5 (queue latency), B6 (scale-out), B7 (GPU; this session had no "
        "accelerator).", ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
