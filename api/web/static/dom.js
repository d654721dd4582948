// Building a page from the API's answers (the storefront's and the console's). Every value goes
// in as text (a text node or textContent), never as HTML: order titles, customer names and
// reasons are user input.

export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) {
      element.addEventListener(name.slice(2), value);
    } else if (value !== false && value !== null && value !== undefined) {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return element;
}

export function fill(container, ...children) {
  container.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined));
}

export function table(headings, rows) {
  return el(
    "div",
    { class: "scroll" },
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, headings.map((heading) => el("th", {}, heading)))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((cell) => el("td", {}, cell))))),
    ),
  );
}

// Integer fen as yuan, with integer arithmetic only.
export function yuan(fen) {
  const sign = fen < 0 ? "-" : "";
  const whole = Math.abs(fen);
  return `${sign}¥${Math.trunc(whole / 100)}.${String(whole % 100).padStart(2, "0")}`;
}

// "12.3" or "12.30" yuan as 1230 fen; null when it is not an amount.
export function fenOf(text) {
  const match = /^(\d{1,9})(?:\.(\d{1,2}))?$/.exec(text.trim());
  if (!match) {
    return null;
  }
  return Number(match[1]) * 100 + Number((match[2] ?? "").padEnd(2, "0"));
}

const BEIJING = new Intl.DateTimeFormat("sv-SE", {
  timeZone: "Asia/Shanghai",
  dateStyle: "short",
  timeStyle: "medium",
});

// A time of the API (UTC) as Beijing time, the business's clock.
export function beijing(iso) {
  return iso ? `${BEIJING.format(new Date(iso))} (Beijing)` : "";
}

// A Beijing day's start as an ISO time, for the orders filter; `next` gives the day after's.
export function beijingDayStart(day, next = false) {
  const start = new Date(`${day}T00:00:00Z`);
  if (next) {
    start.setUTCDate(start.getUTCDate() + 1);
  }
  return `${start.toISOString().slice(0, 10)}T00:00:00+08:00`;
}

// 128 random bits (getRandomValues, unlike randomUUID, works on plain http:// to a LAN address).
export function idempotencyKey(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}
