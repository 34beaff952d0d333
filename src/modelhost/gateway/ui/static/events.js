// Serving events, newest first, as the Model Events tab and a version's events show them.
import { h, when } from "./dom.js";

export function eventTable(events, withVersion) {
  if (!events.length) return h("p", { class: "muted" }, "No events yet.");
  return h("table", { class: "list events" },
    h("thead", {}, h("tr", {}, ["Time", withVersion ? "Version" : null, "Event", "By"].filter(Boolean).map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, events.map((e) => h("tr", {},
      h("td", { class: "time" }, when(e.timestamp)),
      withVersion ? h("td", {}, e.endpoint_version_name || "") : null,
      h("td", {}, e.message),
      h("td", {}, e.user || e.actor || "")))));
}
