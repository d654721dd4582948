// The demo storefront: pick a branch, an offering, fill the customer, create the order,
// pay it and follow it live. Every value shown is set as text (textContent or a text
// node), never as HTML: titles and customer names are other people's input.
import { Api, demoKey } from "./api.js";
import { el, idempotencyKey as newKey, yuan } from "../dom.js";

const OFFERING = `id kind title description number premium price { amountFen }
  options { name choices { value priceDelta { amountFen } } }`;
const PAYMENT = `id provider method status amount { amountFen } outTradeNo providerTradeNo
  createdAt updatedAt`;
const ORDER = `id status expiresAt total { amountFen }
  customer { name phone }
  items { title quantity subtotal { amountFen } options { name value } }
  branch { code name }
  paymentOptions { provider displayName method available reason detail needs }
  payments { ${PAYMENT} }`;

const BRANCHES = `{ branches { code name province operator } }`;
const CATALOG = `query Catalog($branch: String!, $kind: OfferingKind) {
  catalog(branch: $branch, kind: $kind) { ${OFFERING} } }`;
const GET_ORDER = `query Order($id: ID!) { order(id: $id) { ${ORDER} } }`;
const CREATE_ORDER = `mutation Create($input: CreateOrderInput!) {
  createOrder(input: $input) { order { ${ORDER} } userErrors { field message code } } }`;
const START_PAYMENT = `mutation Pay($input: StartPaymentInput!) {
  startPayment(input: $input) {
    payment { ${PAYMENT} }
    action { kind url qrCode formHtml appPayload clientParams tradeNo }
    userErrors { field message code } } }`;
const CANCEL_ORDER = `mutation Cancel($input: CancelOrderInput!) {
  cancelOrder(input: $input) { order { ${ORDER} } userErrors { field message code } } }`;
const ORDER_EVENTS = `subscription Follow($id: ID!) {
  orderEvents(orderId: $id) { status at reason order { ${ORDER} } } }`;

const KINDS = [
  ["NUMBER", "Numbers"],
  ["PLAN", "Plans"],
  ["TOP_UP", "Top-ups"],
  ["HANDSET", "Handsets"],
];

const $ = (id) => document.getElementById(id);
let api;
let kind = "NUMBER";
let chosen = null; // { offering, options: Map(name -> choice) }
let idempotencyKey = null; // one per order form: a second click repeats it
let order = null;
let stopFollowing = null;

function delta(fen) {
  return fen === 0 ? "" : ` (${fen > 0 ? "+" : ""}${yuan(fen)})`;
}

function notice(text) {
  $("notice").textContent = text;
}

function showErrors(list, errors) {
  list.replaceChildren(
    ...errors.map((error) =>
      el("li", {}, error.field ? `${error.field.join(".")}: ${error.message}` : error.message),
    ),
  );
}

