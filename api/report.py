"""A self-contained HTML report of a succeeded job (GET /v1/jobs/{id}/report).

`render_report(job, metrics)` is pure: plain dicts in (the job as JobOut JSON, the metric rows as
{"run", "epoch", "values"}), one HTML string out. No external assets: the plots are PNGs drawn with
matplotlib's Agg canvas (no pyplot, so it is safe in the API's worker threads) and embedded as
base64 data URIs, the CSS is inline. Every string that comes from the job (metadata, arch names,
ids) is HTML-escaped. It must not import torch, fastapi or celery.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:60rem;
color:#222;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem}
.sub{color:#666;margin-top:0}.verdict{font-size:1.1rem;padding:.8rem 1rem;background:#f3f6fa;
border-left:4px solid #3b6ea5}
table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#fafafa}
.plots img{max-width:100%;display:block;margin:1rem 0}pre{background:#f7f7f7;padding:.8rem;
overflow:auto;font-size:.85rem}.note{color:#666;font-size:.85rem}
.warnings{padding:.6rem 1rem;background:#fff8e1;border-left:4px solid #c77700;margin:1rem 0}
.warnings p{margin:.3rem 0}.scroll{overflow-x:auto;margin:.6rem 0}
"""
DASH = "\u2014"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _formatter(fmt: Callable[[float], str]) -> Callable[[Any], str]:
    """A cell formatter: `fmt` of the value when it is a finite number, else a dash."""
    def cell(value: Any) -> str:
        v = _num(value)
        return DASH if v is None else fmt(v)
    return cell


