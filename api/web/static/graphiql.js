// Starts GraphiQL and its explorer (loaded by the page from this service, never a CDN) with
// the API key the user gives: every request, and a subscription's connection_init, carries it
// as `Authorization: Bearer <key>`. The key stays in this tab's sessionStorage only.
/* global React, ReactDOM, GraphiQL, GraphiQLPluginExplorer */

const KEY_ITEM = "branchpay.graphiql.key";
const DEFAULT_QUERY = `# Give your API key above, then run this query (Ctrl-Enter or the play button).
{
  branches {
    code
    name
  }
}
`;

const endpoint = new URL("/graphql", window.location.href);
const socket = new URL(endpoint);
socket.protocol = endpoint.protocol === "https:" ? "wss:" : "ws:";

// Libraries that add a <style> element (GraphiQL's dialogs) take this answer's CSP nonce.
globalThis.__webpack_nonce__ = document.querySelector('meta[name="style-nonce"]').content;

const NO_KEY = {
  errors: [{ message: "Give your API key above first: the API answers only requests that carry one." }],
};

function fetcherFor(key) {
  const authorization = key ? { Authorization: `Bearer ${key}` } : {};
  const fetcher = GraphiQL.createFetcher({
    url: endpoint.href,
    subscriptionUrl: socket.href,
    headers: authorization,
    wsConnectionParams: authorization,
  });
  if (key) {
    return fetcher;
  }
  // Without a key, say so instead of sending what would be refused (401), unless the
  // Headers tab carries an Authorization header of its own.
  return (params, options) => {
    const headers = Object.keys(options?.headers ?? {}).map((name) => name.toLowerCase());
    return headers.includes("authorization") ? fetcher(params, options) : Promise.resolve(NO_KEY);
  };
}

const explorer = GraphiQLPluginExplorer.explorerPlugin();
const root = ReactDOM.createRoot(document.getElementById("graphiql"));

function render(key) {
  // A new fetcher makes GraphiQL read the schema again, now with the key.
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcherFor(key),
      plugins: [explorer],
      defaultQuery: DEFAULT_QUERY,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
      inputValueDeprecation: true,
    }),
  );
}

const input = document.getElementById("api-key");
const useKey = document.getElementById("use-key");
const forget = document.getElementById("forget-key");
const status = document.getElementById("key-status");

function use(key) {
  if (key) {
    sessionStorage.setItem(KEY_ITEM, key);
    status.textContent = "Using the key you gave (kept in this tab only).";
  } else {
    sessionStorage.removeItem(KEY_ITEM);
    status.textContent = "No key: every query needs one.";
  }
  forget.hidden = !key;
  input.value = "";
  render(key);
}

function useGiven() {
  const key = input.value.trim();
  if (key) {
    use(key);
  } else {
    status.textContent = "Paste a key into the field first.";
  }
}

useKey.addEventListener("click", useGiven);
input.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    useGiven();
  }
});
forget.addEventListener("click", () => use(""));

const kept = sessionStorage.getItem(KEY_ITEM);
if (kept) {
  use(kept);
} else {
  render("");
}
