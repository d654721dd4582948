// The console's one way to the service: ./client.js with the signed-in key, which this tab
// keeps in sessionStorage only.

import { Api } from "./client.js";

export { ApiError } from "./client.js";

const KEY_ITEM = "branchpay.admin.key";

export const session = {
  key: () => sessionStorage.getItem(KEY_ITEM),
  keep: (key) => sessionStorage.setItem(KEY_ITEM, key),
  forget: () => sessionStorage.removeItem(KEY_ITEM),
};

// The `data` of a query or mutation with the signed-in key; what the API refused is thrown
// as an ApiError carrying its error codes.
export function graphql(query, variables = {}) {
  return new Api(session.key()).request(query, variables);
}
