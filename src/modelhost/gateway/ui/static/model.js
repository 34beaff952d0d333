// `/models/<name>`: a registered model's Serving page, live while it is visible.
import { getModel, modelhost, serving } from "./api.js";
import { h, replace, tabs } from "./dom.js";
import { eventTable } from "./events.js";
import { jobsTab } from "./jobs.js";
import { plots } from "./plots.js";
import { requestBox } from "./request.js";
import { settingsForm } from "./settings.js";
import { stateBadge } from "./state.js";
import { versionsTab } from "./versions.js";

const POLL_MS = 1500;

export function showModel(main, name, session) {
  document.title = `${name} · Serving · modelhost`;
  const mlflowLink = `/mlflow/#/models/${encodeURIComponent(name)}`;
  const status = h("div", { class: "status", role: "status", "aria-live": "polite" }, "Loading…");
  const controls = h("div", { class: "controls" });
  const problem = h("p", { class: "error", role: "alert" });
  const body = h("div");
  let level = session.auth ? "READ" : "MANAGE";
  let timer = null;
  let stopped = false;
  let parts = null; // built once serving is on: the request box and the tabs
  let wasServed = null;
  const jobs = jobsTab(); // a tab while serving is on; below the notice while it is off

  replace(main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumbs" }, h("a", { href: "/" }, "Models"), " / ", name),
    h("div", { class: "title" }, h("h1", {}, name), h("a", { href: mlflowLink }, "Open in MLflow")),
    h("section", { class: "card head", "aria-label": "Serving" },
      h("div", {}, h("span", { class: "muted" }, "Status"), status), controls),
    problem, body);

  const may = (needed) => ["READ", "EDIT", "MANAGE"].indexOf(level) >= ["READ", "EDIT", "MANAGE"].indexOf(needed);

  async function act(what, button) {
    problem.textContent = "";
    button.disabled = true;
    try {
      await what(name);
      await refresh();
    } catch (error) {
      problem.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  }

  function showControls(served) {
    if (!may("MANAGE")) return replace(controls);
    const button = served
      ? h("button", { type: "button", class: "danger", onclick: (e) => act(serving.disable, e.currentTarget) }, "Stop")
      : h("button", { type: "button", class: "primary", onclick: (e) => act(serving.enable, e.currentTarget) }, "Enable Serving");
    replace(controls, button);
  }

  function build() {
    const request = requestBox(name);
    const versions = versionsTab(name, may("MANAGE"));
    const events = h("div");
    const metrics = plots();
    const items = [
      { id: "versions", label: "Model Versions", panel: versions.el },
      { id: "events", label: "Model Events", panel: events },
      { id: "metrics", label: "Metrics", panel: metrics.el },
      { id: "jobs", label: "Batch Jobs", panel: jobs.el },
    ];
    let settings = null;
    if (may("MANAGE")) {
      settings = settingsForm(name, refresh);
      items.push({ id: "settings", label: "Cluster Settings", panel: settings.el });
    }
    const tabbed = tabs(items, () => refresh());
    replace(body, request.el, tabbed.el);
    return { request, versions, events, metrics, settings, tab: tabbed.current };
  }

  async function refresh() {
    let endpoint = null;
    try {
      endpoint = (await serving.status(name)).endpoint_status;
    } catch (error) {
      if (error.status !== 404) {
        replace(status, h("span", { class: "error" }, error.message));
        return;
      }
    }
    const served = endpoint !== null;
    if (served !== wasServed) {
      wasServed = served;
      showControls(served);
      parts = served ? build() : null;
      if (!served) {
        replace(body, h("p", { class: "card muted" }, "Serving is off for this model.", may("MANAGE") ? " Enable Serving starts its model server and serves every version that is not archived." : ""),
          h("section", { class: "card", "aria-label": "Batch Jobs" }, h("h2", {}, "Batch Jobs"), jobs.el));
      }
    }
    if (!served) {
      replace(status, h("strong", {}, "Off"));
      return showJobs();
    }
    replace(status, stateBadge(endpoint.state), " ", h("span", { class: "message" }, endpoint.state_message || ""));
    const tab = parts.tab();
    const [listed] = await Promise.all([
      serving.versions(name).catch((error) => ({ error })),
      tab === "events" ? showEvents(parts.events) : null,
      tab === "metrics" ? modelhost.series(name).then((s) => parts.metrics.update(s), (e) => parts.metrics.failed(e)) : null,
      tab === "jobs" ? showJobs() : null,
    ]);
    if (!listed.error) {
      parts.request.versions(listed.endpoint_versions || []);
      parts.versions.update(listed.endpoint_versions || []);
    }
    parts.settings?.update(endpoint.settings || {}, endpoint.engine);
  }

  function showJobs() {
    return modelhost.jobs(name).then((found) => jobs.update(found.jobs || []), (error) => jobs.failed(error));
  }

  async function showEvents(el) {
    try {
      const { events } = await serving.events(name);
      replace(el, eventTable(events || [], true));
    } catch (error) {
      replace(el, h("p", { class: "error" }, error.message));
    }
  }

  async function loop() {
    if (stopped) return;
    if (document.visibilityState === "visible") await refresh().catch((e) => (problem.textContent = e.message));
    if (!stopped) timer = setTimeout(loop, POLL_MS);
  }

  (async () => {
    if (session.auth) {
      level = await modelhost.permission(name).then((p) => p.permission_level, () => "READ");
    }
    if (level === "NONE") {
      replace(status, h("strong", {}, "Not yours to read"));
      problem.textContent = "You may not read this model. Ask one of its managers, or an admin, for a grant.";
      return;
    }
    const model = await getModel(name).catch(() => null);
    if (model === undefined) {
      replace(status, h("strong", {}, "No such model"));
      problem.textContent = `The registry has no model named “${name}” that you may read.`;
      return;
    }
    if (model?.description) main.querySelector(".title").after(h("p", { class: "description" }, model.description));
    loop();
  })();
  const wake = () => document.visibilityState === "visible" && refresh().catch(() => {});
  document.addEventListener("visibilitychange", wake);
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", wake);
    },
  };
}
