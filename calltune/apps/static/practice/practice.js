// The practice page: the seller chooses a customer, holds a call with the model (streamed replies from
// /v1/chat/completions), ends it, downloads the transcript and reads the judge's review. Plain JavaScript, no
// build step; every text from the server goes into the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "calltune.apiKey";  // sessionStorage only: the key leaves with the tab
const params = new URLSearchParams(location.search);
// Longest silence while waiting for a reply: a little over the server's own request timeout, unless set in the URL.
const timeoutS = () => Number(params.get("timeout_s")) || (state.setup ? state.setup.timeout_s + 5 : 120);
const AUTO_RETRIES = 5;  // 429/503 with Retry-After are retried this often before the seller is asked

const state = {
  setup: null,       // GET /practice/api/setup
  customer: null,    // {label, fields, system}
  turns: [],         // [{role: "seller"|"customer", text}]
  servedBy: [],      // model names that answered this call
  hungUp: false,     // the customer ended this call
  lastVersion: null, // the version that answered the previous call
  busy: false,
  retry: null,       // what "Retry now" does
  autoRetries: 0,
  countdown: null,
  afterKey: null,    // what to do once the seller has entered the API key
};

class HttpError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

const unreachable = () => new HttpError(0, "Cannot reach the calltune server. Is `calltune serve` still running?");
const timedOut = () => new HttpError(-1, `No answer for ${timeoutS()} s: the server may be overloaded.`);

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function httpError(resp) {
  let message = "";
  try {
    const body = await resp.json();
    message = (body.error && body.error.message) || "";  // every route answers errors in OpenAI's shape
  } catch (_) { /* not JSON: the status says enough */ }
  const header = resp.headers.get("Retry-After");
  let retryAfter = null;
  if (header !== null) {
    retryAfter = /^\d+$/.test(header.trim()) ? Number(header) : Math.max(0, (Date.parse(header) - Date.now()) / 1000);
    if (!Number.isFinite(retryAfter)) retryAfter = null;
  }
  return new HttpError(resp.status, message || `the server answered ${resp.status} ${resp.statusText}`.trim(), retryAfter);
}

