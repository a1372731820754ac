// The job list (/ui): one page of GET /v1/jobs (newest first), paged with the API's cursor (`after` =
// the last id of the page before), refreshed every 3 s while the tab is visible.
"use strict";
// rows per page: ?limit=N in the address (1-100, the API's range), else 20
const PAGE = Math.min(100, Math.max(1, parseInt(new URLSearchParams(location.search).get("limit"), 10) || 20));
const listState = {cursors: [null], status: ""};  // cursors[i]: the `after` of page i (null: the newest)

// A queued job of the page says why it waits (GET /v1/jobs gives waiting_reason; its position is on its page).
function statusCell(j) {
  const td = el("td", {class: "status", "data-label": "Status"}, badge(j.status));
  const p = j.progress || {};
  let line = null;
  if (j.status === "running") {
    line = Math.round((p.fraction || 0) * 100) + " %" + (p.phase ? " · " + p.phase : "") +
      (p.epoch != null && p.epochs ? " · epoch " + p.epoch + "/" + p.epochs : "");
  } else if (j.status === "queued") {
    line = j.waiting_reason || "waiting in " + (j.queue || "its queue");
  } else if (j.status === "failed" && j.error) {
    line = j.error.code;
  }
  if (line) td.append(el("div", {class: j.status === "queued" ? "waiting small" : "small", text: line}));
  return td;
}

function row(j) {
  const r = j.result || {}, s = r.student || {}, spec = j.spec || {};
  const tr = el("tr", {dataset: {job: j.id}});
  const link = el("a", {href: "/ui/jobs/" + encodeURIComponent(j.id), text: j.id});
  tr.append(el("td", {class: "id", "data-label": "Job"}, link));
  tr.append(el("td", {class: "archs", "data-label": "Teacher → student", text: teacherLabel(spec) + " → " + studentLabel(spec)}));
  tr.append(statusCell(j));
  const acc = s.accuracy != null ? pct(s.accuracy) : s.agreement != null ? pct(s.agreement) + " agreement" : "";
  tr.append(el("td", {class: "accuracy num", "data-label": "Accuracy", text: acc}));
  const gain = points(r.distillation_gain);
  tr.append(el("td", {class: "gain num" + (r.distillation_gain > 0 ? " up" : r.distillation_gain < 0 ? " down" : ""),
    "data-label": "Gain", title: "accuracy over the baseline trained from scratch", text: gain || ""}));
  const size = el("td", {class: "size", "data-label": "Size", title: "the student's parameters; how many times fewer than the teacher's",
    text: s.parameters != null ? count(s.parameters) + " params" : ""});
  if (r.compression) size.append(el("div", {class: "small muted", text: r.compression.toFixed(0) + "× smaller"}));
  tr.append(size);
  tr.append(el("td", {class: "duration num", "data-label": "Duration", text: duration(jobSeconds(j)) || ""}));
  tr.append(el("td", {class: "created", "data-label": "Created"}, timeEl(j.created_at)));
  return tr;
}

async function loadPage() {
  const page = listState.cursors.length - 1, after = listState.cursors[page];
  const q = new URLSearchParams({limit: String(PAGE)});
  if (after) q.set("after", after);
  if (listState.status) q.set("status", listState.status);
  try {
    const list = await apiJson("/v1/jobs?" + q);
    $("jobs").querySelector("tbody").replaceChildren(...list.data.map(row));
    $("empty").hidden = list.data.length > 0 || page > 0;
    $("newer").disabled = page === 0;
    $("older").disabled = !list.has_more;
    $("older").dataset.after = list.data.length ? list.data[list.data.length - 1].id : "";
    $("page-info").textContent = list.data.length ? "page " + (page + 1) : "";
    document.querySelector(".pager").hidden = page === 0 && !list.has_more;  // one page: nothing to page
    showError("");
  } catch (e) {
    if (e.status === 404 && page > 0) { listState.cursors = [null]; return loadPage(); }  // its cursor job was deleted
    showError(e.message);
  }
}

function startPage() {
  $("older").onclick = () => { listState.cursors.push($("older").dataset.after); loadPage(); };
  $("newer").onclick = () => { if (listState.cursors.length > 1) listState.cursors.pop(); loadPage(); };
  $("status-filter").onchange = () => { listState.status = $("status-filter").value; listState.cursors = [null]; loadPage(); };
  loadPage();
  setInterval(() => { if (!document.hidden) loadPage(); }, 3000);
}
