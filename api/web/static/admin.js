// The branch admin console: sign in with an API key, then every section asks the GraphQL
// API with that key. What the key may not see, the API refuses and the section says so.

import { ApiError, graphql, session } from "./admin-api.js";
import { beijing, beijingDayStart, el, fenOf, fill, idempotencyKey, table, yuan } from "./dom.js";

const $ = (id) => document.getElementById(id);
const ORDER_STATUSES = ["PENDING_PAYMENT", "PAID", "PARTIALLY_REFUNDED", "REFUNDED", "CANCELLED", "EXPIRED"];

function refusal(error) {
  if (error instanceof ApiError && error.codes.includes("FORBIDDEN")) {
    return `This key may not see this: the API refused (${error.message}).`;
  }
  return `The API refused: ${error.message}`;
}

function say(container, error) {
  fill(container, el("p", { class: "refused", role: "alert" }, refusal(error)));
}

function userErrors(errors) {
  return errors.map((error) => `${error.code}: ${error.message}`).join("; ");
}

// --- Sign in and out ---------------------------------------------------------------------

async function signIn(key) {
  session.keep(key);
  $("api-key").value = "";
  try {
    const data = await graphql("{ branches { code name } configStatus { ok } }");
    showConsole(data.branches);
  } catch (error) {
    $("notice").textContent =
      error instanceof ApiError && error.codes.includes("UNAUTHENTICATED")
        ? "That key was not accepted: check it, or create one with branchpay keys create."
        : `This key sees no admin data: ${refusal(error)}`;
    if (error instanceof ApiError && error.codes.includes("UNAUTHENTICATED")) {
      session.forget();
      return;
    }
    showSignedIn("a key without admin rights");
  }
}

function showSignedIn(what) {
  $("sign-in").hidden = true;
  $("signed-in").hidden = false;
  $("who").textContent = `Signed in with ${what} (kept in this tab only).`;
}

function signOut() {
  session.forget();
  $("sign-in").hidden = false;
  $("signed-in").hidden = true;
  $("sections").hidden = true;
  $("console").hidden = true;
  for (const id of ["config-status", "branches", "discrepancies", "mismatches", "endpoints", "audit-log"]) {
    fill($(id));
  }
  fill($("orders-table").tBodies[0]);
  $("order-detail").hidden = true;
  $("notice").textContent = "Signed out: the key is forgotten.";
}

function showConsole(branches) {
  const codes = branches.map((branch) => branch.code);
  showSignedIn(`a key for ${codes.join(", ") || "no branch"}`);
  $("notice").textContent = "";
  $("sections").hidden = false;
  $("console").hidden = false;
  const select = $("filter-branch");
  fill(select, el("option", { value: "" }, "all"), branches.map((b) => el("option", { value: b.code }, `${b.code} · ${b.name}`)));
  loadProviders();
  loadOrders();
  loadDiscrepancies();
  loadMismatches();
  loadWebhooks();
  loadAudit();
}

// --- Providers and configuration ---------------------------------------------------------

const PROVIDERS = `{
  configStatus { ok path loadedAt generation error }
  branches { code name providers { name displayName methods } }
}`;
const SETTINGS = `query ($branch: String!) { providerSettings(branch: $branch) { provider enabled } }`;
const SET_ENABLED = `mutation ($input: SetProviderEnabledInput!) {
  setProviderEnabled(input: $input) { changed command warning userErrors { code message } }
}`;

async function loadProviders() {
  try {
    const data = await graphql(PROVIDERS);
    const status = data.configStatus;
    fill(
      $("config-status"),
      el("dt", {}, "plugins.toml"), el("dd", {}, status.path),
      el("dt", {}, "Last reload"), el("dd", {}, `${beijing(status.loadedAt)}, load ${status.generation}`),
      el("dt", {}, "On disk"),
      el("dd", { class: status.ok ? "ok" : "refused" }, status.ok ? "in force" : `refused edit: ${status.error}`),
    );
    const blocks = [];
    for (const branch of data.branches) {
      const settings = (await graphql(SETTINGS, { branch: branch.code })).providerSettings;
      blocks.push(branchBlock(branch, settings));
    }
    fill($("branches"), blocks);
  } catch (error) {
    say($("branches"), error);
  }
}