// A link or form target from the API is followed only when it is http(s): never javascript:.
function webAddress(text) {
  try {
    const url = new URL(text);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

// --- 1 · the catalog -------------------------------------------------------------

async function loadBranches() {
  const { branches } = await api.request(BRANCHES);
  $("branch").replaceChildren(
    ...branches.map((branch) =>
      el("option", { value: branch.code }, `${branch.name} (${branch.province})`),
    ),
  );
}

function showKinds() {
  $("kinds").replaceChildren(
    ...KINDS.map(([value, label]) => {
      const button = el("button", { type: "button", "aria-pressed": String(value === kind) }, label);
      button.addEventListener("click", () => {
        kind = value;
        showKinds();
        loadCatalog();
      });
      return button;
    }),
  );
}

async function loadCatalog() {
  const list = $("offerings");
  list.setAttribute("aria-busy", "true");
  const { catalog } = await api.request(CATALOG, { branch: $("branch").value, kind });
  list.replaceChildren(...catalog.map(offeringCard));
  if (!catalog.length) {
    list.append(el("li", {}, "Nothing of this kind here."));
  }
  list.removeAttribute("aria-busy");
}

function offeringCard(offering) {
  const card = el(
    "li",
    { class: "offering" },
    el("h3", {}, offering.title),
    el("p", { class: "price" }, yuan(offering.price.amountFen)),
  );
  if (offering.premium) {
    card.prepend(el("span", { class: "mark" }, "Premium"));
  }
  if (offering.description) {
    card.append(el("p", {}, offering.description));
  }
  for (const option of offering.options) {
    const choices = option.choices.map((c) => `${c.value}${delta(c.priceDelta.amountFen)}`);
    card.append(el("p", { class: "choices" }, `${option.name}: ${choices.join(", ")}`));
  }
  const choose = el("button", { type: "button" }, "Choose");
  choose.addEventListener("click", () => openCheckout(offering));
  card.append(choose);
  return card;
}

// --- 2 · the order form ------------------------------------------------------------

function openCheckout(offering) {
  chosen = { offering, options: new Map() };
  idempotencyKey = newKey("demo");
  $("chosen").textContent = offering.title;
  $("options").replaceChildren(
    ...offering.options.map((option) => {
      const id = `option-${option.name}`;
      const select = el(
        "select",
        { id },
        ...option.choices.map((choice) =>
          el("option", { value: choice.value }, `${choice.value}${delta(choice.priceDelta.amountFen)}`),
        ),
      );
      const pick = () => {
        chosen.options.set(option.name, option.choices[select.selectedIndex]);
        showCheckoutTotal();
      };
      select.addEventListener("change", pick);
      pick();
      return el("div", {}, el("label", { for: id }, option.name), select);
    }),
  );
  showCheckoutTotal();
  $("order-errors").replaceChildren();
  $("create-order").disabled = false;
  $("shop").hidden = true;
  $("checkout").hidden = false;
}

function showCheckoutTotal() {
  // Shown for the customer only: the server prices the order from its catalog.
  let fen = chosen.offering.price.amountFen;
  for (const choice of chosen.options.values()) {
    fen += choice.priceDelta.amountFen;
  }
  $("checkout-total").textContent = yuan(fen);
}

async function createOrder() {
  const customer = {
    name: $("customer-name").value,
    phone: $("customer-phone").value.trim(),
    idCardNumber: $("customer-id").value.trim() || null,
  };
  const input = {
    branch: $("branch").value,
    idempotencyKey,
    customer,
    items: [
      {
        offeringId: chosen.offering.id,
        quantity: 1,
        options: [...chosen.options].map(([name, choice]) => ({ name, value: choice.value })),
      },
    ],
  };
  // A double click sends the same idempotency key twice: the API answers the same order.
  const { createOrder: result } = await api.request(CREATE_ORDER, { input });
  if (result.userErrors.length) {
    showErrors($("order-errors"), result.userErrors);
    return;
  }
  $("create-order").disabled = true;
  history.replaceState(null, "", `/demo?order=${encodeURIComponent(result.order.id)}`);
  showOrder(result.order);
  follow(result.order.id);
}

// --- 3 · pay and follow --------------------------------------------------------------

function showOrder(current) {
  order = current;
  $("checkout").hidden = true;
  $("shop").hidden = true;
  $("order").hidden = false;
  $("order-id").textContent = current.id;
  $("order-status").textContent = current.status;
  $("order-status").dataset.status = current.status;
  $("order-customer").textContent = `${current.customer.name} · ${current.customer.phone}`;
  $("order-items").replaceChildren(
    ...current.items.map((item) => {
      const options = item.options.map((o) => `${o.name} ${o.value}`).join(", ");
      const text = `${item.quantity} × ${item.title}${options ? ` (${options})` : ""}`;
      return el("li", {}, `${text}: ${yuan(item.subtotal.amountFen)}`);
    }),
  );
  $("order-total").textContent = yuan(current.total.amountFen);
  $("order-expires").textContent = new Date(current.expiresAt).toLocaleString();
  $("pay-controls").hidden = current.status !== "PENDING_PAYMENT";
  if (current.status !== "PENDING_PAYMENT") {
    $("action").replaceChildren();
  }
  showProviders(current.paymentOptions);
  showPayments(current.payments);
}

// The API says which (provider, method) pairs this order can be paid with, and why not
// the others (paymentOptions): a provider is offered when one of its methods is usable,
// and an unusable method is shown disabled with its reason, never as a button that fails.
function showProviders(options) {
  const select = $("provider");
  const was = select.value;
  const usable = [];
  for (const option of options) {
    if (option.available && !usable.some((p) => p.provider === option.provider)) {
      usable.push(option);
    }
  }
  select.replaceChildren(
    ...usable.map((p) => el("option", { value: p.provider }, p.displayName)),
  );
  if (usable.some((p) => p.provider === was)) {
    select.value = was;
  }
  if (!usable.length) {
    $("pay-errors").replaceChildren(el("li", {}, "This branch enables no payment provider now."));
  }
  showMethods();
}

function showMethods() {
  const options = (order?.paymentOptions ?? []).filter((o) => o.provider === $("provider").value);
  const select = $("method");
  const was = select.value;
  select.replaceChildren(
    ...options.map((o) =>
      o.available
        ? el("option", { value: o.method }, o.method)
        : el("option", { value: o.method, disabled: "" }, `${o.method}: ${o.detail}`),
    ),
  );
  if (options.some((o) => o.available && o.method === was)) {
    select.value = was;
  } else {
    const first = options.find((o) => o.available);
    if (first) {
      select.value = first.method;
    }
  }
  showCodeInput();
}

// A counter sale: the clerk scans (or types) the payer's payment code.
function showCodeInput() {
  const option = (order?.paymentOptions ?? []).find(
    (o) => o.provider === $("provider").value && o.method === $("method").value,
  );
  $("auth-code-field").hidden = !option?.needs.includes("AUTH_CODE");
}

function showPayments(payments) {
  $("payments").replaceChildren(
    ...payments.map((p) =>
      el(
        "li",
        { class: "payment", "data-status": p.status },
        el("strong", {}, `${p.status} `),
        `${yuan(p.amount.amountFen)} via ${p.provider} (${p.method}) · trade no. ${p.outTradeNo}`,
        p.providerTradeNo ? ` · provider's no. ${p.providerTradeNo}` : "",
        ` · ${new Date(p.updatedAt).toLocaleString()}`,
      ),
    ),
  );
  if (!payments.length) {
    $("payments").append(el("li", {}, "None yet."));
  }
}

async function pay() {
  const method = $("method").value;
  const input = { orderId: order.id, provider: $("provider").value, method };
  if (method === "PAGE" || method === "WAP") {
    input.returnUrl = window.location.href; // the platform sends the payer back here
  }
  if (!$("auth-code-field").hidden) {
    input.authCode = $("auth-code").value.trim();
    $("auth-code").value = ""; // the payer's one-time secret: not kept on the page
  }
  $("pay-errors").replaceChildren();
  const { startPayment: result } = await api.request(START_PAYMENT, { input });
  if (result.userErrors.length) {
    showErrors($("pay-errors"), result.userErrors);
    return;
  }
  showAction(result.action);
  const refreshed = await api.request(GET_ORDER, { id: order.id });
  showOrder(refreshed.order);
}

// What the payer must do next, by the PaymentAction's kind.
function showAction(action) {
  const box = $("action");
  if (action.kind === "QR_CODE") {
    const src = `/demo/qr.svg?text=${encodeURIComponent(action.qrCode)}`;
    box.replaceChildren(
      el("p", {}, "Scan with the payment app:"),
      el("img", { id: "qr", src, alt: "QR code of the payment", width: "240", height: "240" }),
    );
  } else if (action.kind === "REDIRECT") {
    const href = webAddress(action.url);
    box.replaceChildren(
      href
        ? el("a", { id: "go-pay", href, target: "_blank", rel: "noopener" }, "Open the payment page")
        : el("p", {}, "The provider gave no usable address."),
    );
  } else if (action.kind === "FORM_POST") {
    box.replaceChildren(formFrom(action.formHtml));
  } else if (action.kind === "APP_SDK") {
    box.replaceChildren(
      el("p", {}, "Hand this payload to the platform's app SDK:"),
      el("pre", { id: "app-payload" }, action.appPayload),
    );
  } else if (action.kind === "NONE") {
    box.replaceChildren(
      el("p", { id: "code-charged" }, "The payment code was charged. If the payer must confirm " +
        "on the phone, the order follows by itself; an unconfirmed sale is reversed."),
    );
  }
}

// The gateway's auto-submitting form, rebuilt as a form of ours. Its HTML is only parsed,
// in a <template> that is never put in the page: nothing in a template runs, loads or
// fires (not even an inline handler the policy would refuse); only the form's address
// and fields are taken over. The page's CSP form-action names the gateways it may post to.
function formFrom(formHtml) {
  const inert = document.createElement("template");
  inert.innerHTML = formHtml;
  const parsed = inert.content.querySelector("form");
  const action = parsed && webAddress(parsed.action);
  if (!action) {
    return el("p", {}, "The provider gave no usable form.");
  }
  const form = el("form", { id: "gateway-form", method: "post", action, target: "_blank" });
  for (const field of parsed.querySelectorAll("input[name]")) {
    const input = el("input", { type: "hidden", name: field.name });
    input.value = field.value;
    form.append(input);
  }
  form.append(el("button", { type: "submit" }, "Continue to the payment page"));
  return form;
}

async function cancel() {
  const input = { orderId: order.id, reason: "cancelled in the storefront" };
  const { cancelOrder: result } = await api.request(CANCEL_ORDER, { input });
  if (result.userErrors.length) {
    showErrors($("pay-errors"), result.userErrors);
  }
}

// The order's status, live: its current state first, then every change until a final one.
function follow(id) {
  stopFollowing?.();
  $("live").textContent = "Following the order live…";
  stopFollowing = api.subscribe(ORDER_EVENTS, { id }, {
    next({ orderEvents: event }) {
      showOrder(event.order);
      $("order-reason").textContent = event.reason ? `(${event.reason})` : "";
      const at = new Date(event.at).toLocaleTimeString();
      $("live").textContent = `Following the order live: ${event.status} since ${at}.`;
    },
    error(error) {
      $("live").textContent = `Live updates: ${error.message}`;
    },
    complete() {
      $("live").textContent = `The order is ${order.status}: no more changes to follow.`;
    },
  });
}

async function newOrder() {
  stopFollowing?.();
  order = null;
  history.replaceState(null, "", "/demo");
  $("order").hidden = true;
  $("action").replaceChildren();
  $("shop").hidden = false;
  await loadCatalog();
}

// Every handler's failure is shown on the page, not lost in the console.
function guarded(handler) {
  return (...args) =>
    handler(...args).catch((error) => notice(`Something went wrong: ${error.message}`));
}

async function start() {
  api = new Api(await demoKey());
  await loadBranches();
  showKinds();
  $("branch").addEventListener("change", guarded(loadCatalog));
  $("create-order").addEventListener("click", guarded(createOrder));
  $("back-to-shop").addEventListener("click", () => {
    $("checkout").hidden = true;
    $("shop").hidden = false;
  });
  $("provider").addEventListener("change", showMethods);
  $("method").addEventListener("change", showCodeInput);
  $("pay").addEventListener("click", guarded(pay));
  $("cancel").addEventListener("click", guarded(cancel));
  $("new-order").addEventListener("click", guarded(newOrder));
  const resumed = new URLSearchParams(window.location.search).get("order");
  if (resumed) {
    // Back from a payment page: show the order and follow it again.
    const { order: found } = await api.request(GET_ORDER, { id: resumed });
    if (found) {
      showOrder(found);
      follow(found.id);
      return;
    }
    notice("That order is not one this key can see.");
  }
  await loadCatalog();
}

guarded(start)();
