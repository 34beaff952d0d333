// Cluster Settings: the model server's settings, saved with update-settings.
import { serving } from "./api.js";
import { h, replace } from "./dom.js";

const NUMBERS = [
  ["workers", "Worker processes", "Processes of the model server, each holding every version.", 1],
  ["max_batch_size", "Max batch size (rows)", "The most rows one predict call gathers from concurrent requests.", 1],
  ["max_batch_delay_ms", "Max batch delay (ms)", "How long a batch may wait for more requests.", 0],
  ["timeout_s", "Request timeout (s)", "A request that takes longer gets 504.", 1],
  ["scale_to_zero_after", "Scale to zero after (s)", "Idle this long, its servers stop; the next request wakes it. Empty: never.", 1],
  // Where replicas are placed on a Ray cluster: shown only when modelhost runs with --engine ray.
  ["cpus", "CPUs per replica", "Logical CPUs each replica reserves on a cluster node.", 0.1, "0.1"],
  ["memory_mb", "Memory per replica (MB)", "Memory each replica reserves on a cluster node; 0 reserves none.", 0],
  ["min_replicas", "Min replicas", "Replicas of the model server that always run, each holding every version.", 1],
  ["max_replicas", "Max replicas", "The most replicas it grows to under load; at least Min replicas.", 1],
];
const CLUSTER = new Set(["cpus", "memory_mb", "min_replicas", "max_replicas"]);
// Empty means off (null), not "keep what it is".
const NULLABLE = new Set(["scale_to_zero_after"]);
const MANAGERS = [
  ["auto", "auto: modelhost's environment when it satisfies the model, else one built with uv"],
  ["local", "local: always modelhost's own environment"],
  ["uv", "uv: always an environment built from the model's requirements"],
];

export function settingsForm(name, saved) {
  const fields = {};
  const cluster = []; // the fields' rows that apply only on a Ray cluster
  let onCluster = false; // until the platform says it runs on one
  const manager = h("select", { id: "setting-env_manager", name: "env_manager" },
    MANAGERS.map(([value, label]) => h("option", { value }, label)));
  const tags = h("tbody");
  const note = h("p", { role: "status", class: "saved" });
  const save = h("button", { type: "submit", class: "primary" }, "Save");
  let dirty = false;
  let current = "";

  const el = h("form", {
    class: "settings",
    "aria-label": "Cluster Settings",
    oninput: () => (dirty = true),
    onsubmit: async (e) => {
      e.preventDefault();
      note.textContent = "";
      note.className = "saved";
      save.disabled = true;
      try {
        await serving.updateSettings(name, read());
        dirty = false;
        current = "";
        note.textContent = "Saved. The model's servers are replaced with ones that use these settings; see Model Events.";
        await saved();
      } catch (error) {
        note.className = "error";
        note.textContent = error.message;
      } finally {
        save.disabled = false;
      }
    },
  },
  h("div", { class: "field" }, h("label", { for: "setting-env_manager" }, "Environment manager"), manager),
  NUMBERS.map(([key, label, help, min, step = "1"]) => {
    fields[key] = h("input", { type: "number", id: `setting-${key}`, name: key, min: String(min), step, "aria-describedby": `help-${key}` });
    const row = h("div", { class: "field" }, h("label", { for: `setting-${key}` }, label), fields[key], h("small", { id: `help-${key}`, class: "muted" }, help));
    if (CLUSTER.has(key)) {
      row.style.display = "none"; // .field's grid would show a [hidden] row
      cluster.push(row);
    }
    return row;
  }),
  h("fieldset", {}, h("legend", {}, "Tags"),
    h("table", { class: "tags" }, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Key"), h("th", { scope: "col" }, "Value"), h("th", {}))), tags),
    h("button", { type: "button", class: "small", onclick: () => { tags.append(tagRow("", "")); dirty = true; tags.lastChild.querySelector("input").focus(); } }, "Add tag")),
  h("div", { class: "row" }, save, note));

  function tagRow(key, value) {
    const row = h("tr", { class: "tag" },
      h("td", {}, h("input", { type: "text", value: key, "aria-label": "Tag key", class: "tag-key" })),
      h("td", {}, h("input", { type: "text", value: value, "aria-label": "Tag value", class: "tag-value" })),
      h("td", {}, h("button", { type: "button", class: "small", onclick: () => { row.remove(); dirty = true; } }, "Delete")));
    return row;
  }

  function read() {
    const settings = { env_manager: manager.value };
    for (const [key] of NUMBERS) {
      if (CLUSTER.has(key) && !onCluster) continue; // the local engine refuses them
      if (fields[key].value !== "") settings[key] = Number(fields[key].value);
      else if (NULLABLE.has(key)) settings[key] = null;
    }
    settings.tags = [...tags.querySelectorAll("tr")]
      .map((r) => ({ key: r.querySelector(".tag-key").value.trim(), value: r.querySelector(".tag-value").value }))
      .filter((t) => t.key);
    return settings;
  }

  // What the platform holds, unless the user is editing: their edits are not overwritten.
  // `engine`: what runs the model servers (local, ray); the cluster fields apply on ray only.
  function update(settings, engine) {
    onCluster = engine === "ray";
    for (const row of cluster) row.style.display = onCluster ? "" : "none";
    const key = JSON.stringify(settings);
    if (dirty || key === current) return;
    current = key;
    manager.value = settings.env_manager || "auto";
    for (const [k] of NUMBERS) fields[k].value = settings[k] ?? "";
    replace(tags, (settings.tags || []).map((t) => tagRow(t.key, t.value)));
  }

  return { el, update };
}
