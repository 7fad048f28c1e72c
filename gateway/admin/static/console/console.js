// Tollway's admin console. It calls only the admin API and /health/detailed with the key
// the operator signs in with, kept in sessionStorage. Every value from the API is written
// with textContent, never as HTML, so a key name holding markup stays text.
"use strict";

const KEY = "tollwayAdminKey";
const $ = (selector) => document.querySelector(selector);
let auditBefore = null;
let healthTimer = null;
let usageRows = [];

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

async function api(path, options) {
  const init = Object.assign({ headers: {} }, options || {});
  init.headers["Authorization"] = "Bearer " + sessionStorage.getItem(KEY);
  if (init.body !== undefined) init.headers["Content-Type"] = "application/json";
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || response.statusText;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function show(tab) {
  for (const section of ["keys", "usage", "audit", "health"]) $("#" + section).hidden = section !== tab;
  for (const button of document.querySelectorAll("#tabs [data-tab]")) {
    button.setAttribute("aria-pressed", String(button.dataset.tab === tab));
  }
  clearInterval(healthTimer);
  if (tab === "keys") loadKeys();
  if (tab === "usage") loadUsage();
  if (tab === "audit") { auditBefore = null; $("#audit-table tbody").replaceChildren(); loadAudit(); }
  if (tab === "health") { loadHealth(); healthTimer = setInterval(loadHealth, 5000); }
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    await api("/admin/keys");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    $("#sign-in-error").textContent = error.status === 403
      ? "This key is not an admin key: the console needs the admin scope."
      : "Sign-in failed: " + error.message;
    return;
  }
  $("#sign-in").hidden = true;
  $("#tabs").hidden = false;
  show("keys");
}

function splitList(value) {
  const items = value.split(",").map((s) => s.trim()).filter(Boolean);
  return items.length ? items : undefined;
}

async function loadKeys() {
  const tenant = $("#tenant-filter").value.trim();
  const path = "/admin/keys" + (tenant ? "?tenant=" + encodeURIComponent(tenant) : "");
  try {
    const { data } = await api(path);
    const rows = data.map((key) => {
      const row = el("tr");
      row.dataset.id = key.id;
      // data-label: the column's name, shown beside the value when rows stack on a phone.
      const cell = (label, text) => el("td", text, { "data-label": label });
      row.append(cell("ID", key.id), cell("Name", key.name), cell("Tenant", key.tenant),
        cell("Scopes", (key.scopes || []).join(", ")), cell("Source", key.source),
        cell("State", key.revoked ? "revoked" : "active"));
      const actions = el("td", null, { "data-label": "Actions", class: "actions" });
      if (!key.revoked) {
        const revoke = el("button", "Revoke", { type: "button", class: "revoke" });
        revoke.addEventListener("click", () => {
          if (revoke.dataset.armed) return act("/admin/keys/" + encodeURIComponent(key.id) + "/revoke", {});
          revoke.dataset.armed = "1";
          revoke.textContent = "Confirm revoke";
        });
        actions.append(revoke);
      }
      if (key.source === "store" && !key.revoked) {
        const rotate = el("button", "Rotate (1h grace)", { type: "button", class: "rotate" });
        rotate.addEventListener("click", async () => {
          const answer = await act("/admin/keys/" + encodeURIComponent(key.id) + "/rotate", { grace_s: 3600 });
          if (answer) showNewKey(answer.key);
        });
        const rename = el("button", "Rename", { type: "button", class: "rename" });
        rename.addEventListener("click", () => {
          const input = el("input", null, { "aria-label": "new name" });
          input.value = key.name || "";
          const save = el("button", "Save", { type: "button" });
          save.addEventListener("click", () =>
            act("/admin/keys/" + encodeURIComponent(key.id), { name: input.value }, "PATCH"));
          actions.replaceChildren(input, save);
          input.focus();
        });
        actions.append(rotate, rename);
      }
      row.append(actions);
      return row;
    });
    $("#keys-table tbody").replaceChildren(...rows);
    $("#keys-error").textContent = "";
  } catch (error) {
    $("#keys-error").textContent = error.message;
  }
}