function branchBlock(branch, settings) {
  const inForce = new Map(branch.providers.map((provider) => [provider.name, provider]));
  const note = el("p", { class: "note", role: "status" });
  const rows = settings.map((setting) => {
    const provider = inForce.get(setting.provider);
    const toggle = el(
      "button",
      {
        type: "button",
        "data-provider": setting.provider,
        onclick: () => setEnabled(branch.code, setting.provider, !setting.enabled, note),
      },
      setting.enabled ? "Disable" : "Enable",
    );
    return [
      setting.provider,
      provider ? provider.displayName : "",
      setting.enabled ? (provider ? "enabled" : "enabled (reloading)") : "disabled",
      provider ? provider.methods.join(", ") : "",
      toggle,
    ];
  });
  return el(
    "article",
    { class: "branch", "data-branch": branch.code },
    el("h3", {}, `${branch.code} · ${branch.name}`),
    table(["Provider", "Name", "State", "Methods", ""], rows),
    note,
  );
}

async function setEnabled(branch, provider, enabled, note) {
  note.textContent = "Saving…";
  try {
    const input = { branch, provider, enabled };
    const result = (await graphql(SET_ENABLED, { input })).setProviderEnabled;
    if (result.userErrors.length) {
      fill(note);
      if (result.userErrors.some((error) => error.code === "CONFIG_EDITING_OFF")) {
        note.append(
          "This service does not edit plugins.toml. Run on its host: ",
          el("code", { class: "command" }, result.command),
        );
      } else {
        note.textContent = `Refused: ${userErrors(result.userErrors)}`;
      }
      return;
    }
    note.textContent = `${provider} ${enabled ? "enabled" : "disabled"} in plugins.toml; the service applies it within 2 s.${result.warning ? ` Warning: ${result.warning}.` : ""}`;
    // The watcher applies the edit within 2 s: show the branch as it is then.
    setTimeout(loadProviders, 2500);
    loadAudit();
  } catch (error) {
    note.textContent = refusal(error);
  }
}

// --- Orders ------------------------------------------------------------------------------

const ORDERS = `query ($filter: OrderFilter, $after: String) {
  orders(filter: $filter, first: 20, after: $after) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { node { id status createdAt branch { code } customer { name } total { amountFen } } }
  }
}`;
const ORDER = `query ($id: ID!) {
  order(id: $id) {
    id status createdAt updatedAt expiresAt
    branch { code name }
    customer { name phone }
    total { amountFen }
    items { title quantity subtotal { amountFen } }
    payments {
      id provider method status outTradeNo providerTradeNo flagged createdAt updatedAt
      amount { amountFen }
      refunds { outRefundNo status reason createdAt amount { amountFen } }
    }
  }
}`;
const REFUND = `mutation ($input: RefundPaymentInput!) {
  refundPayment(input: $input) { refund { outRefundNo status } userErrors { code message } }
}`;

let ordersCursor = null;

function orderFilter() {
  const filter = {};
  const branch = $("filter-branch").value;
  const status = $("filter-status").value;
  if (branch) filter.branches = [branch];
  if (status) filter.status = [status];
  if ($("filter-from").value) filter.createdAfter = beijingDayStart($("filter-from").value);
  if ($("filter-to").value) filter.createdBefore = beijingDayStart($("filter-to").value, true);
  return filter;
}

