// Requests, latency and errors per version over the last 15 minutes, drawn with uPlot.
import { h, replace } from "./dom.js";

const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bc4c00", "#0a7ea4", "#cf222e"];
const CHARTS = [
  { title: "Requests per second", series: [["requests_per_s", "req/s"]] },
  { title: "Latency (ms)", series: [["p50_ms", "p50"], ["p99_ms", "p99"]] },
  { title: "Errors per second (status ≥ 400)", series: [["errors_per_s", "errors/s"]] },
];

export function plots() {
  const note = h("p", { class: "muted", role: "status" });
  const boxes = CHARTS.map((c) => h("figure", { class: "plot" }, h("figcaption", {}, c.title), h("div")));
  const el = h("div", { class: "plots" }, note, boxes);
  const drawn = CHARTS.map(() => null); // {chart, key}

  function update(series) {
    const versions = Object.keys(series.versions || {}).sort((a, b) => Number(a) - Number(b));
    note.textContent = versions.length
      ? `Last 15 minutes, sampled every ${series.interval_s} s by the gateway.`
      : "No requests in the last 15 minutes.";
    // uPlot draws series over one shared time axis: every version's samples on the union of times.
    const times = [...new Set(versions.flatMap((v) => series.versions[v].map((p) => p.t)))].sort((a, b) => a - b);
    const at = new Map(times.map((t, i) => [t, i]));
    CHARTS.forEach((chart, i) => {
      const lines = [];
      const data = [times];
      versions.forEach((version, vi) => {
        for (const [field, label] of chart.series) {
          const column = new Array(times.length).fill(null);
          for (const p of series.versions[version]) column[at.get(p.t)] = p[field];
          data.push(column);
          lines.push({ label: `v${version} ${label}`, stroke: COLORS[vi % COLORS.length], width: 2, dash: field === "p99_ms" ? [6, 4] : undefined, spanGaps: false });
        }
      });
      draw(i, lines, data);
    });
  }

  function draw(i, lines, data) {
    const key = lines.map((l) => l.label).join();
    const box = boxes[i].lastChild;
    if (drawn[i] && drawn[i].key === key) return drawn[i].chart.setData(data);
    drawn[i]?.chart.destroy();
    replace(box);
    if (typeof uPlot === "undefined") return replace(box, h("p", { class: "error" }, "The plotting library did not load."));
    const width = Math.max(280, Math.min(box.clientWidth || 420, 560));
    const chart = new uPlot({
      width, height: 180,
      series: [{}, ...lines],
      axes: [{}, { size: 50 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(max || 0, 1)] } },
      legend: { live: false },
    }, data, box);
    drawn[i] = { chart, key };
  }

  function failed(error) {
    note.textContent = error.message;
  }

  return { el, update, failed };
}