async function act(path, body, method) {
  try {
    const answer = await api(path, { method: method || "POST", body: JSON.stringify(body) });
    await loadKeys();
    return answer;
  } catch (error) {
    $("#keys-error").textContent = error.message;
    return null;
  }
}

function showNewKey(secret) {
  $("#new-key-value").textContent = secret;
  $("#new-key").hidden = false;
}

async function createKey(event) {
  event.preventDefault();
  const form = event.target;
  const body = {
    tenant: form.tenant.value.trim(),
    scopes: [...form.querySelectorAll("input[name=scope]:checked")].map((box) => box.value),
  };
  if (form.name.value.trim()) body.name = form.name.value.trim();
  for (const field of ["models", "datasets", "limits"]) {
    const items = splitList(form[field].value);
    if (items) body[field] = items;
  }
  const budget = splitList(form.budget.value);
  if (budget) body.budget = { tokens: budget };
  if (form.expires_at.value) body.expires_at = new Date(form.expires_at.value).toISOString();
  const answer = await act("/admin/keys", body);
  if (answer) { showNewKey(answer.key); form.reset(); }
}

function isoDay(date) { return date.toISOString().slice(0, 10); }

async function loadUsage(event) {
  if (event) event.preventDefault();
  const form = $("#usage-form");
  if (!form.from.value) form.from.value = isoDay(new Date(Date.now() - 13 * 86400000));
  if (!form.to.value) form.to.value = isoDay(new Date());
  const group = form.group.value;
  const query = new URLSearchParams({
    from: form.from.value, to: isoDay(new Date(Date.parse(form.to.value) + 86400000)),
    group_by: "day," + group,
  });
  const { data } = await api("/admin/usage?" + query);
  usageRows = data;
  drawChart(data, group, form.measure.value);
  const columns = ["day", group, "requests", "errors", "tokens_in", "tokens_out", "rows", "bytes_out", "cache_hits"];
  $("#usage-table thead").replaceChildren(el("tr"));
  $("#usage-table thead tr").append(...columns.map((c) => el("th", c)));
  $("#usage-table tbody").replaceChildren(...data.map((row) => {
    const tr = el("tr");
    tr.append(...columns.map((c) => el("td", row[c])));
    return tr;
  }));
}

function drawChart(data, group, measure) {
  // Drawn as SVG here: one small chart type needs no library (no vendored code to keep
  // patched, nothing for the CSP to allow beyond 'self').
  const svgNS = "http://www.w3.org/2000/svg";
  const days = [...new Set(data.map((r) => r.day))].sort();
  const groups = [...new Set(data.map((r) => String(r[group])))].sort();
  const totals = days.map((d) => data.filter((r) => r.day === d).reduce((s, r) => s + (r[measure] || 0), 0));
  const max = Math.max(1, ...totals);
  const width = 640, height = 220, pad = 30;
  const palette = ["#0969da", "#1a7f37", "#bf8700", "#cf222e", "#8250df", "#57606a"];
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const title = document.createElementNS(svgNS, "title");
  title.textContent = `${measure} per day by ${group}`;
  svg.append(title);
  const barWidth = days.length ? Math.min(80, (width - 2 * pad) / days.length) : 0;
  groups.forEach((g, j) => {
    const swatch = document.createElementNS(svgNS, "rect");
    swatch.setAttribute("x", String(width - 150)); swatch.setAttribute("y", String(6 + j * 14));
    swatch.setAttribute("width", "10"); swatch.setAttribute("height", "10");
    swatch.setAttribute("fill", palette[j % palette.length]);
    const name = document.createElementNS(svgNS, "text");
    name.setAttribute("x", String(width - 135)); name.setAttribute("y", String(15 + j * 14));
    name.setAttribute("font-size", "10");
    name.textContent = g.length > 22 ? g.slice(0, 21) + "…" : g;
    svg.append(swatch, name);
  });
  days.forEach((day, i) => {
    let y = height - pad;
    groups.forEach((g, j) => {
      const row = data.find((r) => r.day === day && String(r[group]) === g);
      const value = row ? row[measure] || 0 : 0;
      const h = (value / max) * (height - 2 * pad);
      if (h <= 0) return;
      y -= h;
      const rect = document.createElementNS(svgNS, "rect");
      rect.setAttribute("x", String(pad + i * barWidth + 2));
      rect.setAttribute("y", String(y));
      rect.setAttribute("width", String(Math.max(1, barWidth - 4)));
      rect.setAttribute("height", String(h));
      rect.setAttribute("fill", palette[j % palette.length]);
      const tip = document.createElementNS(svgNS, "title");
      tip.textContent = `${day} ${g}: ${value}`;
      rect.append(tip);
      svg.append(rect);
    });
    const label = document.createElementNS(svgNS, "text");
    label.setAttribute("x", String(pad + i * barWidth + barWidth / 2));
    label.setAttribute("y", String(height - 10));
    label.setAttribute("text-anchor", "middle");
    label.setAttribute("font-size", "10");
    label.textContent = day.slice(5);
    svg.append(label);
  });
  const top = document.createElementNS(svgNS, "text");
  top.setAttribute("x", "2"); top.setAttribute("y", String(pad - 8)); top.setAttribute("font-size", "10");
  top.textContent = `max ${max}`;
  svg.append(top);
  $("#usage-chart").replaceChildren(svg);
}

