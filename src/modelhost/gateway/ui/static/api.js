// The gateway's API as the page calls it: JSON in and out, errors carrying MLflow's message.

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const SERVING = "/api/2.0/preview/mlflow/endpoints/";
const MODELHOST = "/api/2.0/modelhost/";

export async function call(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const answer = await fetch(path, init);
  const text = await answer.text();
  let data;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { message: text };
  }
  if (!answer.ok) {
    // Signed out meanwhile (the cookie is gone with the browser session): ask again.
    if (answer.status === 401 && !path.startsWith(MODELHOST + "session")) window.dispatchEvent(new Event("modelhost:signed-out"));
    throw new ApiError(answer.status, data.message || `${answer.status} ${answer.statusText}`, data.error_code);
  }
  return data;
}

const get = (path, query) => call("GET", query ? `${path}?${new URLSearchParams(query)}` : path);
const named = (name, more = {}) => ({ registered_model_name: name, ...more });

export const serving = {
  list: () => get(SERVING + "list"),
  status: (name) => get(SERVING + "get-status", named(name)),
  versions: (name) => get(SERVING + "list-versions", named(name)),
  events: (name) => get(SERVING + "events", named(name)),
  logs: (name, version) => get(SERVING + "logs", named(name, { endpoint_version_name: version })),
  enable: (name) => call("POST", SERVING + "enable", named(name)),
  disable: (name) => call("POST", SERVING + "disable", named(name)),
  updateSettings: (name, settings) => call("POST", SERVING + "update-settings", named(name, settings)),
};

export const modelhost = {
  session: () => get(MODELHOST + "session"),
  signIn: (token) => call("POST", MODELHOST + "session", { token }),
  signOut: () => call("DELETE", MODELHOST + "session"),
  permission: (name) => get(MODELHOST + "models/permission", named(name)),
  example: (name, version) => get(MODELHOST + "models/example", named(name, { version })),
  series: (name) => get(MODELHOST + "metrics/series", named(name)),
  jobs: (name) => get(MODELHOST + "batch/jobs", named(name)),
};

export function searchModels(text, pageToken, maxResults = 25) {
  const query = { max_results: maxResults, order_by: "name ASC" };
  // MLflow's filter language: quotes in a name are doubled.
  if (text) query.filter = `name ILIKE '%${text.replaceAll("'", "''")}%'`;
  if (pageToken) query.page_token = pageToken;
  return get("/ajax-api/2.0/mlflow/registered-models/search", query);
}

export function getModel(name) {
  return get("/ajax-api/2.0/mlflow/registered-models/search", {
    filter: `name = '${name.replaceAll("'", "''")}'`,
    max_results: 1,
  }).then((found) => (found.registered_models || [])[0]);
}

// What a request to a served model answers, whatever its status: the page shows them all.
export async function invoke(name, ref, body) {
  const url = invocationsPath(name, ref);
  const started = performance.now();
  const answer = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body,
  });
  const text = await answer.text();
  return {
    status: answer.status,
    latencyMs: performance.now() - started,
    version: answer.headers.get("x-modelhost-version"),
    text,
  };
}

export function invocationsPath(name, ref) {
  return `/model/${encodeURIComponent(name)}/${encodeURIComponent(ref)}/invocations`;
}
