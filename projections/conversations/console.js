// Conversations: each contact's latest session, a chat view with lane and delivery status, messages per day by lane.
import { api, badge, h, stackedBars, table, time } from "/console/static/console.js";

async function list({ navigate }) {
  const [page, stats, daily] = await Promise.all([
    api("/v1/conversations?limit=100"), api("/v1/stats/conversations"), api("/v1/stats/conversations/daily"),
  ]);
  const rate = stats.success_rate === null ? "–" : `${(stats.success_rate * 100).toFixed(1)} %`;
  return h("div", {},
    h("div", { class: "grid" },
      [["contacts", stats.contacts], ["active sessions", stats.active_sessions], ["messages", stats.messages_received],
       ["replies sent", stats.replies_sent], ["reply success", rate], ["duplicates dropped", stats.duplicates_dropped]]
        .map(([label, value]) => h("div", { class: "card" }, h("div", { class: "stat" }, value), h("div", { class: "label" }, label)))),
    h("div", { class: "card", id: "lanes-per-day" }, h("h2", {}, "Messages per day by lane"),
      stackedBars(daily.map((d) => ({ category: d.day, series: d.lane, value: d.messages })))),
    h("h2", {}, "Conversations"),
    table([
      ["contact", (c) => c.contact_name ? `${c.contact_name} (${c.contact})` : c.contact],
      ["lane", (c) => c.lane ? badge(c.lane) : "–"],
      ["session", (c) => `#${c.session_number} ${c.active ? "active" : "expired"}`],
      ["messages", (c) => c.messages_received], ["replies", (c) => c.replies_sent],
      ["last activity", (c) => time(c.last_activity_at)],
    ], page.items, (c) => navigate("conversations", c.contact)));
}

async function chat(contact) {
  const c = await api(`/v1/conversations/${encodeURIComponent(contact)}`);
  return h("div", {},
    h("p", {}, h("a", { href: "#/conversations" }, "← all conversations")),
    h("h2", {}, c.contact_name ? `${c.contact_name} · ${c.contact}` : c.contact, " ", c.lane ? badge(c.lane) : ""),
    h("p", { class: "label" }, `session #${c.session_number} · ${c.active ? "active" : "expired"} · tickets: ${c.tickets.join(", ") || "none"}`),
    h("div", { class: "chat" }, c.dialogue.map((turn) =>
      h("div", { class: `bubble ${turn.role}`, dataset: { seq: turn.seq } },
        turn.text || `(${turn.message_type})`,
        h("div", { class: "meta" }, time(turn.at), turn.lane ? [" · ", badge(turn.lane)] : "",
          turn.status ? [" · ", badge(turn.status, turn.status === "failed" ? "bad" : "ok")] : "",
          turn.whatsapp_message_id ? [" · ", h("a", { href: `#/trace/${encodeURIComponent(turn.whatsapp_message_id)}` }, "trace")] : "")))));
}

export default {
  async render({ params, navigate }) {
    return params[0] ? chat(params[0]) : list({ navigate });
  },
};