async function api(path, body) {
  let resp;
  try {
    resp = await fetch(path, body === undefined ? { headers: headers(false) }
      : { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  } catch (_) {
    throw unreachable();
  }
  if (!resp.ok) throw await httpError(resp);
  return resp.json();
}

// ---------------------------------------------------------------- errors, notices, the key

function clearError() {
  clearInterval(state.countdown);
  state.countdown = null;
  state.retry = null;
  $("error").hidden = true;
}

function showError(err, retry) {
  clearError();
  if (err.status === 401 || err.status === 403) {
    askForKey(err.status === 401 && sessionStorage.getItem(KEY) ? "The API key was refused; enter it again."
      : "This server needs the same API key as its API.", retry);
    return;
  }
  state.retry = retry;
  const busy = (err.status === 429 || err.status === 503) && err.retryAfter !== null;
  let text = err.status > 0 ? `${err.message} (HTTP ${err.status})` : err.message;
  $("error").hidden = false;
  $("error-retry").hidden = !retry;
  if (busy && retry && state.autoRetries < AUTO_RETRIES) {
    state.autoRetries += 1;
    let left = Math.ceil(err.retryAfter);
    const tick = () => { $("error-text").textContent = `${text} Retrying in ${left} s…`; };
    tick();
    state.countdown = setInterval(() => {
      left -= 1;
      if (left > 0) return tick();
      retryNow();
    }, 1000);
    if (left <= 0) retryNow();
    return;
  }
  if (busy) text += ` Still busy after ${AUTO_RETRIES} tries; retry when you are ready.`;
  $("error-text").textContent = text;
  $("error-retry").focus();
}

function retryNow() {
  const retry = state.retry;
  clearError();
  if (retry) retry();
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

function askForKey(why, then) {
  $("key-why").textContent = why;
  $("key-form").hidden = false;
  state.afterKey = then;
  $("key").focus();
}

// ---------------------------------------------------------------- setup: the served version and the customers

function versionLabel(setup) {
  return setup.version === null ? `${setup.model}: nothing is being served right now${setup.problem ? ` (${setup.problem})` : ""}`
    : `Customer model: ${setup.model} · version ${setup.version}`;
}

async function loadSetup() {
  const setup = await api("/practice/api/setup");
  state.setup = setup;
  $("served").textContent = versionLabel(setup);
  $("forget-key").hidden = !sessionStorage.getItem(KEY);
  return setup;
}

function fillCustomers(setup) {
  const select = $("customer");
  const chosen = select.value;
  select.replaceChildren();
  setup.customers.forEach((c, i) => {
    const option = new Option(c.label, String(i));
    select.add(option);
  });
  select.add(new Option("Describe your own customer…", "own"));
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  const own = $("own-fields");
  own.replaceChildren();
  const fields = setup.fields.length ? setup.fields : ["brief"];
  for (const name of fields) {
    const id = `own-${name}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = name === "brief" && !setup.fields.length ? "The customer, in a few sentences"
      : name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
    const input = document.createElement(name === "brief" ? "textarea" : "input");
    input.id = id;
    input.dataset.field = name;
    if (input.tagName === "INPUT") input.type = "text";
    own.append(label, input);
  }
  $("customer-opens").disabled = !setup.opening_prompt;
  $("customer-opens").checked = Boolean(setup.opening_prompt);
  showCustomer();
}

function showCustomer() {
  const value = $("customer").value;
  $("own").hidden = value !== "own";
  const c = value === "own" ? null : state.setup.customers[Number(value)];
  const details = $("customer-details");
  details.textContent = c ? c.system : "";
  if (c && c.examples) details.textContent += `\n(${c.examples} training example${c.examples === 1 ? "" : "s"})`;
}

async function chosenCustomer() {
  const value = $("customer").value;
  if (value !== "own") {
    const c = state.setup.customers[Number(value)];
    return { label: c.label, fields: c.fields, system: c.system };
  }
  const fields = {};
  for (const input of $("own-fields").querySelectorAll("[data-field]")) fields[input.dataset.field] = input.value.trim();
  if (!state.setup.fields.length) {  // no template: the brief is the instruction itself
    if (!fields.brief) throw new HttpError(400, "Describe the customer first.");
    return { label: "your customer", fields: {}, system: fields.brief };
  }
  const rendered = await api("/practice/api/persona", { fields });
  return { label: Object.values(rendered.fields).filter(Boolean).join(" · "), fields: rendered.fields, system: rendered.system };
}

// ---------------------------------------------------------------- the call

function addTurn(role, text) {
  const li = document.createElement("li");
  li.className = `turn ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "seller" ? "You" : `Customer (${state.customer.label})`;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(who, body);
  $("transcript").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

// OpenAI messages as training saw the call: consecutive lines of one speaker joined, and the opening prompt
// standing in for the seller before a customer who speaks first.
function chatMessages() {
  const messages = state.customer.system ? [{ role: "system", content: state.customer.system }] : [];
  const opening = state.setup.opening_prompt;
  if (opening && (!state.turns.length || state.turns[0].role === "customer")) messages.push({ role: "user", content: opening });
  for (const t of state.turns) {
    const role = t.role === "seller" ? "user" : "assistant";
    const last = messages[messages.length - 1];
    if (last && last.role === role) last.content += ` ${t.text}`;
    else messages.push({ role, content: t.text });
  }
  return messages;
}

async function streamReply(messages, onText) {
  const abort = new AbortController();
  let timer;
  const arm = () => { clearTimeout(timer); timer = setTimeout(() => abort.abort(), timeoutS() * 1000); };
  arm();
  try {
    let resp;
    try {
      resp = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(true), signal: abort.signal,
        body: JSON.stringify({ model: state.setup.model, messages, stream: true }),
      });
    } catch (_) {
      throw abort.signal.aborted ? timedOut() : unreachable();
    }
    if (!resp.ok) throw await httpError(resp);
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let model = null;
    let hungUp = false;  // the server's stop_reason extension: the customer ended the call
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (_) {
        throw abort.signal.aborted ? timedOut() : new HttpError(0, "The connection broke during the reply.");
      }
      if (chunk.done) throw new HttpError(0, "The connection closed before the reply was complete.");
      arm();
      buffer += decoder.decode(chunk.value, { stream: true });
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = events.pop();
      for (const event of events) {
        for (const line of event.split(/\r?\n/)) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return { model, hungUp };
          const payload = JSON.parse(data);
          if (payload.error) throw new HttpError(0, payload.error.message || "The reply failed on the server.");
          model = payload.model || model;
          const choice = payload.choices && payload.choices[0];
          if (choice && choice.delta && choice.delta.content) onText(choice.delta.content);
          if (choice && choice.stop_reason === "end_of_call") hungUp = true;
        }
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  $("end").disabled = busy;
  $("line").setAttribute("aria-busy", String(busy));
}

async function customerReplies() {
  setBusy(true);
  const li = addTurn("customer", "");
  li.classList.add("streaming");
  const text = li.querySelector(".text");
  let reply = "";
  try {
    const { model, hungUp } = await streamReply(chatMessages(), (delta) => {
      reply += delta;
      text.textContent = reply.trimStart();
    });
    reply = reply.trim();
    li.classList.remove("streaming");
    text.textContent = reply || (hungUp ? "" : "(silence)");
    state.turns.push({ role: "customer", text: reply });
    state.hungUp = hungUp;
    if (model && !state.servedBy.includes(model)) state.servedBy.push(model);
    const promoted = model && /\/versions\/(\d+)$/.exec(model);
    if (promoted && Number(promoted[1]) !== state.setup.version) {  // a promotion landed during this call
      state.setup.version = state.lastVersion = Number(promoted[1]);
      $("served").textContent = versionLabel(state.setup);
      notice(`${state.setup.model} version ${promoted[1]} answers from this reply on: it was promoted during the call.`);
    }
    state.autoRetries = 0;
  } catch (err) {
    li.remove();  // a half reply is not part of the call; retrying asks again
    showError(err, customerReplies);
  } finally {
    setBusy(false);
    if (state.hungUp) endCall();  // the customer ended the call: on to the after-call view
    else if ($("error").hidden) $("line").focus();  // else the error's Retry button has it
  }
}

async function startCall() {
  clearError();
  let setup;
  try {
    setup = await loadSetup();
    if (setup.version === null) throw new HttpError(0, `No model version is being served right now${setup.problem ? `: ${setup.problem}` : ""}.`);
    state.customer = await chosenCustomer();
  } catch (err) {
    showError(err, startCall);
    return;
  }
  if (state.lastVersion !== null && setup.version !== state.lastVersion) {
    notice(`A new model version is answering: ${setup.model} version ${setup.version} (your last call was with version ${state.lastVersion}).`);
  } else {
    notice("");
  }
  state.lastVersion = setup.version;
  state.turns = [];
  state.servedBy = [];
  state.hungUp = false;
  state.autoRetries = 0;
  $("transcript").replaceChildren();
  $("call-with").textContent = `You are calling ${state.customer.label}. Version ${setup.version} answers.`;
  $("choose").hidden = true;
  $("after").hidden = true;
  $("call").hidden = false;
  $("line").value = "";
  if ($("customer-opens").checked && setup.opening_prompt) await customerReplies();
  $("line").focus();
}

async function say(event) {
  event.preventDefault();
  const line = $("line").value.trim();
  if (!line || state.busy) return;
  clearError();
  $("line").value = "";
  state.turns.push({ role: "seller", text: line });
  addTurn("seller", line);
  await customerReplies();
}

// ---------------------------------------------------------------- after the call

function transcript() {
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  return { call_id: `practice-${stamp}`, persona: state.customer.fields, system: state.customer.system,
    turns: state.turns.map((t) => ({ role: t.role, text: t.text })), served_by: state.servedBy };
}

function endCall() {
  if (state.busy) return;
  clearError();
  const call = transcript();
  const jsonl = `${JSON.stringify(call)}\n`;
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([jsonl], { type: "application/x-ndjson" }));
  link.download = `${call.call_id}.jsonl`;
  $("jsonl").value = jsonl;
  $("copied").textContent = "";
  $("ended-by").textContent = state.hungUp ? `${state.customer.label} hung up: the call is over.` : "";
  $("ended-by").hidden = !state.hungUp;
  $("call").hidden = true;
  $("after").hidden = false;
  link.focus();
  review(call);
}

function reviewSection(title, text, className) {
  const h = document.createElement("h3");
  h.textContent = title;
  const p = document.createElement("p");
  p.textContent = text;
  if (className) p.className = className;
  return [h, p];
}

async function review(call) {
  const box = $("review");
  box.replaceChildren();
  if (!state.setup.judge) {
    box.append(...reviewSection("Review", "No judge is configured (judge.* in the config), so this call gets no review."));
    return;
  }
  if (!call.turns.some((t) => t.role === "seller")) {
    box.append(...reviewSection("Review", "You said nothing in this call, so there is nothing to review."));
    return;
  }
  box.append(...reviewSection("Review", `The judge (${state.setup.judge}) is reviewing your call…`));
  try {
    const r = await api("/practice/api/review", call);
    box.replaceChildren(
      ...reviewSection("The judge's reasoning", r.rationale),
      ...reviewSection("Overview", r.overview),
      ...reviewSection("What went well", r.positive),
      ...reviewSection("What to do better", r.negative),
      ...reviewSection("Grade", `${r.grade} / 10`, "grade"),
    );
  } catch (err) {
    box.replaceChildren(...reviewSection("Review", "No review: see the message above."));
    showError(err, () => review(call));
  }
}

async function copyTranscript() {
  const text = $("jsonl").value;
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {  // no clipboard permission: copy the selected text the old way
    $("jsonl").select();
    document.execCommand("copy");
  }
  $("copied").textContent = "Transcript copied.";
}

async function newCall() {
  clearError();
  $("after").hidden = true;
  $("choose").hidden = false;
  try {
    fillCustomers(await loadSetup());
  } catch (err) {
    showError(err, newCall);
  }
  $("customer").focus();
}

// ---------------------------------------------------------------- wiring

async function init() {
  try {
    fillCustomers(await loadSetup());
    $("choose").hidden = false;
    $("key-form").hidden = true;
  } catch (err) {
    $("served").textContent = "Not connected";
    showError(err, init);
  }
}

$("customer").addEventListener("change", showCustomer);
$("start").addEventListener("click", startCall);
$("say").addEventListener("submit", say);
$("line").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("say").requestSubmit();
  }
});
$("end").addEventListener("click", endCall);
$("copy").addEventListener("click", copyTranscript);
$("new-call").addEventListener("click", newCall);
$("error-retry").addEventListener("click", retryNow);
$("error-dismiss").addEventListener("click", clearError);
$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  $("forget-key").hidden = true;
});
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  $("key-form").hidden = true;
  $("forget-key").hidden = false;
  const then = state.afterKey || init;
  state.afterKey = null;
  then();
});
init();
