// Workflow: a task board with a column per phase, each task's history and override audit, and grouped bugs.
import { api, badge, h, table, time } from "/console/static/console.js";

async function board({ params, navigate }) {
  const [sprints, bugs] = await Promise.all([api("/v1/sprints"), api("/v1/bugs?limit=50")]);
  const code = params[0] || (sprints[0] && sprints[0].sprint_code);
  const sprint = code ? await api(`/v1/sprints/${encodeURIComponent(code)}`) : null;
  const picker = h("p", {}, "Sprint: ", sprints.map((s) =>
    h("a", { href: `#/workflow/${encodeURIComponent(s.sprint_code)}`, style: "margin-right:10px",
             class: s.sprint_code === code ? "active" : "" }, `${s.sprint_code} (${s.tasks})`)));
  const columns = sprint ? h("div", { class: "columns", id: "board" }, Object.entries(sprint.tasks_by_phase).map(([phase, tasks]) =>
    h("div", { class: "column", dataset: { phase } }, h("h3", {}, `${phase} · ${tasks.length}`),
      tasks.map((t) => h("div", { class: "card link", dataset: { task: t.task_code }, onclick: () => navigate("workflow", "task", t.task_code) },
        h("strong", {}, t.task_code), " ", badge(t.type), h("div", {}, t.title)))))) : h("p", {}, "No sprint yet.");
  return h("div", {}, picker, columns,
    h("h2", {}, `Bugs (rules v${bugs.rules_version})`),
    h("div", { id: "bugs" }, table([
      ["count", (b) => h("strong", {}, b.occurrences)], ["class", (b) => badge(b.classification)],
      ["message", (b) => b.message], ["where", (b) => b.file ? `${b.file}:${b.line ?? ""}` : "–"],
      ["tasks", (b) => b.tasks.join(", ")], ["last seen", (b) => time(b.last_seen)],
    ], bugs.bugs)));
}

async function task(code) {
  const t = await api(`/v1/tasks/${encodeURIComponent(code)}`);
  const items = (list) => list.map((i) => i.item || i.name || JSON.stringify(i)).join(", ") || "–";
  return h("div", {},
    h("p", {}, h("a", { href: `#/workflow/${encodeURIComponent(t.sprint_code || "")}` }, "← board")),
    h("h2", {}, `${t.task_code} · ${t.title} `, badge(t.type), " ", badge(t.phase || "complete")),
    h("h2", {}, "Phases"),
    table([["phase", (p) => p.phase], ["started", (p) => time(p.started_at)], ["completed", (p) => time(p.completed_at)],
      ["how", (p) => p.overridden ? badge("overridden", "bad") : p.skipped ? badge("skipped") : p.completed_at ? badge("passed", "ok") : ""]], t.history),
    h("h2", {}, "Override audit"),
    h("div", { id: "overrides" }, table([["phase", (o) => o.phase], ["actor", (o) => o.actor], ["reason", (o) => o.reason],
      ["missing", (o) => items(o.missing)], ["at", (o) => time(o.at)]], t.overrides)),
    h("h2", {}, "Rejected attempts"),
    table([["command", (r) => r.command], ["reason", (r) => r.reason], ["missing", (r) => items(r.missing)],
      ["actor", (r) => r.actor], ["at", (r) => time(r.at)]], t.rejections),
    h("h2", {}, "Artifacts, commits, pull request"),
    table([["artifact", (a) => a.name], ["phase", (a) => a.phase || "–"], ["size", (a) => a.size], ["at", (a) => time(a.at)]], t.artifacts),
    table([["commit", (c) => c.short_hash], ["message", (c) => c.message], ["author", (c) => c.author], ["phase", (c) => c.phase || "–"]], t.commits),
    t.pull_request ? h("p", {}, h("a", { href: t.pull_request.url }, t.pull_request.url)) : "",
    h("h2", {}, "Bugs"),
    table([["count", (b) => b.occurrences], ["class", (b) => badge(b.classification)], ["message", (b) => b.message]], t.bugs));
}

export default {
  async render({ params, navigate }) {
    return params[0] === "task" ? task(params[1]) : board({ params, navigate });
  },
};
