// The dashboard page (edge/http/dashboard.py): asks for a credential, keeps it in this tab's sessionStorage, polls
// GET /api/v1/dashboard with it as a bearer header, and renders the answer. Everything is built with textContent:
// origins, job ids and errors come from API callers and must never be read as HTML.
"use strict";

const CREDENTIAL_KEY = "ezthrottle.dashboard.credential";
const POLL_MS = 2000;
const COLORS = { ok: "#1f9d55", rate_limited: "#d97706", errors: "#c53030", mean: "#2b6cb0", max: "#805ad5" };

let pollTimer = null;

function byId(id) {
  return document.getElementById(id);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

const COMPACT = new Intl.NumberFormat(undefined, { notation: "compact" });

function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "—";
}

function day(ms) {
  return ms ? new Date(ms).toLocaleDateString() : "—";
}

function number(value, digits = 0) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

// One table: a header row, then a row per item; a cell is text, or a Node, or {text, className, title}.
function fillTable(table, headings, rows, emptyText) {
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  for (const heading of headings) head.appendChild(element("th", heading));
  const body = table.createTBody();
  if (rows.length === 0) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = headings.length;
    cell.className = "muted";
    cell.textContent = emptyText;
    return;
  }
  for (const cells of rows) {
    const row = body.insertRow();
    for (const value of cells) {
      const cell = row.insertCell();
      if (value instanceof Node) cell.appendChild(value);
      else if (value !== null && typeof value === "object") {
        cell.textContent = value.text;
        cell.className = value.className || "";
        if (value.title) cell.title = value.title;
      } else cell.textContent = value === null || value === undefined ? "—" : String(value);
    }
  }
}

function state(text) {
  return { text, className: `state-${text}` };
}

function count(value) {
  return { text: number(value), className: "number" };
}

// -- sections ---------------------------------------------------------------------------------------------------

function renderQueues(data) {
  byId("queues-total").textContent =
    data.queues_total > data.queues.length ? `(the ${data.queues.length} busiest of ${data.queues_total})` : "";
  fillTable(
    byId("queues"),
    ["Node", "Origin", "Credential", "Depth", "In flight", "Rate", "Concurrency", "Blocked"],
    data.queues.map((q) => [
      q.node,
      q.origin,
      q.credential_fingerprint ? q.credential_fingerprint.slice(0, 12) : "—",
      count(q.depth),
      count(q.in_flight),
      `${number(q.rps, 2)}/s (${q.rps_source})`,
      `${q.max_concurrent} (${q.concurrency_source})`,
      q.blocked_until_ms ? `until ${time(q.blocked_until_ms)}: ${q.blocked_reason}` : "no",
    ]),
    "No queues: submit a job.",
  );
}

function renderMembers(data) {
  const cluster = data.cluster;
  const members = cluster.enabled
    ? cluster.members.map((m) => [m.node, state(m.state), m.region || "—", m.api_address])
    : [[data.node, state("alive"), "—", "this node alone"]];
  fillTable(byId("members"), ["Member", "State", "Region", "API address"], members, "No members.");
  const regions = data.regions ? data.regions.regions : [];
  fillTable(
    byId("regions"),
    ["Region", "Health", "Members", "Origins (latency, errors)"],
    regions.map((r) => [
      r.region,
      state(r.up ? "up" : "down"),
      r.members.join(", ") || "—",
      Object.entries(r.origins)
        .map(([origin, h]) => {
          const ejected = h.ejected_until_ms ? ", ejected" : "";
          return `${origin}: ${number(h.latency_ms)} ms, ${number(100 * h.error_rate, 1)}%${ejected}`;
        })
        .join("; ") || "—",
    ]),
    "No regions configured.",
  );
}

function renderUsage(data) {
  fillTable(
    byId("usage"),
    ["Account", "Plan", "Used of quota", "Remaining", "Overage", "Resets"],
    data.usage.map((u) => {
      const bar = element("span", null, "bar");
      const fill = element("span");
      fill.style.width = u.quota ? `${Math.min(100, (100 * u.count) / u.quota)}%` : "0";
      bar.appendChild(fill);
      const used = element("span", `${COMPACT.format(u.count)} of ${u.quota === null ? "unlimited" : COMPACT.format(u.quota)} `);
      used.appendChild(bar);
      return [u.account_id, u.plan, used, count(u.remaining), count(u.overage), day(u.resets_at_ms)];
    }),
    "Plans are not metered on this node.",
  );
}

function renderJobs(data) {
  fillTable(
    byId("jobs"),
    ["Job", "Account", "Status", "Node", "Updated", "Attempts (region, answer, outcome)"],
    data.recent_jobs.map((job) => [
      job.job_id,
      job.account_id,
      state(job.status),
      job.node,
      time(job.updated_at_ms),
      {
        text: job.attempts.map((a) => `${a.region || "owner"} ${a.status_code ?? "no answer"} ${a.outcome}`).join(" · ") || "—",
        title: job.attempts.map((a) => a.error).filter(Boolean).join("\n"),
      },
    ]),
    "No jobs seen lately.",
  );
}

function renderProxy(data) {
  byId("proxy-section").hidden = data.scope !== "operator";
  const rows = [];
  for (const listener of data.proxy) {
    for (const tier of listener.tiers) {
      const wait = tier.wait_count ? (1000 * tier.wait_s_sum) / tier.wait_count : null;
      rows.push([
        listener.node,
        listener.listener,
        count(listener.capacity),
        tier.tier,
        count(tier.queued),
        count(tier.in_flight),
        count(tier.admitted),
        count(tier.refused),
        { text: number(wait, 1), className: "number" },
      ]);
    }
  }
  fillTable(
    byId("proxy"),
    ["Node", "Listener", "Slots", "Tier", "Waiting", "In flight", "Admitted", "Refused", "Mean wait (ms)"],
    rows,
    "No [[protect]] listener has had traffic.",
  );
}

