// Trace: the causal chain around any id (event, correlation, WhatsApp message, task code, execution), hop by hop.
import { api, gap, h, time } from "/console/static/console.js";

export default {
  async render({ params, navigate }) {
    const input = h("input", { name: "id", placeholder: "event id, correlation id, wamid, task code, execution id…", value: params[0] || "" });
    const form = h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); navigate("trace", input.value.trim()); } },
      input, h("button", { type: "submit" }, "Trace"));
    if (!params[0]) return h("div", {}, form);
    const found = await api(`/v1/trace/${encodeURIComponent(params[0])}`);
    // A hop is indented under its cause; when the hop it hangs under is another one, its cause is named.
    const types = new Map(found.hops.map((hop) => [hop.event_id, hop.type]));
    const above = [];  // the hops the next one may hang under, shallowest first
    const cause = (hop) => {
      while (above.length && above[above.length - 1].depth >= hop.depth) above.pop();
      const under = above[above.length - 1];
      above.push(hop);
      if (!types.has(hop.causation_id) || (under && under.event_id === hop.causation_id)) return "";
      return h("span", { class: "gap cause" }, `caused by ${types.get(hop.causation_id)}`);
    };
    return h("div", {}, form,
      h("ol", { class: "timeline" }, found.hops.map((hop) =>
        h("li", { style: `margin-left:${hop.depth * 18}px`, dataset: { type: hop.type } },
          h("strong", {}, hop.type), h("span", { class: "gap" }, gap(hop.gap_ms)), cause(hop),
          h("div", { class: "label" }, `${time(hop.occurred_at)} · ${hop.stream_id} · ${hop.actor}${hop.summary ? " · " + hop.summary : ""}`)))),
      found.truncated ? h("p", { class: "label" }, "Only the first events are shown.") : "");
  },
};
