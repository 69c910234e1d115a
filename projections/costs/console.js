// LLM costs: cost per day by model, and totals by domain, agent and model.
import { api, h, stackedBars, table } from "/console/static/console.js";

const usd = (v) => `$${v.toFixed(v < 1 ? 4 : 2)}`;

export default {
  async render() {
    const [daily, byDomain, byModel, byAgent] = await Promise.all([
      api("/v1/costs?group_by=day&split_by=model"), api("/v1/costs?group_by=domain"),
      api("/v1/costs?group_by=model"), api("/v1/costs?group_by=agent"),
    ]);
    const totals = (report, title) => h("div", { class: "card" }, h("h2", {}, title), table([
      [title, (g) => g.key || "–"], ["calls", (g) => g.calls], ["failed", (g) => g.failed],
      ["tokens in / out", (g) => `${g.input_tokens} / ${g.output_tokens}`],
      ["cache read / write", (g) => `${g.cache_read_tokens} / ${g.cache_write_tokens}`], ["cost", (g) => usd(g.cost_usd)],
    ], report.groups));
    return h("div", {},
      h("div", { class: "grid" }, h("div", { class: "card" }, h("div", { class: "stat" }, usd(daily.total_usd)),
        h("div", { class: "label" }, "total LLM cost"))),
      h("div", { class: "card", id: "cost-per-day" }, h("h2", {}, "Cost per day by model"),
        stackedBars(daily.groups.map((g) => ({ category: g.key, series: g.split, value: g.cost_usd })), { format: usd })),
      totals(byDomain, "domain"), totals(byModel, "model"), totals(byAgent, "agent"));
  },
};
