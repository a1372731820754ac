// kd dashboard, shared by every page: the API key, calls to the /v1 API, formatting, the login page.
// Vanilla JS, no build step. Server and user strings are written with textContent only.
//
// Where the key lives (the trade-off, also in the README): by default in localStorage, so a job opened
// in a new tab, or after a browser restart, is still logged in; it stays in the browser profile until
// "Log out" (which removes it from every tab of this origin). Any script running on this origin could
// read it, which is why the pages run only this origin's scripts (CSP 'self'), write server strings as
// text, and show the report in a sandboxed frame that runs no script. "Shared computer" at login keeps the
// key in sessionStorage instead: gone when the tab closes, and a new tab asks for it again.
"use strict";
const KEY = "kd_api_key";
const $ = (id) => document.getElementById(id);

const Key = {
  get() { return localStorage.getItem(KEY) || sessionStorage.getItem(KEY); },
  set(value, sharedComputer) {
    Key.clear();
    (sharedComputer ? sessionStorage : localStorage).setItem(KEY, value);
  },
  clear() { localStorage.removeItem(KEY); sessionStorage.removeItem(KEY); },
};

// An API error: the HTTP status and the RFC 9457 problem body (title, detail, errors[{field, reason}]).
class ApiError extends Error {
  constructor(status, problem) {
    const p = problem || {};
    super(p.detail || p.title || "HTTP " + status);
    this.status = status;
    this.problem = p;
  }
}

async function problemOf(r) {
  try { return await r.json(); } catch (_) { return {title: r.status + " " + r.statusText}; }
}

// fetch under /v1 with the key as a Bearer header. A 401 (a revoked or wrong key) forgets the key and
// goes back to the login page, which says why; other errors throw ApiError.
async function api(path, opts = {}) {
  opts.headers = Object.assign({Authorization: "Bearer " + Key.get()}, opts.headers || {});
  const r = await fetch(path, opts);
  if (r.status === 401) {
    Key.clear();
    location.href = "/ui/login?expired=1&next=" + encodeURIComponent(location.pathname + location.search);
    throw new ApiError(401, {detail: "the API key was refused"});
  }
  if (!r.ok) throw new ApiError(r.status, await problemOf(r));
  return r;
}
async function apiJson(path, opts) { return (await api(path, opts)).json(); }
const jobPath = (id, rest = "") => "/v1/jobs/" + encodeURIComponent(id) + rest;

function showError(msg) { const e = $("error"); if (e) e.textContent = msg || ""; }

// --- elements ------------------------------------------------------------------------------------
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null) continue;
    if (k === "text") e.textContent = String(v);
    else if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}
function badge(status) { return el("span", {class: "badge badge-" + status, text: status}); }
function setBadge(node, status) { node.className = "badge badge-" + status; node.textContent = status; }

// --- numbers and times ---------------------------------------------------------------------------
function pct(x, digits = 1) { return typeof x === "number" ? (x * 100).toFixed(digits) + " %" : null; }
function points(gain) {  // an accuracy difference in percentage points, signed
  if (typeof gain !== "number") return null;
  const v = gain * 100;
  return (v > 0 ? "+" : v < 0 ? "−" : "±") + Math.abs(v).toFixed(1) + " pts";
}
function count(n) {
  if (typeof n !== "number") return null;
  if (n >= 1e9) return (n / 1e9).toFixed(1) + " G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " k";
  return String(n);
}
function duration(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds) || seconds < 0) return null;
  const s = Math.round(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
  return Math.floor(s / 3600) + " h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + " min";
}
const when = (iso) => (iso ? new Date(iso) : null);
function ago(iso) {  // "12 s ago", "5 min ago", "3 h ago", "2 d ago", then the date
  const t = when(iso);
  if (!t || isNaN(t)) return "";
  const s = (Date.now() - t.getTime()) / 1000;
  if (s < 5) return "just now";
  if (s < 60) return Math.floor(s) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  if (s < 30 * 86400) return Math.floor(s / 86400) + " d ago";
  return t.toLocaleDateString();
}
function stamp(iso) {  // the local date and time to the second, for tooltips and the cancelled notice
  const t = when(iso);
  return t && !isNaN(t) ? t.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "medium"}) : "";
}
function timeEl(iso) { return el("time", {datetime: iso, title: stamp(iso), text: ago(iso)}); }
function jobSeconds(j) {  // how long it ran: start to finish, or to now while running
  const start = when(j.started_at);
  if (!start) return null;
  const end = when(j.finished_at) || (["running", "cancelling"].includes(j.status) ? new Date() : null);
  return end ? (end - start) / 1000 : null;
}

// "mlp [256, 256]": an architecture and its most telling parameter
function archLabel(arch, params) {
  if (!arch) return null;
  const p = params || {};
  if (Array.isArray(p.hidden_sizes)) return arch + " [" + p.hidden_sizes.join(", ") + "]";
  const rest = Object.entries(p).map(([k, v]) => k + "=" + JSON.stringify(v)).join(" ");
  return rest ? arch + " " + (rest.length > 28 ? rest.slice(0, 27) + "…" : rest) : arch;
}
function teacherLabel(spec) {
  const t = (spec && spec.teacher) || {};
  return archLabel(t.arch, t.arch_params) || (t.file_id ? "file " + t.file_id.slice(0, 12) + "…" : "teacher");
}
function studentLabel(spec) {
  const s = (spec && spec.student) || {};
  return archLabel(s.arch, s.arch_params) || "student";
}

// --- login ---------------------------------------------------------------------------------------
function safeNext() {  // only a dashboard path, never another origin
  const next = new URLSearchParams(location.search).get("next") || "";
  return /^\/ui(\/|$|\?)/.test(next) && !next.startsWith("//") ? next : "/ui";
}
function loginPage() {
  if (new URLSearchParams(location.search).get("expired")) showError("The API refused the saved key (revoked, or wrong): log in again.");
  $("login-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const value = $("api-key").value.trim();
    showError("");
    // check the key before keeping it: one page of one job
    let r;
    try { r = await fetch("/v1/jobs?limit=1", {headers: {Authorization: "Bearer " + value}}); }
    catch (e) { showError("Could not reach the API: " + e.message); return; }
    if (r.status === 401) { showError("Wrong API key: the API does not know it, or it was revoked."); return; }
    if (!r.ok) { const p = await problemOf(r); showError("The API answered " + r.status + ": " + (p.detail || p.title || "")); return; }
    Key.set(value, $("shared-computer").checked);
    location.href = safeNext();
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const lo = $("logout");
  if (lo) lo.onclick = () => Key.clear();
  if ($("login-form")) { loginPage(); return; }
  if (!Key.get()) { location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search); return; }
  // another tab logged out: this one follows
  window.addEventListener("storage", (e) => { if (e.key === KEY && !Key.get()) location.href = "/ui/login"; });
  if (typeof startPage === "function") startPage();
});
