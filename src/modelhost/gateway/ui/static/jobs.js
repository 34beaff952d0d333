// The Batch Jobs tab: a model's batch jobs, newest first, with their progress.
import { h, replace, when } from "./dom.js";
import { stateBadge } from "./state.js";

const COLUMNS = ["Job", "Version", "State", "Rows", "Rows/s", "Failed rows", "Submitted", "Started", "Finished", "By"];

export function jobsTab() {
  const el = h("div", { class: "jobs" });
  let shown = "";

  function update(jobs) {
    const key = JSON.stringify(jobs);
    if (key === shown) return;
    shown = key;
    if (!jobs.length) {
      return replace(el, h("p", { class: "muted" }, "No batch job yet. Start one with `modelhost batch submit`, or POST /api/2.0/modelhost/batch/jobs."));
    }
    replace(el, h("table", { class: "list" },
      h("thead", {}, h("tr", {}, COLUMNS.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, jobs.map(row))));
  }

  function row(job) {
    const total = job.rows_total === null || job.rows_total === undefined ? "?" : job.rows_total.toLocaleString();
    const alias = job.requested_model_uri !== job.model_uri ? h("div", { class: "message" }, job.requested_model_uri) : null;
    return h("tr", { "data-job": job.job_id },
      h("th", { scope: "row" }, h("code", {}, job.job_id), h("div", { class: "message" }, `${job.input} → ${job.output}`)),
      h("td", {}, job.version, alias),
      h("td", {}, stateBadge(job.state), job.message ? h("div", { class: "message" }, job.message) : null),
      h("td", {}, `${job.rows_done.toLocaleString()} / ${total}`),
      h("td", {}, job.state === "RUNNING" || job.rows_per_s ? Math.round(job.rows_per_s).toLocaleString() : "–"),
      h("td", {}, job.rows_failed ? h("span", { class: "error" }, job.rows_failed.toLocaleString()) : "0",
        job.errors_file ? h("div", { class: "message" }, job.errors_file) : null),
      h("td", { class: "time" }, when(job.created_at)),
      h("td", { class: "time" }, job.started_at ? when(job.started_at) : "–"),
      h("td", { class: "time" }, job.finished_at ? when(job.finished_at) : "–"),
      h("td", {}, job.submitter || "–"));
  }

  function failed(error) {
    shown = "";
    replace(el, h("p", { class: "error", role: "alert" }, error.message));
  }

  return { el, update, failed };
}