async function loadOrders(more = false) {
  const body = $("orders-table").tBodies[0];
  try {
    const variables = { filter: orderFilter(), after: more ? ordersCursor : null };
    const page = (await graphql(ORDERS, variables)).orders;
    const rows = page.edges.map(({ node }) =>
      el(
        "tr",
        { "data-order": node.id },
        el("td", {}, beijing(node.createdAt)),
        el("td", {}, node.branch.code),
        el("td", { class: "customer" }, node.customer.name),
        el("td", {}, yuan(node.total.amountFen)),
        el("td", {}, node.status),
        el("td", {}, el("button", { type: "button", onclick: () => showOrder(node.id) }, "Open")),
      ),
    );
    if (more) {
      body.append(...rows);
    } else {
      fill(body, rows);
    }
    ordersCursor = page.pageInfo.endCursor;
    $("orders-more").hidden = !page.pageInfo.hasNextPage;
    const matching = page.totalCount === 1 ? "1 order matches" : `${page.totalCount} orders match`;
    $("orders-count").textContent = `${matching}; ${body.rows.length} shown.`;
  } catch (error) {
    fill(body);
    $("orders-count").textContent = refusal(error);
  }
}

async function showOrder(id) {
  const detail = $("order-detail");
  detail.hidden = false;
  try {
    const order = (await graphql(ORDER, { id })).order;
    if (!order) {
      fill(detail, el("p", {}, "No such order."));
      return;
    }
    const history = [
      [order.createdAt, "order created"],
      ...order.payments.flatMap((payment) => [
        [payment.createdAt, `payment ${payment.outTradeNo} started (${payment.provider}, ${payment.method})`],
        [payment.updatedAt, `payment ${payment.outTradeNo} is ${payment.status}`],
        ...payment.refunds.map((refund) => [refund.createdAt, `refund ${refund.outRefundNo} of ${yuan(refund.amount.amountFen)}: ${refund.status}`]),
      ]),
      [order.updatedAt, `order is ${order.status}`],
    ].sort((a, b) => a[0].localeCompare(b[0]));
    fill(
      detail,
      el("h3", {}, `Order ${order.id}`),
      el("dl", { class: "facts" },
        el("dt", {}, "Branch"), el("dd", {}, `${order.branch.code} · ${order.branch.name}`),
        el("dt", {}, "Customer"), el("dd", { class: "customer" }, `${order.customer.name}, ${order.customer.phone}`),
        el("dt", {}, "Status"), el("dd", { class: "order-status" }, order.status),
        el("dt", {}, "Total"), el("dd", {}, yuan(order.total.amountFen)),
        el("dt", {}, "Expires"), el("dd", {}, beijing(order.expiresAt)),
      ),
      table(["Item", "Quantity", "Subtotal"], order.items.map((item) => [item.title, String(item.quantity), yuan(item.subtotal.amountFen)])),
      el("h4", {}, "Payments"),
      order.payments.length ? order.payments.map((payment) => paymentBlock(order, payment)) : el("p", {}, "No payment yet."),
      el("h4", {}, "History"),
      el("ol", { class: "history" }, history.map(([at, what]) => el("li", {}, `${beijing(at)}: ${what}`))),
    );
  } catch (error) {
    say(detail, error);
  }
}

function paymentBlock(order, payment) {
  return el(
    "div",
    { class: "payment", "data-payment": payment.id },
    el("p", {}, `${payment.provider} · ${payment.method} · ${payment.status} · ${yuan(payment.amount.amountFen)} · ${payment.outTradeNo}`),
    payment.flagged ? el("p", { class: "refused" }, `Flagged: ${payment.flagged}`) : null,
    payment.refunds.length
      ? table(
          ["Refund", "Amount", "Status", "Reason", "Created"],
          payment.refunds.map((refund) => [refund.outRefundNo, yuan(refund.amount.amountFen), refund.status, refund.reason ?? "", beijing(refund.createdAt)]),
        )
      : null,
    ["SUCCEEDED", "PARTIALLY_REFUNDED"].includes(payment.status) ? refundForm(order, payment) : null,
  );
}

