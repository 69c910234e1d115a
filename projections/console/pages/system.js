// System: roles, lag per domain, dead letters with their reasons and a re-drive button (service tokens).
import { ApiError, api, badge, h, table, time } from "/console/static/console.js";

const STATES = { up: "ok", restarting: "warn", down: "bad" };

/** Which process refused a record: the worker (its fold or effects of a domain) or the projector (read models). */
function stage(name) {
  const [kind, domain] = name.split(":");
  if (kind === "fold" || kind === "effects") return `worker · ${kind} ${domain || ""}`.trim();
  if (kind === "projector") return "projector · read models";
  return name;
}

/** One row per failed record: a record every stage refused (worker and projector) is one record, not two. */
function byRecord(letters) {
  const records = new Map();
  for (const letter of letters) {
    if (!records.has(letter.id)) records.set(letter.id, { id: letter.id, letters: [] });
    records.get(letter.id).letters.push(letter);
  }
  return [...records.values()];
}

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
      table([["role", (r) => r.role], ["state", (r) => badge(r.state, STATES[r.state] || "bad")],
        ["restarts", (r) => r.restarts],
        ["last exit", (r) => r.last_exit_at ? `code ${r.last_exit_code} at ${time(r.last_exit_at)}` : "–"],
        ["detail", (r) => r.detail]], status.roles),
      h("h2", {}, "Lag per domain"),
      table([["domain", (d) => d.domain], ["records", (d) => d.records], ["worker lag", (d) => d.worker_lag],
        ["projector lag", (d) => d.projector_lag], ["last event", (d) => time(d.last_event_at)]], status.domains),
      h("h2", {}, `Dead letters (${status.dead_letters})`), result,
      table([["record", (r) => r.id],
        ["refused by", (r) => r.letters.map((d) => h("div", { class: "letter", dataset: { stage: d.stage } },
          badge(stage(d.stage), "stage"), " ", d.reason, h("span", { class: "label" }, ` · ${time(d.failed_at)}`)))],
        ["", (r) => h("button", { class: "secondary", dataset: { letter: r.id }, onclick: () => redrive([r.id]) }, "Re-drive")]],
      byRecord(letters)));
  },
};
