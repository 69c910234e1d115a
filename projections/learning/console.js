// Learners: each learner's active intent, latest session, streak and stats (service tokens list the tenant's learners).
import { ApiError, api, badge, h, table, time } from "/console/static/console.js";

export default {
  async render() {
    let learners;
    try {
      learners = await api("/v1/learning/learners");
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) return h("p", { class: "error" }, error.detail);
      throw error;
    }
    return table([
      ["learner", (l) => l.user_id],
      ["topic", (l) => l.active_intent ? `${l.active_intent.topic} (${l.active_intent.depth})` : "no active intent"],
      ["latest session", (l) => l.latest_session
        ? [`W${l.latest_session.week}D${l.latest_session.day} ${l.latest_session.plan_title} `,
           l.latest_session.degraded_mode ? badge("degraded", "bad") : "", l.latest_session.completion ? badge("done", "ok") : ""]
        : "–"],
      ["streak", (l) => h("span", { class: "streak" }, `${l.learning_stats.current_streak_days} d`)],
      ["sessions", (l) => `${l.learning_stats.completed_sessions} / ${l.learning_stats.total_sessions}`],
      ["time", (l) => `${l.learning_stats.total_time_min} min`],
      ["confidence", (l) => l.learning_stats.average_confidence.toFixed(1)],
      ["next run", (l) => l.next_scheduled_run ? `${time(l.next_scheduled_run.estimated_time)} (${l.next_scheduled_run.timezone})` : "–"],
    ], learners);
  },
};
