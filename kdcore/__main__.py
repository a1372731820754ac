"""`python -m kdcore run SPEC.json --out DIR`: one distillation on this machine, no service."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kdcore.errors import KDError
from kdcore.spec import FIELD_HELP


def _fields_help() -> str:
    width = max(map(len, FIELD_HELP))
    lines = ["spec fields (JSON; the same as the service's job spec, with paths instead of file ids):"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in FIELD_HELP.items()]
    return "\n".join(lines)


class ProgressPrinter:
    """A one-line progress display on stderr, only when it is a terminal."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.phase = ""

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def done(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()


def _make_callbacks(printer: ProgressPrinter):
    from kdcore.pipeline import PipelineCallbacks

    class CliCallbacks(PipelineCallbacks):
        def on_phase(self, phase):
            printer.phase = phase
            printer.line(f"[{phase}]")

        def on_step(self, info):
            width = 30
            filled = int(width * info.step / max(info.steps, 1))
            printer.line(f"[{info.run}] |{'#' * filled}{'.' * (width - filled)}| epoch {info.epoch + 1} "
                         f"step {info.step}/{info.steps} loss {info.loss:.4f}")

        def on_epoch_end(self, m):
            agree = "" if m.val_agreement is None else f" agreement {m.val_agreement:.3f}"
            printer.done(f"[{m.run}] epoch {m.epoch}/{m.epochs} loss {m.train_loss:.4f} "
                         f"(hard {m.train_hard:.4f}, soft {m.train_soft:.4f}) val acc {_pct(m.val_accuracy)}{agree}")

        def on_event(self, type, message, data=None):
            printer.done(f"[{type}] {message}")

        def on_resume(self, *, run, epoch, skipped):
            for path, reason in skipped:
                printer.done(f"[{run}] skipped damaged checkpoint {path}: {reason}")
            printer.done(f"[{run}] resumed after epoch {epoch}")

    return CliCallbacks()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one distillation locally",
                         description="Run one distillation locally and write student.safetensors, "
                                     "student.onnx, metrics.jsonl and summary.json to --out.",
                         epilog=_fields_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("spec", type=Path, help="the job spec as a JSON file")
    run.add_argument("--out", type=Path, required=True, help="output directory (created)")
    run.add_argument("--checkpoint-dir", type=Path, default=None,
                     help="keep per-epoch checkpoints here and resume from them (default: none)")
    run.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    args = parser.parse_args(argv)

    from kdcore.pipeline import run_distillation
    from kdcore.spec import DistillSpec

    try:
        spec = DistillSpec.from_dict(json.loads(args.spec.read_text()))
        printer = ProgressPrinter()
        result = run_distillation(spec, out_dir=args.out, checkpoint_dir=args.checkpoint_dir,
                                  callbacks=_make_callbacks(printer), export_onnx_file=not args.no_onnx)
    except (KDError, OSError, json.JSONDecodeError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s, b, t = result.student, result.baseline, result.teacher
    print(f"teacher  accuracy {_pct(t.accuracy)}  params {t.parameters}")
    print(f"student  accuracy {_pct(s.accuracy)}  params {s.parameters}  agreement {_pct(s.agreement)}")
    if b is not None:
        gain = result.distillation_gain
        comparison = result.comparison  # McNemar's exact test on the rows only one gets right
        print(f"baseline accuracy {_pct(b.accuracy)}"
              + ("" if gain is None else f"  (student − baseline: {100 * gain:+.1f} points"
                 + ("" if comparison is None else f"; {comparison.verdict}, p = {comparison.p_value:.3g}")
                 + ")"))
    rep = result.repeats
    if rep is not None:  # mean ± sample std over the seeds; the lines above are the first seed's
        parts = [f"{name} {_spread(part, gain=name == 'gain')}" for name, part in (
            ("student", rep.student), ("baseline", rep.baseline), ("gain", rep.gain)) if part is not None]
        print(f"over seeds {', '.join(map(str, rep.seeds))} ({rep.metric}): " + ", ".join(parts))
    for warning in result.warnings:
        print(f"warning: {warning['message']}")
    print(f"wrote {args.out / 'student.safetensors'} and {args.out / 'summary.json'}")
    return 0


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _spread(part, *, gain: bool) -> str:
    if part.mean is None:
        return "n/a"
    return f"{100 * part.mean:+.1f} ± {100 * part.std:.1f} points" if gain else f"{100 * part.mean:.1f} ± {100 * part.std:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
