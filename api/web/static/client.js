// How a page of ours, like a partner's frontend, talks to branchpay: the public GraphQL API,
// nothing else. Queries and mutations are POST /graphql with the key in the Authorization
// header (never a cookie, so no other site can make the browser send it); a subscription is a
// WebSocket speaking graphql-transport-ws, the key in connection_init. The storefront
// (demo/) and the console (admin*.js) both use it.

export class ApiError extends Error {
  constructor(errors) {
    super(errors.map((error) => error.message).join("; "));
    this.codes = errors.map((error) => error.extensions?.code ?? "ERROR");
  }
}

export class Api {
  constructor(key) {
    this.key = key;
  }

  // The `data` of a query or mutation; errors (a bad key, a store outage...) are thrown.
  async request(query, variables = {}) {
    const response = await fetch("/graphql", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.key}` },
      body: JSON.stringify({ query, variables }),
      credentials: "omit",
    });
    const body = await response.json();
    if (body.errors?.length) {
      throw new ApiError(body.errors);
    }
    return body.data;
  }

  // Follows a subscription; returns a function that stops it.
  subscribe(query, variables, { next, error, complete }) {
    const url = new URL("/graphql", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url, "graphql-transport-ws");
    let done = false;
    const send = (message) => socket.send(JSON.stringify(message));
    socket.addEventListener("open", () => {
      send({ type: "connection_init", payload: { Authorization: `Bearer ${this.key}` } });
    });
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "connection_ack") {
        send({ id: "1", type: "subscribe", payload: { query, variables } });
      } else if (message.type === "ping") {
        send({ type: "pong" });
      } else if (message.type === "next") {
        if (message.payload.errors?.length) {
          error(new ApiError(message.payload.errors));
        }
        if (message.payload.data) {
          next(message.payload.data);
        }
      } else if (message.type === "error") {
        done = true;
        error(new ApiError(message.payload));
      } else if (message.type === "complete") {
        done = true;
        socket.close(1000);
        complete();
      }
    });
    socket.addEventListener("close", (event) => {
      if (!done) {
        done = true;
        error(new Error(`the live connection closed (${event.code} ${event.reason})`));
      }
    });
    return () => {
      done = true;
      socket.close(1000);
    };
  }
}
