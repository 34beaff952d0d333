// Serving events, newest first, as the Model Events tab and a version's events show them.
import { h, when } from "./dom.js";

export function eventTable(events, withVersion) {
  if (!events.length) return h("p", { class: "muted" }, "No events yet.");
  // Several nodes share one state database: then each event says which node recorded it.
  const withNode = new Set(events.map((e) => e.node).filter(Boolean)).size > 1;
  const columns = ["Time", withVersion ? "Version" : null, "Event", "By", withNode ? "Node" : null];
  return h("table", { class: "list events" },
    h("thead", {}, h("tr", {}, columns.filter(Boolean).map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, events.map((e) => h("tr", {},
      h("td", { class: "time" }, when(e.timestamp)),
      withVersion ? h("td", {}, e.endpoint_version_name || "") : null,
      h("td", {}, e.message),
      h("td", {}, e.user || e.actor || ""),
      withNode ? h("td", {}, e.node || "") : null))));
}