def _size(v: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if v < 1024:
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GiB"


_pct = _formatter(lambda v: f"{v * 100:.2f} %")
_int = _formatter(lambda v: f"{int(v):,}")
_bytes = _formatter(_size)
_ms = _formatter(lambda v: f"{v:.3f} ms")
_times = _formatter(lambda v: f"{v:.2f}\u00d7")
_plain = _formatter(lambda v: f"{v:g}")
_kl = _formatter(lambda v: f"{v:.4f} nats")
# A p-value with three significant digits: 0.0312, 0.41, 1, 2.3e-07.
p_value = _formatter(lambda v: f"{v:.3g}")


def _when(value: Any) -> str:
    """An ISO time as "2026-12-04 09:51 UTC" (minutes; the JSON keeps the microseconds)."""
    if not isinstance(value, str):
        return DASH
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _significance(comparison: dict[str, Any]) -> str:
    """What McNemar's exact test says about the rows where only one of the two models is right."""
    b, c = comparison.get("student_only_right"), comparison.get("baseline_only_right")
    rows = (b or 0) + (c or 0) if isinstance(b, int) and isinstance(c, int) else None
    alpha = _num(comparison.get("alpha")) or 0.05
    sign = "<" if comparison.get("verdict") != "not distinguishable" else "\u2265"
    return (f"McNemar's exact test on the {_int(rows)} rows where only one of them is right, {_int(b)} only the "
            f"student and {_int(c)} only the baseline: p = {p_value(comparison.get('p_value'))} {sign} "
            f"\u03b1 = {alpha:g}")


def verdict(result: dict[str, Any]) -> str:
    """One sentence (plain text, not escaped): did distillation beat the baseline, by how much, and
    whether the difference is more than chance (result.comparison, McNemar's exact test; a result
    stored before that existed gets the sentence without it)."""
    split = result.get("evaluated_on") or "evaluation"
    student = result.get("student") or {}
    baseline = result.get("baseline")
    gain = _num(result.get("distillation_gain"))
    if student.get("accuracy") is None and student.get("agreement") is not None:
        line = (f"No row of the {split} split is labelled, so no accuracy was scored: the student agrees with the "
                f"teacher on {_pct(student.get('agreement'))} of it")
        if baseline and baseline.get("agreement") is not None:
            line += f", the baseline (trained without the teacher) on {_pct(baseline.get('agreement'))}"
        return line + "."
    if not baseline or gain is None:
        return (f"No baseline was trained, so there is no measure of what distillation gained; the student "
                f"reached {_pct(student.get('accuracy'))} accuracy on the {split} split.")
    points = abs(gain) * 100
    both = f"(student {_pct(student.get('accuracy'))} vs baseline {_pct(baseline.get('accuracy'))}"
    rows, base_rows = student.get("train_rows"), baseline.get("train_rows")
    if rows and base_rows and rows.get("unlabeled"):
        both += (f"; the student learned from {rows['labeled']:,} labelled and {rows['unlabeled']:,} unlabelled "
                 f"rows, the baseline from the {base_rows['labeled']:,} labelled rows, "
                 f"{_int(baseline.get('steps'))} optimizer steps each")
    both += ")"
    comparison = result.get("comparison")
    if isinstance(comparison, dict) and comparison.get("verdict") in ("better", "worse", "not distinguishable"):
        test = _significance(comparison)
        if comparison["verdict"] == "not distinguishable":
            diff = (f"the student was {points:.2f} percentage points {'above' if gain > 0 else 'below'} the baseline "
                    f"{both}, a difference chance alone can explain" if gain else f"the student tied with the baseline {both}")
            return (f"Distillation and the baseline are not distinguishable (p = {p_value(comparison.get('p_value'))}) "
                    f"on the {split} split: {diff} ({test}).")
        if comparison["verdict"] == "better":
            return (f"Distillation beat the baseline by {points:.2f} percentage points on the {split} split {both}; "
                    f"the difference is significant ({test}).")
        return (f"Distillation did not beat the baseline: the student was {points:.2f} percentage points "
                f"below it on the {split} split {both}; the difference is significant ({test}).")
    if gain > 0:
        return f"Distillation beat the baseline by {points:.2f} percentage points on the {split} split {both}."
    if gain < 0:
        return (f"Distillation did not beat the baseline: the student was {points:.2f} percentage points "
                f"below it on the {split} split {both}.")
    return f"Distillation tied with the baseline (0.00 percentage points) on the {split} split {both}."


def _series(metrics: list[dict[str, Any]], run: str, key: str) -> tuple[list[int], list[float]]:
    rows = sorted((m for m in metrics if m.get("run") == run), key=lambda m: m.get("epoch", 0))
    points = [(int(m["epoch"]), _num((m.get("values") or {}).get(key))) for m in rows]
    points = [(e, v) for e, v in points if v is not None]
    return [e for e, _ in points], [v for _, v in points]


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(title: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _finish(fig: Figure, ax: Any, has_data: bool) -> str:
    if has_data:
        ax.legend(loc="best")
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
    return _png(fig)


LOG_SCALE_RATIO = 20  # the loss plot goes logarithmic when its largest value is this many times its smallest


def loss_scale(series: list[list[float]]) -> str:
    """"log" when one loss term would flatten another on a linear axis (largest / smallest above
    LOG_SCALE_RATIO, every value positive), else "linear"."""
    values = [v for ys in series for v in ys]
    if not values or min(values) <= 0:
        return "linear"
    return "log" if max(values) / min(values) > LOG_SCALE_RATIO else "linear"


def _loss_plot(metrics: list[dict[str, Any]]) -> str:
    lines = [(label, style, *_series(metrics, "student", key))
             for key, label, style in (("train_hard", "hard (labels)", "-o"), ("train_soft", "soft (teacher)", "-s"),
                                       ("train_loss", "total", "--"))]
    lines = [line for line in lines if line[2]]
    scale = loss_scale([ys for *_, ys in lines])
    fig, ax = _figure("Training loss of the student: hard and soft terms"
                      + (" (log scale)" if scale == "log" else ""), "loss")
    for label, style, x, y in lines:
        ax.plot(x, y, style, label=label, markersize=3)
    ax.set_yscale(scale)
    return _finish(fig, ax, bool(lines))


def teacher_reference(result: dict[str, Any]) -> float | None:
    """The teacher's accuracy on the split the training curves are on (validation), or None: a
    figure on another split (the test split) is never drawn against validation curves."""
    teacher = result.get("teacher") or {}
    if _num(teacher.get("val_accuracy")) is not None:
        return _num(teacher["val_accuracy"])
    if result.get("evaluated_on") == "validation":
        return _num(teacher.get("accuracy"))
    return None


def _percent_plot(metrics: list[dict[str, Any]], key: str, title: str, ylabel: str,
                  reference: tuple[float, str] | None = None) -> str:
    """Validation curves of the student and the baseline in %, with an optional horizontal reference
    line kept clear of the frame (the axis ends above the highest value drawn)."""
    fig, ax = _figure(title, ylabel)
    highest = []
    for run, style in (("student", "-o"), ("baseline", "-s")):
        x, y = _series(metrics, run, key)
        if x:
            ax.plot(x, [100 * v for v in y], style, label=run, markersize=3)
            highest.append(100 * max(y))
    if reference is not None:
        ax.axhline(100 * reference[0], color="#444", linestyle=":", label=reference[1])
        highest.append(100 * reference[0])
    if highest:
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(high, max(highest) + max(1.0, 0.06 * (max(highest) - low))))
    return _finish(fig, ax, bool(highest))


def _accuracy_plot(metrics: list[dict[str, Any]], result: dict[str, Any]) -> str:
    teacher = teacher_reference(result)
    return _percent_plot(metrics, "val_accuracy", "Validation accuracy", "accuracy (%)",
                         None if teacher is None else (teacher, "teacher (validation split)"))


def _agreement_plot(metrics: list[dict[str, Any]]) -> str:
    return _percent_plot(metrics, "val_agreement", "Top-1 agreement with the teacher (validation)", "agreement (%)")


def _html_table(table_id: str, head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    out = [f'<div class="scroll"><table id="{table_id}"><thead><tr>', *(f"<th>{_e(h)}</th>" for h in head),
           "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows]
    out.append("</tbody></table></div>")
    return "".join(out)


def _tables(job: dict[str, Any], result: dict[str, Any]) -> str:
    """Quality (accuracy, agreement, calibration, KL to the teacher, what each trained on), then size
    and speed; the baseline has the student's architecture, so its size and speed are the student's."""
    teacher = result.get("teacher") or {}
    student = result.get("student") or {}
    baseline = result.get("baseline")
    spec = job.get("spec") or {}
    t_arch = (spec.get("teacher") or {}).get("arch") or "teacher"
    s_arch = student.get("arch") or (spec.get("student") or {}).get("arch") or "student"
    quality = [("teacher", t_arch, _pct(teacher.get("accuracy")), DASH, _pct(teacher.get("ece")), DASH, DASH),
               ("student", s_arch, _pct(student.get("accuracy")), _pct(student.get("agreement")),
                _pct(student.get("ece")), _kl(student.get("mean_kl")), _trained_on(student.get("train_rows")))]
    size = [("teacher", _int(teacher.get("parameters")), _int(teacher.get("macs")),
             _bytes(teacher.get("size_bytes", job.get("teacher_file_bytes"))), _ms(teacher.get("latency_ms")),
             _times(1.0), _times(1.0), DASH, DASH),
            ("student", _int(student.get("parameters")), _int(student.get("macs")), _bytes(student.get("size_bytes")),
             _ms(student.get("latency_ms")), _times(result.get("compression")), _times(result.get("speedup")),
             _plain(result.get("temperature")), _plain(result.get("alpha")))]
    if baseline:
        quality.append(("baseline", s_arch, _pct(baseline.get("accuracy")), _pct(baseline.get("agreement")),
                        _pct(baseline.get("ece")), _kl(baseline.get("mean_kl")),
                        _trained_on(baseline.get("train_rows"))))
    return (_html_table("quality", ("model", "architecture", "accuracy", "agreement with the teacher",
                                    "calibration error (ECE)", "KL(teacher \u2016 model)", "trained on"), quality)
            + _html_table("size", ("model", "parameters", "MACs per sample", "size on disk", "CPU latency",
                                   "compression", "speed-up", "T", "\u03b1"), size))


def _trained_on(train_rows: Any) -> str:
    """A run's training rows (`train_rows` of the result): "500 labelled + 9,100 unlabelled"."""
    if not isinstance(train_rows, dict):
        return DASH
    return f"{_int(train_rows.get('labeled'))} labelled + {_int(train_rows.get('unlabeled'))} unlabelled"


def _sweep_heatmap(points: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """A T × α heat map of the sweep points' validation accuracy; the chosen point is outlined."""
    temps = sorted({float(p["temperature"]) for p in points})
    alphas = sorted({float(p["alpha"]) for p in points})
    grid = [[math.nan] * len(alphas) for _ in temps]
    for p in points:
        acc = _num(p.get("val_accuracy"))
        grid[temps.index(float(p["temperature"]))][alphas.index(float(p["alpha"]))] = math.nan if acc is None else acc
    fig = Figure(figsize=(1.6 + 1.1 * len(alphas), 1.2 + 0.6 * len(temps)))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="validation accuracy")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps])
    ax.set_xlabel("\u03b1 (weight of the hard labels)")
    ax.set_ylabel("temperature T")
    ax.set_title("Sweep: validation accuracy per (T, \u03b1)")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                light = image.norm(v) > 0.6  # viridis is light at the top: dark text there
                ax.text(j, i, f"{v * 100:.1f}", ha="center", va="center", color="black" if light else "white",
                        fontsize=8)
    if best is not None and _num(best.get("temperature")) is not None and _num(best.get("alpha")) is not None:
        i, j = temps.index(float(best["temperature"])), alphas.index(float(best["alpha"]))
        ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    return _png(fig)


def _sweep_section(result: dict[str, Any]) -> list[str]:
    """The sweep's heat map and its table of points (nothing when the job had no sweep)."""
    sweep = result.get("sweep")
    if not isinstance(sweep, dict) or not sweep.get("points"):
        return []
    points = [p for p in sweep["points"] if _num(p.get("temperature")) is not None and _num(p.get("alpha")) is not None]
    if not points:
        return []
    best = sweep.get("best") or {}
    head = ("T", "\u03b1", "val accuracy", "val agreement", "epochs run", "best epoch", "stopped early", "chosen")
    out = [f"<h2>Sweep ({len(points)} points)</h2>", '<div class="plots">',
           f'<img alt="Sweep heat map" src="data:image/png;base64,{_sweep_heatmap(points, best)}"></div>',
           "<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for p in points:
        chosen = (_num(p["temperature"]) == _num(best.get("temperature")) and _num(p["alpha"]) == _num(best.get("alpha")))
        cells = (_plain(p["temperature"]), _plain(p["alpha"]), _pct(p.get("val_accuracy")), _pct(p.get("val_agreement")),
                 _int(p.get("epochs_run")), _int(p.get("best_epoch")), "yes" if p.get("stopped_early") else "no",
                 "\u2713" if chosen else "")
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    out.append('<p class="note">The chosen point (outlined) has the best validation accuracy, then the best '
               "validation agreement with the teacher; the baseline was trained with its settings.</p>")
    return out


def seeds_line(result: dict[str, Any]) -> str | None:
    """result.repeats as one sentence (plain text, not escaped): mean ± sample standard deviation of
    the student, the baseline and the gain over the seeds (None for a one-seed job)."""
    rep = result.get("repeats")
    if not isinstance(rep, dict) or not isinstance(rep.get("seeds"), list) or len(rep["seeds"]) < 2:
        return None
    metric = "accuracy" if rep.get("metric") != "agreement" else "agreement with the teacher"

    def spread(part: Any, unit: str = " %", sign: str = "") -> str:
        mean, std = (_num((part or {}).get(k)) for k in ("mean", "std"))
        if mean is None or std is None:
            return DASH
        return f"{mean * 100:{sign}.2f} ± {std * 100:.2f}{unit}"

    seeds = rep["seeds"]
    parts = [f"student {spread(rep.get('student'))}"]
    if rep.get("baseline"):
        parts.append(f"baseline {spread(rep.get('baseline'))}")
    line = f"Over {len(seeds)} seeds ({', '.join(str(s) for s in seeds)}), {metric}: " + ", ".join(parts)
    gains = [_num(v) for v in (rep.get("gain") or {}).get("values") or []]
    if gains and all(g is not None for g in gains):
        line += (f"; gain {spread(rep.get('gain'), ' points', '+')}, positive for {sum(g > 0 for g in gains)} of "
                 f"{len(gains)} seeds")
    return line + (f" (mean ± sample standard deviation; the delivered student is seed {seeds[0]}'s, scored "
                   "above).")


def _seeds_section(result: dict[str, Any]) -> list[str]:
    """The repeats' sentence and one row per seed (nothing for a one-seed job)."""
    line = seeds_line(result)
    if line is None:
        return []
    rep = result["repeats"]
    columns = [("student", rep.get("student")), ("baseline", rep.get("baseline")), ("gain", rep.get("gain"))]
    columns = [(name, part) for name, part in columns if isinstance(part, dict)]
    out = [f'<p class="seeds" id="seeds">{_e(line)}</p>', "<table><thead><tr><th>seed</th>",
           *(f"<th>{_e(name)}</th>" for name, _ in columns), "</tr></thead><tbody>"]
    for i, seed in enumerate(rep["seeds"]):
        cells = [_int(seed)]
        for name, part in columns:
            values = part.get("values") or []
            value = _num(values[i]) if i < len(values) else None
            cells.append(DASH if value is None else f"{value * 100:+.2f} points" if name == "gain" else _pct(value))
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return out


def _warnings_section(result: dict[str, Any]) -> list[str]:
    """result.warnings (a run near chance, a loss that diverged) in a box under the verdict."""
    warnings = [w for w in result.get("warnings") or [] if isinstance(w, dict) and w.get("message")]
    if not warnings:
        return []
    return ['<div class="warnings" id="warnings">',
            *(f"<p><strong>Warning:</strong> {_e(w['message'])}.</p>" for w in warnings), "</div>"]


def render_report(job: dict[str, Any], metrics: list[dict[str, Any]]) -> str:
    """The report page of a job (as JobOut JSON) and its metric rows."""
    result = job.get("result") or {}
    spec = job.get("spec") or {}
    split = result.get("evaluated_on") or "evaluation"
    metadata = spec.get("metadata") or job.get("metadata") or {}
    plots = [("Loss", _loss_plot(metrics)), ("Accuracy", _accuracy_plot(metrics, result)),
             ("Agreement", _agreement_plot(metrics))]
    hp = spec.get("hyperparameters") or {}
    details = {k: hp.get(k) for k in ("loss", "epochs", "batch_size", "learning_rate", "optimizer", "seed",
                                      "repeats", "early_stopping_patience", "restore_best") if k in hp}
    for run in ("student", "baseline"):  # what early stopping and best-epoch selection did
        record = result.get(run) or {}
        ran = {k: record[k] for k in ("train_rows", "steps", "epochs_run", "best_epoch", "stopped_early",
                                      "restored_best") if k in record}
        if ran:
            details[f"{run} run"] = ran
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Distillation report {_e(job.get('id', ''))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Distillation report</h1><p class=\"sub\">job <code>{_e(job.get('id', ''))}</code> \u00b7 "
        f"{_e(job.get('status', ''))} \u00b7 finished {_e(_when(job.get('finished_at')))}</p>",
        f'<p class="verdict" id="verdict">{_e(verdict(result))}</p>',
        *_seeds_section(result),
        *_warnings_section(result),
        f"<h2>Models (accuracy on the {_e(split)} split, {_e(_int(result.get('num_eval_samples')))} samples)</h2>",
        _tables(job, result),
        '<p class="note">Agreement: the share of rows where the model\'s top class is the teacher\'s. ECE: '
        "expected calibration error (15 bins; 0 % is perfectly calibrated). KL: mean KL divergence from the "
        "teacher's predicted distribution to the model's at T = 1. MACs: multiply-accumulates of one forward pass "
        "of one sample. Compression and speed-up are relative to the teacher (parameters, CPU latency of one batch "
        "of 64). The baseline has the student's architecture and training budget, without the teacher.</p>",
        '<h2>Training</h2><div class="plots">',
        *(f'<img alt="{_e(name)}" src="data:image/png;base64,{data}">' for name, data in plots),
        "</div>",
        *_sweep_section(result),
        f"<h2>Settings</h2><pre>{_e(json.dumps(details, indent=2, ensure_ascii=False))}</pre>",
        f"<h2>Metadata</h2><pre>{_e(json.dumps(metadata, indent=2, ensure_ascii=False))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)
