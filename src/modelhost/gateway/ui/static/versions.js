// The Model Versions tab: each served version, its refs and URLs, its logs and events.
import { invocationsPath, serving } from "./api.js";
import { copyable, h, replace } from "./dom.js";
import { eventTable } from "./events.js";
import { stateBadge } from "./state.js";

export function versionsTab(name, mayManage) {
  const rows = h("div", { class: "versions" });
  const detail = h("div", { class: "detail" });
  const el = h("div", {}, rows, detail);
  let shown = "";
  let open = null; // {version, what}

  function update(list) {
    const key = JSON.stringify(list);
    if (key === shown) return;
    shown = key;
    if (!list.length) return replace(rows, h("p", { class: "muted" }, "No version is served yet: the controller serves every version that is not archived."));
    replace(rows, h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["Version", "Stage", "Aliases", "State", "URLs", ""].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, list.map(row))));
  }

  function row(v) {
    const version = v.endpoint_version_name;
    const url = (ref) => location.origin + invocationsPath(name, ref);
    const urls = [
      copyable(url(version), `URL of version ${version}`),
      ...(v.stages || []).map((s) => copyable(url(s), `URL of stage ${s}`)),
      ...(v.aliases || []).map((a) => copyable(url(a), `URL of alias ${a}`)),
    ];
    return h("tr", { "data-version": version },
      h("th", { scope: "row" }, version),
      h("td", {}, (v.stages || []).join(", ") || "–"),
      h("td", {}, (v.aliases || []).map((a) => `@${a}`).join(", ") || "–"),
      h("td", {}, stateBadge(v.state), v.state_message ? h("div", { class: "message" }, v.state_message) : null),
      h("td", { class: "urls" }, urls),
      h("td", { class: "actions" },
        mayManage ? h("button", { type: "button", class: "small", "aria-label": `Logs, version ${version}`, onclick: () => show(version, "logs") }, "Logs") : null,
        h("button", { type: "button", class: "small", "aria-label": `Version Events, version ${version}`, onclick: () => show(version, "events") }, "Version Events")));
  }

  async function show(version, what) {
    open = { version, what };
    const title = what === "logs" ? `Logs of version ${version}` : `Events of version ${version}`;
    const content = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    replace(detail, h("section", { class: "card", "aria-label": title },
      h("div", { class: "title" }, h("h3", {}, title),
        h("button", { type: "button", class: "small", onclick: () => show(version, what) }, "Refresh"),
        h("button", { type: "button", class: "small", onclick: () => { open = null; replace(detail); } }, "Close")),
      content));
    try {
      if (what === "logs") {
        const { logs } = await serving.logs(name, version);
        replace(content, h("pre", { class: "logs", tabindex: "0" }, logs || "No log lines about this version yet."));
      } else {
        const { events } = await serving.events(name);
        replace(content, eventTable((events || []).filter((e) => e.endpoint_version_name === version), false));
      }
    } catch (error) {
      replace(content, h("p", { class: "error", role: "alert" }, error.message));
    }
  }

  return { el, update, open: () => open };
}
