// The Serving page: `/` lists the registered models, `/models/<name>` is one model's page.
import { modelhost } from "./api.js";
import { h, replace } from "./dom.js";
import { showModel } from "./model.js";
import { showModels } from "./models.js";

const main = document.getElementById("main");
const who = document.getElementById("who");
let stopPage = () => {};

// MLflow's UI links to runs as `<tracking uri>/#/experiments/...`: that UI lives at /mlflow/.
if (location.pathname === "/" && location.hash.startsWith("#/")) {
  location.replace(`/mlflow/${location.hash}`);
} else {
  start();
}

window.addEventListener("modelhost:signed-out", () => start());

async function start() {
  stopPage();
  let session;
  try {
    session = await modelhost.session();
  } catch (error) {
    // 401: auth is on and this browser is not signed in; 404: a gateway without the route.
    if (error.status === 401) session = { auth: true, user: null, admin: false };
    else if (error.status === 404) session = { auth: false, user: null, admin: true };
    else return replace(main, h("p", { class: "error", role: "alert" }, error.message));
  }
  showWho(session);
  if (session.auth && !session.user) return signIn();
  const path = decodeURIComponent(location.pathname);
  const page = path.startsWith("/models/") && path.length > "/models/".length
    ? showModel(main, path.slice("/models/".length), session)
    : showModels(main);
  stopPage = page.stop;
}

function showWho(session) {
  if (!session.auth) return replace(who, h("span", { class: "muted" }, "Auth off"));
  if (!session.user) return replace(who);
  replace(who,
    h("span", {}, "Signed in as ", h("strong", {}, session.user)),
    h("button", { type: "button", class: "small", onclick: signOut }, "Sign out"));
}

async function signOut() {
  try {
    await modelhost.signOut();
  } finally {
    start();
  }
}

// The token goes to the gateway once; the browser keeps the session cookie it gives back (until
// it is closed), so the token is never stored by the page nor put in a URL.
function signIn() {
  document.title = "Sign in · modelhost";
  const token = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true });
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", {
    class: "card sign-in",
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = "";
      try {
        await modelhost.signIn(token.value);
        token.value = "";
        start();
      } catch (failed) {
        error.textContent = failed.message;
      }
    },
  },
  h("h1", {}, "Sign in"),
  h("p", {}, "modelhost has auth on. Sign in with an access token (an admin creates one with ",
    h("code", {}, "modelhost tokens create --user NAME"), ")."),
  h("label", { for: "token" }, "Access token"), token,
  h("button", { type: "submit", class: "primary" }, "Sign in"),
  error);
  replace(main, form);
  token.focus();
}
