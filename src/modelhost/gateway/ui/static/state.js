// Endpoint and version states as users know them from the managed service.
import { h } from "./dom.js";

const LABELS = { PENDING: "Pending", READY: "Ready", FAILED: "Failed", LOADING: "Pending", GONE: "Stopped", SCALED_TO_ZERO: "Asleep" };

export function stateLabel(state) {
  const short = String(state || "").replace(/^(ENDPOINT_STATE_|VERSION_STATE_|ENDPOINT_VERSION_STATE_)/, "");
  return LABELS[short] || short.charAt(0) + short.slice(1).toLowerCase();
}

export function stateBadge(state) {
  const label = stateLabel(state);
  return h("span", { class: `badge ${label.toLowerCase()}` }, label);
}
