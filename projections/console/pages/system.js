// System: roles, lag per domain, dead letters with their reasons and a re-drive button (service tokens).
import { ApiError, api, badge, h, table, time } from "/console/static/console.js";

export default {
  async render() {
    let status, letters;
    try {
      [status, letters] = await Promise.all([api("/v1/ops/status"), api("/v1/ops/deadletters")]);
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) return h("p", { class: "error" }, error.detail);
      throw error;
    }
    const result = h("p", { id: "redrive-result" });
    const redrive = async (ids) => {
      const answer = await api("/v1/ops/deadletters/redrive", { method: "POST", body: { ids } });
      result.textContent = [...answer.redriven.map((i) => `re-driven ${i}`),
        ...answer.refused.map(([i, why]) => `refused ${i}: ${why}`)].join("; ");
    };
    return h("div", {},
      h("h2", {}, "Roles"),
      table([["role", (r) => r.role], ["state", (r) => badge(r.up ? "up" : "down", r.up ? "ok" : "bad")], ["detail", (r) => r.detail]], status.roles),
      h("h2", {}, "Lag per domain"),
      table([["domain", (d) => d.domain], ["records", (d) => d.records], ["worker lag", (d) => d.worker_lag],
        ["projector lag", (d) => d.projector_lag], ["last event", (d) => time(d.last_event_at)]], status.domains),
      h("h2", {}, `Dead letters (${status.dead_letters})`), result,
      table([["letter", (d) => d.id], ["stage", (d) => d.stage], ["reason", (d) => d.reason],
        ["failed at", (d) => time(d.failed_at)],
        ["", (d) => h("button", { class: "secondary", dataset: { letter: d.id }, onclick: () => redrive([d.id]) }, "Re-drive")]], letters));
  },
};