// -- charts: lines over the last minutes, drawn on a canvas ------------------------------------------------------

function drawChart(canvas, legend, times, lines) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  const left = 44, right = 8, top = 8, bottom = 20;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const values = lines.flatMap((line) => line.values.filter((v) => v !== null));
  const ceiling = niceCeiling(Math.max(1, ...values));
  const start = times.length ? times[0] : 0;
  const span = times.length > 1 ? times[times.length - 1] - start : 1;
  const x = (t) => left + (plotWidth * (t - start)) / span;
  const y = (v) => top + plotHeight * (1 - v / ceiling);

  context.font = "11px system-ui, sans-serif";
  context.fillStyle = "#6b7385";
  context.strokeStyle = "#dde1e8";
  context.lineWidth = 1;
  for (let step = 0; step <= 4; step++) {
    const value = (ceiling * step) / 4;
    context.beginPath();
    context.moveTo(left, y(value));
    context.lineTo(width - right, y(value));
    context.stroke();
    context.fillText(String(Number(value.toFixed(2))), 4, y(value) + 4);
  }
  if (times.length) {
    context.fillText(time(start), left, height - 4);
    const last = time(times[times.length - 1]);
    context.fillText(last, width - right - context.measureText(last).width, height - 4);
  } else {
    context.fillText("no samples yet", left + 8, top + 16);
  }
  for (const line of lines) {
    context.strokeStyle = line.color;
    context.lineWidth = 2;
    context.beginPath();
    let drawing = false;
    line.values.forEach((value, index) => {
      if (value === null) {
        drawing = false;
        return;
      }
      if (drawing) context.lineTo(x(times[index]), y(value));
      else context.moveTo(x(times[index]), y(value));
      drawing = true;
    });
    context.stroke();
  }
  legend.replaceChildren(
    ...lines.map((line) => {
      const item = element("li", line.label);
      item.style.setProperty("--swatch", line.color);
      return item;
    }),
  );
}

function niceCeiling(value) {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * magnitude).find((candidate) => candidate >= value);
}

function renderCharts(data) {
  const points = data.series;
  const times = points.map((p) => p.t_ms);
  const perSecond = (name) => points.map((p) => p[name] / data.interval_s);
  drawChart(byId("rate-chart"), byId("rate-legend"), times, [
    { label: "answered", color: COLORS.ok, values: perSecond("ok") },
    { label: "429", color: COLORS.rate_limited, values: perSecond("rate_limited") },
    { label: "errors", color: COLORS.errors, values: perSecond("errors") },
  ]);
  drawChart(byId("latency-chart"), byId("latency-legend"), times, [
    {
      label: "mean",
      color: COLORS.mean,
      values: points.map((p) => (p.latency_count ? p.latency_ms_sum / p.latency_count : null)),
    },
    { label: "max", color: COLORS.max, values: points.map((p) => (p.latency_count ? p.latency_ms_max : null)) },
  ]);
}

// -- polling -------------------------------------------------------------------------------------------------------

function render(data) {
  const scope = byId("scope");
  scope.hidden = false;
  scope.textContent = data.scope === "operator" ? "operator: every account" : `account ${data.account_id}`;
  const unreachable = data.members_unreachable.length ? `; no answer from ${data.members_unreachable.join(", ")}` : "";
  byId("status").textContent = `node ${data.node}, updated ${time(data.generated_at_ms)}${unreachable}`;
  renderCharts(data);
  renderQueues(data);
  renderMembers(data);
  renderUsage(data);
  renderJobs(data);
  renderProxy(data);
}

function showSignIn(message) {
  clearTimeout(pollTimer);
  byId("board").hidden = true;
  byId("sign-out").hidden = true;
  byId("scope").hidden = true;
  byId("status").textContent = "";
  byId("sign-in").hidden = false;
  byId("sign-in-error").textContent = message;
}

async function refresh() {
  const credential = sessionStorage.getItem(CREDENTIAL_KEY);
  if (!credential) {
    showSignIn("");
    return;
  }
  let response;
  try {
    response = await fetch("/api/v1/dashboard", {
      headers: { Authorization: `Bearer ${credential}` },
      cache: "no-store",
    });
  } catch (error) {
    byId("status").textContent = "the node does not answer; trying again";
    pollTimer = setTimeout(refresh, POLL_MS);
    return;
  }
  if (sessionStorage.getItem(CREDENTIAL_KEY) !== credential) return; // signed out (or in again) meanwhile
  if (response.status === 401) {
    sessionStorage.removeItem(CREDENTIAL_KEY);
    showSignIn("This node knows no such account key or operator token.");
    return;
  }
  if (response.ok) {
    byId("sign-in").hidden = true;
    byId("board").hidden = false;
    byId("sign-out").hidden = false;
    render(await response.json());
  } else {
    byId("status").textContent = `the node answered ${response.status}; trying again`;
  }
  pollTimer = setTimeout(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  byId("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(CREDENTIAL_KEY, byId("credential").value.trim());
    byId("credential").value = "";
    clearTimeout(pollTimer);
    refresh();
  });
  byId("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(CREDENTIAL_KEY);
    showSignIn("");
  });
  refresh();
});