function refundForm(order, payment) {
  // One idempotency key per form: a double click or a retry refunds once.
  const key = idempotencyKey("refund");
  const amount = el("input", { type: "text", inputmode: "decimal", name: "amount", placeholder: "12.50", "aria-label": "Refund amount in yuan" });
  const reason = el("input", { type: "text", name: "reason", maxlength: "200", placeholder: "reason", "aria-label": "Refund reason" });
  const note = el("p", { class: "note", role: "status" });
  const button = el("button", { type: "button" }, "Refund");
  button.addEventListener("click", async () => {
    const fen = fenOf(amount.value);
    if (!fen) {
      note.textContent = "Give an amount in yuan, e.g. 12.50.";
      return;
    }
    button.disabled = true;
    try {
      const input = { paymentId: payment.id, amountFen: fen, reason: reason.value || null, idempotencyKey: key };
      const result = (await graphql(REFUND, { input })).refundPayment;
      if (result.userErrors.length) {
        note.textContent = `Refused: ${userErrors(result.userErrors)}`;
        button.disabled = false;
        return;
      }
      await showOrder(order.id);
      loadOrders();
    } catch (error) {
      note.textContent = refusal(error);
      button.disabled = false;
    }
  });
  return el("div", { class: "refund-form", role: "group", "aria-label": "Refund" }, el("label", {}, "Refund (yuan) ", amount), reason, button, note);
}

// --- Reconciliation ----------------------------------------------------------------------

const DISCREPANCIES = `{
  reconciliations {
    id branch provider billDate status openDiscrepancies
    discrepancies(open: true, first: 100) {
      nodes { id kind outTradeNo outRefundNo billAmountFen ourAmountFen billStatus ourStatus ageDays stale }
    }
  }
}`;
const RESOLVE = `mutation ($input: ResolveDiscrepancyInput!) {
  resolveDiscrepancy(input: $input) { discrepancy { id open } userErrors { code message } }
}`;

async function loadDiscrepancies() {
  const container = $("discrepancies");
  try {
    const runs = (await graphql(DISCREPANCIES)).reconciliations.filter((run) => run.openDiscrepancies > 0);
    const open = runs.flatMap((run) => run.discrepancies.nodes.map((d) => ({ ...d, run })));
    if (!open.length) {
      fill(container, el("p", {}, "No open discrepancy."));
      return;
    }
    fill(container, table(
      ["Bill", "Kind", "Trade", "Bill says", "We say", "Age", "Resolve"],
      open.map((d) => [
        `${d.run.branch} · ${d.run.provider} · ${d.run.billDate}`,
        d.kind,
        d.outRefundNo ? `${d.outTradeNo} / ${d.outRefundNo}` : d.outTradeNo,
        `${d.billAmountFen === null ? "" : yuan(d.billAmountFen)} ${d.billStatus ?? ""}`,
        `${d.ourAmountFen === null ? "" : yuan(d.ourAmountFen)} ${d.ourStatus ?? ""}`,
        `${d.ageDays} d${d.stale ? " (stale)" : ""}`,
        resolveForm(d),
      ]),
    ));
  } catch (error) {
    say(container, error);
  }
}

// Genuine notifications the service refused after their signature (another merchant's,
// an unknown trade, another amount): kept for finance, applied never.
const MISMATCHES = `{ notificationMismatches(first: 100) {
  receivedAt provider branch reason outTradeNo amountFen } }`;

async function loadMismatches() {
  const container = $("mismatches");
  try {
    const found = (await graphql(MISMATCHES)).notificationMismatches;
    if (!found.length) {
      fill(container, el("p", {}, "No refused notification."));
      return;
    }
    fill(container, table(
      ["Received", "Branch · provider", "Trade", "Amount", "Why"],
      found.map((m) => [
        beijing(m.receivedAt),
        `${m.branch} · ${m.provider}`,
        m.outTradeNo ?? "",
        m.amountFen === null ? "" : yuan(m.amountFen),
        m.reason,
      ]),
    ));
  } catch (error) {
    say(container, error);
  }
}