function downloadCsv() {
  if (!usageRows.length) return;
  const columns = Object.keys(usageRows[0]);
  const quote = (v) => '"' + String(v === null || v === undefined ? "" : v).replace(/"/g, '""') + '"';
  const text = [columns.join(","), ...usageRows.map((r) => columns.map((c) => quote(r[c])).join(","))].join("\n");
  const link = el("a", null, { download: "tollway-usage.csv" });
  link.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  link.click();
  URL.revokeObjectURL(link.href);
}

async function loadAudit(event) {
  if (event) { event.preventDefault(); auditBefore = null; $("#audit-table tbody").replaceChildren(); }
  const form = $("#audit-form");
  const query = new URLSearchParams({ limit: "50" });
  if (form.action.value.trim()) query.set("action", form.action.value.trim());
  if (form.key_id.value.trim()) query.set("key_id", form.key_id.value.trim());
  if (auditBefore !== null) query.set("to", String(auditBefore));
  const { data } = await api("/admin/audit?" + query);
  const rows = data.map((entry) => {
    const tr = el("tr");
    tr.append(el("td", new Date(entry.at * 1000).toISOString()), el("td", entry.action),
      el("td", entry.key_id), el("td", entry.actor), el("td", entry.client_ip),
      el("td", entry.detail === null ? "" : JSON.stringify(entry.detail)));
    return tr;
  });
  $("#audit-table tbody").append(...rows);
  if (data.length) auditBefore = data[data.length - 1].at;
  $("#audit-older").disabled = data.length < 50;
}

async function loadHealth() {
  try {
    const body = await api("/health/detailed");
    $("#health-status").textContent = `${body.status}, up ${Math.round(body.uptime_s)} s, version ${body.version}`;
    $("#health-table tbody").replaceChildren(...Object.entries(body.components || {}).map(([name, c]) => {
      const tr = el("tr");
      tr.append(el("td", name), el("td", c.ok ? "yes" : "no"), el("td", c.breaker || ""),
        el("td", c.latency_ms), el("td", c.last_failure || c.detail || ""));
      return tr;
    }));
  } catch (error) {
    $("#health-status").textContent = error.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#admin-key").value.trim());
  });
  $("#sign-out").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });
  for (const button of document.querySelectorAll("#tabs [data-tab]")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("#create-form").addEventListener("submit", createKey);
  $("#tenant-filter").addEventListener("input", () => loadKeys());
  $("#copy-key").addEventListener("click", () => navigator.clipboard.writeText($("#new-key-value").textContent));
  $("#usage-form").addEventListener("submit", loadUsage);
  $("#usage-csv").addEventListener("click", downloadCsv);
  $("#audit-form").addEventListener("submit", loadAudit);
  $("#audit-older").addEventListener("click", () => loadAudit());
  if (sessionStorage.getItem(KEY)) signIn(sessionStorage.getItem(KEY));
});
