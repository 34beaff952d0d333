// `/`: the registered models, searched and paged by the registry, with their serving state.
import { searchModels, serving } from "./api.js";
import { h, replace, when } from "./dom.js";
import { stateBadge } from "./state.js";

const PAGE_SIZE = 25;

export function showModels(main) {
  document.title = "Models · modelhost";
  const search = h("input", { type: "search", id: "search", placeholder: "Name contains…", autocomplete: "off" });
  const rows = h("tbody");
  const status = h("p", { class: "muted", role: "status" });
  const previous = h("button", { type: "button", onclick: () => go(page - 1) }, "Previous page");
  const next = h("button", { type: "button", onclick: () => go(page + 1) }, "Next page");
  const tokens = [null]; // the page token of each page seen, to go back
  let page = 0;
  let typing;

  replace(main,
    h("div", { class: "title" }, h("h1", {}, "Models"),
      h("a", { href: "/mlflow/#/models" }, "Open the registry in MLflow")),
    h("form", { role: "search", class: "search", onsubmit: (e) => { e.preventDefault(); restart(); } },
      h("label", { for: "search" }, "Search models"), search),
    h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["Name", "Serving", "Served versions", "Latest versions", "Last modified"].map((c) => h("th", { scope: "col" }, c)))),
      rows),
    h("div", { class: "pager" }, previous, next, status));
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(restart, 250);
  });
  restart();

  function restart() {
    tokens.length = 1;
    go(0);
  }

  async function go(to) {
    status.textContent = "Loading…";
    const asked = search.value.trim();
    try {
      const [found, endpoints] = await Promise.all([
        searchModels(asked, tokens[to], PAGE_SIZE),
        serving.list().catch(() => ({ endpoints: [] })),
      ]);
      if (asked !== search.value.trim()) return; // typed on meanwhile: a newer search runs
      page = to;
      tokens[to + 1] = found.next_page_token || null;
      const served = new Map((endpoints.endpoints || []).map((e) => [e.registered_model_name, e]));
      const models = found.registered_models || [];
      replace(rows, models.map((m) => row(m, served.get(m.name))));
      if (!models.length) rows.append(h("tr", {}, h("td", { colspan: "5", class: "muted" }, asked ? `No model's name contains “${asked}”.` : "No registered models yet.")));
      status.textContent = `Page ${page + 1}`;
      previous.disabled = page === 0;
      next.disabled = !tokens[page + 1];
    } catch (error) {
      status.textContent = "";
      replace(rows, h("tr", {}, h("td", { colspan: "5", class: "error", role: "alert" }, error.message)));
    }
  }
  return { stop: () => clearTimeout(typing) };
}

function row(model, endpoint) {
  const latest = (model.latest_versions || []).map((v) => `${v.version}${v.current_stage && v.current_stage !== "None" ? ` (${v.current_stage})` : ""}`);
  return h("tr", {},
    h("th", { scope: "row" }, h("a", { href: `/models/${encodeURIComponent(model.name)}` }, model.name)),
    h("td", {}, endpoint ? stateBadge(endpoint.state) : h("span", { class: "muted" }, "Off")),
    h("td", { class: "num" }, endpoint ? String(endpoint.served_versions ?? "–") : "–"),
    h("td", {}, latest.join(", ") || "–"),
    h("td", {}, model.last_updated_timestamp ? when(Number(model.last_updated_timestamp)) : "–"));
}
