// Inline SVG charts for the dashboard: no library, no CDN (the CSP allows this origin only). Every
// label is an SVG text node (textContent), never markup.
"use strict";
const SVG_NS = "http://www.w3.org/2000/svg";
// Drawn in CSS pixels at the SVG's own width (so text keeps its size on a phone); 560 before layout.
const CHART = {w: 560, h: 240, left: 52, right: 12, top: 28, bottom: 34};
function sizeTo(svg) {
  const width = Math.round(svg.getBoundingClientRect().width);
  CHART.w = width >= 240 ? width : 560;
  CHART.h = CHART.w < 480 ? 200 : 240;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${CHART.w} ${CHART.h}`);
}
function svgEl(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) e.setAttribute(k, v);
  if (text != null) e.textContent = String(text);
  return e;
}

// The legend, in rows above the plot ([{name, cls}]): placed before the frame (its rows set the top
// margin), drawn after the data.
function placeLegend(entries) {
  let x = CHART.left, row = 0;
  const placed = entries.map((e) => {
    const width = 7 * e.name.length + 16;
    if (x > CHART.left && x + width > CHART.w) { x = CHART.left; row++; }
    const at = {x, y: 14 + row * 16, ...e};
    x += width;
    return at;
  });
  CHART.top = 28 + row * 16;
  return placed;
}
function drawLegend(svg, placed) {
  for (const e of placed) svg.append(svgEl("text", {x: e.x, y: e.y, class: "legend " + e.cls}, e.name));
}

// Axis ticks: about n round values between lo and hi
function ticks(lo, hi, n = 4) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}
function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    const v = Math.pow(10, e);
    if (v >= lo / 1.0001 && v <= hi * 1.0001) out.push(v);
  }
  return out.length >= 2 ? out : [lo, hi];
}

// Frame, axes, ticks and labels; returns the scales {x(v), y(v)} in the viewBox's coordinates.
function frame(svg, {xLo, xHi, yLo, yHi, logX = false, xLabel, yLabel, xFormat = String, yFormat = String}) {
  const iw = CHART.w - CHART.left - CHART.right, ih = CHART.h - CHART.top - CHART.bottom;
  const lx = (v) => (logX ? Math.log10(v) : v);
  const x = (v) => CHART.left + (xHi === xLo ? iw / 2 : (lx(v) - lx(xLo)) / (lx(xHi) - lx(xLo)) * iw);
  const y = (v) => CHART.top + ih - (yHi === yLo ? ih / 2 : (v - yLo) / (yHi - yLo) * ih);
  const g = svgEl("g", {class: "axes"});
  for (const t of ticks(yLo, yHi, 5)) {
    g.append(svgEl("line", {x1: CHART.left, x2: CHART.w - CHART.right, y1: y(t), y2: y(t), class: "grid"}));
    g.append(svgEl("text", {x: CHART.left - 6, y: y(t) + 4, "text-anchor": "end"}, yFormat(t)));
  }
  for (const t of logX ? logTicks(xLo, xHi) : ticks(xLo, xHi, 5)) {
    g.append(svgEl("line", {x1: x(t), x2: x(t), y1: CHART.top + ih, y2: CHART.top + ih + 4, class: "tick"}));
    g.append(svgEl("text", {x: x(t), y: CHART.top + ih + 16, "text-anchor": "middle"}, xFormat(t)));
  }
  g.append(svgEl("line", {x1: CHART.left, x2: CHART.w - CHART.right, y1: CHART.top + ih, y2: CHART.top + ih, class: "axis"}));
  g.append(svgEl("line", {x1: CHART.left, x2: CHART.left, y1: CHART.top, y2: CHART.top + ih, class: "axis"}));
  if (xLabel) g.append(svgEl("text", {x: CHART.left + iw / 2, y: CHART.h - 2, "text-anchor": "middle", class: "label"}, xLabel));
  if (yLabel) g.append(svgEl("text", {x: 12, y: CHART.top + ih / 2, "text-anchor": "middle", class: "label",
    transform: `rotate(-90 12 ${CHART.top + ih / 2})`}, yLabel));
  svg.append(g);
  return {x, y};
}

function pad(lo, hi, frac = 0.05) {
  if (hi === lo) return [lo - Math.abs(lo || 1) * 0.1, hi + Math.abs(hi || 1) * 0.1];
  const d = (hi - lo) * frac;
  return [lo - d, hi + d];
}

// A line per series ({name, cls, points: [[x, y], ...]}), a dot per point (class "pt"), a legend.
// With no point yet it says so ("waiting for the first epoch").
function lineChart(svg, series, {xLabel = "epoch", yLabel = "", yFormat, empty = "no epochs yet"} = {}) {
  const all = series.flatMap((s) => s.points);
  sizeTo(svg);
  if (!all.length) {
    svg.append(svgEl("text", {x: CHART.w / 2, y: CHART.h / 2, "text-anchor": "middle", class: "empty"}, empty));
    return;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [yLo, yHi] = pad(Math.min(...ys), Math.max(...ys));
  const xHi = Math.max(...xs), xLo = Math.min(1, ...xs);
  const fmt = yFormat || ((v) => +v.toPrecision(3));
  const keys = placeLegend(series.map((s, i) => ({name: "— " + s.name, cls: "series-" + i})));
  const {x, y} = frame(svg, {xLo, xHi, yLo, yHi, xLabel, yLabel, yFormat: fmt,
    xFormat: (v) => (Number.isInteger(v) ? String(v) : "")});
  series.forEach((s, i) => {
    const pts = s.points.slice().sort((a, b) => a[0] - b[0]);
    const cls = "series series-" + i + " " + (s.cls || "");
    if (pts.length > 1) svg.append(svgEl("polyline", {class: cls, fill: "none", points: pts.map((p) => x(p[0]) + "," + y(p[1])).join(" ")}));
    for (const p of pts) {
      const dot = svgEl("circle", {class: "pt " + cls, cx: x(p[0]), cy: y(p[1]), r: 3, "data-run": s.name});
      dot.append(svgEl("title", {}, s.name + " epoch " + p[0] + ": " + fmt(p[1])));
      svg.append(dot);
    }
  });
  drawLegend(svg, keys);
}

// Points in groups ({name, cls, shape: circle|diamond|square, hollow, points: [{x, y, label, href}]}) on a
// log x axis (sizes span orders of magnitude); each point links to its job and says what it is on hover.
function scatterChart(svg, groups, {xLabel, yLabel, xFormat = String, yFormat = String, empty = "nothing to compare yet"} = {}) {
  const all = groups.flatMap((g) => g.points).filter((p) => p.x > 0 && typeof p.y === "number");
  sizeTo(svg);
  if (!all.length) {
    svg.append(svgEl("text", {x: CHART.w / 2, y: CHART.h / 2, "text-anchor": "middle", class: "empty"}, empty));
    return;
  }
  const xs = all.map((p) => p.x), ys = all.map((p) => p.y);
  const xLo = Math.min(...xs) / 1.5, xHi = Math.max(...xs) * 1.5;
  const [yLo, yHi] = pad(Math.min(...ys), Math.max(...ys), 0.1);
  const keys = placeLegend(groups.map((g) => ({name: g.name, cls: "legend-" + g.cls})));
  const {x, y} = frame(svg, {xLo, xHi, yLo, yHi, logX: true, xLabel, yLabel, xFormat, yFormat});
  groups.forEach((g) => {
    for (const p of g.points) {
      if (!(p.x > 0) || typeof p.y !== "number") continue;
      const cx = x(p.x), cy = y(p.y), cls = "pt pt-" + g.cls + (g.hollow ? " hollow" : "");
      const mark = g.shape === "diamond" ? svgEl("path", {class: cls, d: `M${cx} ${cy - 7}L${cx + 7} ${cy}L${cx} ${cy + 7}L${cx - 7} ${cy}Z`})
        : g.shape === "square" ? svgEl("rect", {class: cls, x: cx - 4, y: cy - 4, width: 8, height: 8})
        : svgEl("circle", {class: cls, cx, cy, r: 5});
      mark.append(svgEl("title", {}, p.label));
      const link = p.href ? svgEl("a", {href: p.href}) : svgEl("g");
      link.append(mark);
      svg.append(link);
    }
  });
  drawLegend(svg, keys);
}