function resolveForm(discrepancy) {
  const note = el("input", { type: "text", maxlength: "500", placeholder: "why it is resolved", "aria-label": "Resolution note" });
  const status = el("span", { role: "status" });
  const button = el("button", { type: "button" }, "Resolve");
  button.addEventListener("click", async () => {
    try {
      const input = { id: discrepancy.id, note: note.value };
      const result = (await graphql(RESOLVE, { input })).resolveDiscrepancy;
      if (result.userErrors.length) {
        status.textContent = `Refused: ${userErrors(result.userErrors)}`;
        return;
      }
      loadDiscrepancies();
    } catch (error) {
      status.textContent = refusal(error);
    }
  });
  return el("span", { class: "inline-form" }, note, button, status);
}

// --- Webhooks ----------------------------------------------------------------------------

const WEBHOOKS = `{
  webhookEndpoints {
    id url branches events enabled disabledReason pausedReason failingSince
    deliveries(status: FAILED, first: 20) { nodes { id eventId eventType tries createdAt } }
  }
}`;
const REPLAY = `mutation ($input: ReplayWebhookEventInput!) {
  replayWebhookEvent(input: $input) { deliveries userErrors { code message } }
}`;

async function loadWebhooks() {
  const container = $("endpoints");
  try {
    const endpoints = (await graphql(WEBHOOKS)).webhookEndpoints;
    if (!endpoints.length) {
      fill(container, el("p", {}, "No webhook endpoint."));
      return;
    }
    fill(container, endpoints.map((endpoint) => el(
      "article",
      { class: "endpoint" },
      el("h3", {}, endpoint.url),
      el("p", {}, `${endpoint.branches.join(", ")} · ${endpoint.enabled ? "enabled" : `disabled: ${endpoint.disabledReason ?? ""}`}${endpoint.pausedReason ? ` · paused: ${endpoint.pausedReason}` : ""}${endpoint.failingSince ? ` · failing since ${beijing(endpoint.failingSince)}` : ""}`),
      endpoint.deliveries.nodes.length
        ? table(["Event", "Type", "Tries", "Created", ""], endpoint.deliveries.nodes.map((delivery) => [
            delivery.eventId, delivery.eventType, String(delivery.tries), beijing(delivery.createdAt), replayButton(delivery.eventId),
          ]))
        : el("p", {}, "No failed delivery."),
    )));
  } catch (error) {
    say(container, error);
  }
}

function replayButton(eventId) {
  const status = el("span", { role: "status" });
  const button = el("button", { type: "button" }, "Replay");
  button.addEventListener("click", async () => {
    try {
      const result = (await graphql(REPLAY, { input: { eventId } })).replayWebhookEvent;
      status.textContent = result.userErrors.length ? `Refused: ${userErrors(result.userErrors)}` : `queued ${result.deliveries}`;
    } catch (error) {
      status.textContent = refusal(error);
    }
  });
  return el("span", {}, button, status);
}

// --- Audit log ---------------------------------------------------------------------------

const AUDIT = `query ($after: String) {
  auditLog(first: 50, after: $after) { entries { at actor action target branch } hasNextPage endCursor }
}`;

async function loadAudit() {
  const container = $("audit-log");
  try {
    const page = (await graphql(AUDIT)).auditLog;
    fill(container, table(
      ["At", "Who", "What", "Target", "Branch"],
      page.entries.map((entry) => [beijing(entry.at), entry.actor, entry.action, entry.target, entry.branch ?? ""]),
    ));
  } catch (error) {
    say(container, error);
  }
}

// --- Start -------------------------------------------------------------------------------

fill($("filter-status"), el("option", { value: "" }, "any"), ORDER_STATUSES.map((status) => el("option", { value: status }, status)));

function signInWithGiven() {
  const key = $("api-key").value.trim();
  if (key) {
    signIn(key);
  } else {
    $("notice").textContent = "Paste a key into the field first.";
  }
}

$("sign-in-button").addEventListener("click", signInWithGiven);
$("api-key").addEventListener("keydown", (event) => {
  if (event.key === "Enter") signInWithGiven();
});
$("sign-out").addEventListener("click", signOut);
$("filter-apply").addEventListener("click", () => loadOrders());
$("orders-more").addEventListener("click", () => loadOrders(true));

if (session.key()) {
  signIn(session.key());
}
