// The console's one way to the service: a GraphQL request with the signed-in key in the
// Authorization header (never a cookie, so no other site can make the browser send it).

const KEY_ITEM = "branchpay.admin.key";
const endpoint = new URL("/graphql", window.location.href).href;

export const session = {
  key: () => sessionStorage.getItem(KEY_ITEM),
  keep: (key) => sessionStorage.setItem(KEY_ITEM, key),
  forget: () => sessionStorage.removeItem(KEY_ITEM),
};

// What the API refused, as one sentence for the page (its error codes included).
export class Refused extends Error {
  constructor(errors) {
    const codes = errors.map((error) => error.extensions?.code).filter(Boolean);
    super(errors.map((error) => error.message).join("; "));
    this.codes = codes;
  }
}

export async function graphql(query, variables = {}) {
  const key = session.key();
  const response = await fetch(endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: JSON.stringify({ query, variables }),
    credentials: "omit",
  });
  const body = await response.json();
  if (body.errors?.length) {
    throw new Refused(body.errors);
  }
  return body.data;
}
