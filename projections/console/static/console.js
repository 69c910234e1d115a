// The Baton console: sign in with a bearer token, one page per registered domain plus the system pages.
// No build step and nothing fetched from outside: pages are ES modules served by the API (/console/pages/*.js).

const TOKEN_KEY = "baton.console.token";
const PALETTE = ["#3559e0", "#1f9d6b", "#d9623b", "#8a4fd0", "#c99a1a", "#2aa3b8", "#c62f3d", "#6b7385"];

export class ApiError extends Error {
  constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; this.detail = detail; }
}

/** GET (or another method with a JSON body) on the API with the signed-in token. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${localStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const detail = data && (data.detail || data.error) ? (data.detail || data.error) : response.statusText;
    if (response.status === 401) showSignIn(typeof detail === "string" ? detail : "");
    throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

/** An element: h("td", {class: "x", onclick: f}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A table of rows; columns are [header, row => cell]; onRow makes rows clickable. */
export function table(columns, rows, onRow) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(([title]) => h("th", {}, title)))),
    h("tbody", {}, rows.length ? rows.map((row) => h("tr", onRow ? { class: "link", onclick: () => onRow(row) } : {},
      columns.map(([, cell]) => h("td", {}, cell(row))))) : h("tr", {}, h("td", { colspan: columns.length }, "Nothing yet."))));
}

export function badge(text, kind = "") { return h("span", { class: `badge ${kind || text}` }, text); }

export function time(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 19);
}

export function gap(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `+${Math.round(ms)} ms`;
  if (ms < 120000) return `+${(ms / 1000).toFixed(1)} s`;
  if (ms < 7200000) return `+${(ms / 60000).toFixed(1)} min`;
  return `+${(ms / 3600000).toFixed(1)} h`;
}

/** A bar of use against a limit (budget bars). */
export function meter(used, limit) {
  const share = limit > 0 ? Math.min(1, used / limit) : 0;
  return h("div", { class: "bar", title: `${used} of ${limit}` },
    h("span", { class: used > limit ? "over" : "", style: `width:${(share * 100).toFixed(1)}%` }));
}

/** Stacked bars per category (a day) and series (a lane, a model): rows are {category, series, value}. */
export function stackedBars(rows, { height = 180, format = (v) => String(v) } = {}) {
  const categories = [...new Set(rows.map((r) => r.category))].sort();
  const series = [...new Set(rows.map((r) => r.series))].sort();
  const totals = categories.map((c) => rows.filter((r) => r.category === c).reduce((s, r) => s + r.value, 0));
  // Scaled to the data (a day of $0.02 fills the chart like a day of 20 messages); 1 only when there is nothing.
  const max = Math.max(0, ...totals) || 1;
  const barWidth = 28, step = 40, left = 48, top = 10, width = left + categories.length * step + 10;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", Math.max(width, 200));
  svg.setAttribute("height", height + 40);
  svg.setAttribute("role", "img");
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  add("text", { x: 0, y: top + 8 }, format(max));
  add("text", { x: 0, y: top + height }, "0");
  categories.forEach((category, i) => {
    let y = top + height;
    series.forEach((name, j) => {
      const value = rows.filter((r) => r.category === category && r.series === name).reduce((s, r) => s + r.value, 0);
      if (!value) return;
      const h_ = (value / max) * height;
      y -= h_;
      const rect = add("rect", { x: left + i * step, y, width: barWidth, height: h_, fill: PALETTE[j % PALETTE.length] });
      rect.dataset.series = name;
      rect.dataset.category = category;
      rect.dataset.value = value;
      const title = document.createElementNS(ns, "title");
      title.textContent = `${category} ${name}: ${format(value)}`;
      rect.append(title);
    });
    add("text", { x: left + i * step, y: top + height + 14 }, category.slice(5));
  });
  const legend = h("div", { class: "legend" }, series.map((name, j) =>
    h("span", {}, h("i", { style: `background:${PALETTE[j % PALETTE.length]}` }), name)));
  return h("div", { class: "chart" }, svg, legend);
}

function showSignIn(reason) {
  document.getElementById("sign-in").hidden = false;
  document.getElementById("page").hidden = true;
  document.getElementById("sign-in-error").textContent = reason ? `Signed out: ${reason}` : "";
}

function claims(token) {
  try { return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))); } catch { return null; }
}

let pages = [];
let routes = 0;  // a page renders only if no navigation started after it: the last one started wins, not the last done

async function route() {
  const turn = ++routes;
  const token = localStorage.getItem(TOKEN_KEY);
  const signedIn = Boolean(token && claims(token));
  document.getElementById("sign-out").hidden = !signedIn;
  if (!signedIn) { showSignIn(""); return; }
  const who = claims(token);
  document.getElementById("who").textContent = `${who.tenant_id}${who.scope === "service" ? " (service)" : ""}`;
  document.getElementById("sign-in").hidden = true;
  const root = document.getElementById("page");
  root.hidden = false;
  const [id, ...params] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const page = pages.find((p) => p.id === id) || pages[0];
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === page.id);
  root.replaceChildren(h("p", { class: "label" }, "Loading…"));
  try {
    const module = await import(page.script);
    const view = await module.default.render({ params, navigate: (...parts) => { location.hash = `#/${parts.map(encodeURIComponent).join("/")}`; } });
    if (turn === routes) root.replaceChildren(h("h1", {}, page.title), view);
  } catch (error) {
    if (turn === routes) root.replaceChildren(h("h1", {}, page.title), h("p", { class: "error" }, String(error.message || error)));
  }
}

async function start() {
  pages = await (await fetch("/console/pages.json")).json();
  document.getElementById("nav").replaceChildren(...pages.map((p) => h("a", { href: `#/${p.id}`, dataset: { page: p.id } }, p.title)));
  document.getElementById("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    route();
  });
  document.getElementById("sign-out").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); route(); });
  window.addEventListener("hashchange", route);
  route();
}

if (typeof document !== "undefined" && document.getElementById("nav")) start();
