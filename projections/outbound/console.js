// Outbound: the queue by status and priority, each message's decision trail, sends per day by decision.
import { api, badge, h, stackedBars, table, time } from "/console/static/console.js";

const STATUS_KIND = { sent: "ok", failed: "bad", dropped: "bad" };

async function queue({ navigate }) {
  const [found, daily] = await Promise.all([api("/v1/outbound/queue?limit=200"), api("/v1/outbound/decisions/daily")]);
  const counts = {};
  for (const c of found.counts) counts[c.status] = (counts[c.status] || 0) + c.count;
  return h("div", {},
    h("div", { class: "grid" }, Object.entries(counts).map(([status, n]) =>
      h("div", { class: "card" }, h("div", { class: "stat" }, n), h("div", { class: "label" }, status)))),
    h("div", { class: "card", id: "decisions-per-day" }, h("h2", {}, "Decisions per day"),
      stackedBars(daily.map((d) => ({ category: d.day, series: d.decision, value: d.count })))),
    h("h2", {}, "Queue"),
    table([
      ["user", (m) => m.user_id], ["agent", (m) => m.agent_id], ["type", (m) => m.message_type],
      ["priority", (m) => badge(m.priority)], ["status", (m) => badge(m.status, STATUS_KIND[m.status])],
      ["reason", (m) => m.reason || "–"], ["queued", (m) => time(m.queued_at)], ["due", (m) => time(m.due_at)],
    ], found.items, (m) => navigate("outbound", m.message_id)));
}

async function message(id) {
  const m = await api(`/v1/outbound/messages/${encodeURIComponent(id)}`);
  return h("div", {},
    h("p", {}, h("a", { href: "#/outbound" }, "← queue")),
    h("h2", {}, `${m.message_type} for ${m.user_id} from ${m.agent_id} `, badge(m.status, STATUS_KIND[m.status])),
    m.rendered_text ? h("div", { class: "bubble agent" }, m.rendered_text) : "",
    h("p", {}, h("a", { href: `#/trace/${encodeURIComponent(m.message_id)}` }, "trace this message")),
    h("h2", {}, "Decision trail"),
    table([
      ["at", (d) => time(d.at)], ["decision", (d) => badge(d.decision)], ["reason", (d) => d.reason],
      ["inputs", (d) => h("code", {}, Object.entries(d.inputs).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join("  "))],
    ], m.decisions));
}

export default {
  async render({ params, navigate }) {
    return params[0] ? message(params[0]) : queue({ navigate });
  },
};
