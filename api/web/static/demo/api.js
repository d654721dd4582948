// How a partner's frontend talks to branchpay: the public GraphQL API, nothing else
// (../client.js: queries and mutations over HTTP, subscriptions over graphql-transport-ws).

export { Api, ApiError } from "../client.js";

// The demo partner key: in demo mode the service made one at start-up and hands it over here.
// A real partner's frontend gets its key from the partner's own backend, never from the HTML.
export async function demoKey() {
  const response = await fetch("/demo/session", { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.error ?? `the demo session answered ${response.status}`);
  }
  return body.key;
}
