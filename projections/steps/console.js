// Executions: each with budget bars per scope and the savings ledger per lever, step by step.
import { api, badge, h, meter, table, time } from "/console/static/console.js";

const pct = (share) => share === null || share === undefined ? "unlimited" : `${(share * 100).toFixed(1)} %`;
const usd = (v) => `$${(v || 0).toFixed(6)}`;
// An execution's status as the API says it (opening, running, succeeded, failed, cancelled, invalid).
const EXECUTION_STATES = { succeeded: "ok", failed: "bad", invalid: "bad", cancelled: "warn" };

function budgetBars(utilisation) {
  return h("div", { class: "budgets" }, Object.entries(utilisation || {}).map(([scope, share]) =>
    h("div", { dataset: { scope } }, h("span", { class: "label" }, `${scope}: ${pct(share)}`),
      share === null ? "" : meter(Math.round(share * 1000), 1000))));
}

async function list({ navigate }) {
  const executions = await api("/v1/executions");
  return table([
    ["execution", (e) => e.execution_id], ["agent", (e) => e.agent_id], ["user", (e) => e.user_id],
    ["status", (e) => badge(e.status, EXECUTION_STATES[e.status] || "")],
    ["tokens", (e) => e.metrics.tokens_used ?? 0], ["saved", (e) => `${e.metrics.savings_percent ?? 0} %`],
    ["cost", (e) => usd(e.metrics.cost_usd)], ["budgets", (e) => budgetBars(e.metrics.budget_utilisation)],
    ["started", (e) => time(e.started_at)],
  ], executions, (e) => navigate("steps", e.execution_id));
}

async function detail(id) {
  const e = await api(`/v1/executions/${encodeURIComponent(id)}`);
  const m = e.metrics;
  return h("div", {},
    h("p", {}, h("a", { href: "#/steps" }, "← executions")),
    h("h2", {}, `${e.execution_id} · ${e.agent_id} for ${e.user_id} `, badge(e.status, EXECUTION_STATES[e.status] || "")),
    h("div", { class: "grid" }, [["tokens used", m.tokens_used], ["tokens saved", m.tokens_saved],
      ["savings", `${m.savings_percent} %`], ["cost", usd(m.cost_usd)], ["without Baton", usd(m.counterfactual_usd)]]
      .map(([label, value]) => h("div", { class: "card" }, h("div", { class: "stat" }, value ?? 0), h("div", { class: "label" }, label)))),
    h("h2", {}, "Budget utilisation"), budgetBars(m.budget_utilisation),
    h("h2", {}, "Savings ledger"),
    h("div", { id: "savings" }, table([
      ["step", (s) => s.step_id], ["intent", (s) => s.intent], ["model", (s) => s.model || "–"],
      ["status", (s) => badge(s.status, s.status === "executed" ? "ok" : s.status === "failed" || s.status === "rejected" ? "bad" : "")],
      ["tokens in / out", (s) => `${s.input_tokens} / ${s.output_tokens}`],
      ["cache read / write", (s) => `${s.cache_read_tokens} / ${s.cache_write_tokens}`],
      ["compression", (s) => `${s.compression.tokens} tok · ${usd(s.compression.usd)}`],
      ["routing", (s) => `${s.routing.tokens} tok · ${usd(s.routing.usd)}`],
      ["caching", (s) => `${s.caching.tokens} tok · ${usd(s.caching.usd)}`],
      ["cost", (s) => usd(s.cost_usd)], ["decision", (s) => s.decision || s.error || "–"],
    ], e.steps)));
}

export default {
  async render({ params, navigate }) {
    return params[0] ? detail(params[0]) : list({ navigate });
  },
};
