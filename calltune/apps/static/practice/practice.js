// The practice page: the seller chooses a customer, holds a call with the model (streamed replies from
// /v1/chat/completions), ends it and reads the coach's review beside the call (and the judge's, with one configured);
// the call goes into the practice history ("My progress") under the signed-in seller's name (or, without sign-in,
// a typed one); a manager also sees the team. Plain JavaScript, no build step; every text from the server goes into
// the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "calltune.apiKey";  // sessionStorage only: the key leaves with the tab
const SELLER = "calltune.seller";  // the name calls are filed under, for this tab
const UNSAVED = "calltune.unsavedCall";  // a finished call not yet in the history: kept across a reload of the tab
const params = new URLSearchParams(location.search);
// Longest silence while waiting for a reply: a little over the server's own request timeout, unless set in the URL.
const timeoutS = () => Number(params.get("timeout_s")) || (state.setup ? state.setup.timeout_s + 5 : 120);
const AUTO_RETRIES = 5;  // 429/503 with Retry-After are retried this often before the seller is asked

const state = {
  setup: null,       // GET /practice/api/setup
  customer: null,    // {label, fields, system}
  callId: null,      // this call's key: a retried save stores it once
  turns: [],         // [{role: "seller"|"customer", text}]
  servedBy: [],      // model names that answered this call
  hungUp: false,     // the customer ended this call
  lastVersion: null, // the version that answered the previous call
  busy: false,
  retry: null,       // what "Retry now" does
  autoRetries: 0,
  countdown: null,
  afterKey: null,    // what to do once the seller has entered the API key
  progressBefore: null,  // the history page to read next ("Older calls")
  progressFrom: null,    // the section "Back" returns to
  progressSeller: null,  // a manager looking at another seller's calls
  teamAfter: null,       // the team page to read next ("More sellers")
  team: [],              // the sellers shown in the team view
};
const SECTIONS = ["choose", "call", "after", "team"];  // what "My progress" and "Team" return from

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
  if (err.status === 401) {
    askForKey(sessionStorage.getItem(KEY) ? "The key was refused; enter it again."
      : "This server needs your key (from `calltune users add`) or the API's key.", retry);
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
  $("name-notice").textContent = setup.name_notice;
  $("forget-key").hidden = !sessionStorage.getItem(KEY);
  const who = setup.caller || { name: null, manager: false };
  $("name-field").hidden = Boolean(who.name);  // signed in: calls are filed under that name
  $("signed-in").hidden = !who.name;
  $("signed-in").textContent = who.name ? `Signed in as ${who.name}${who.manager ? " (manager)" : ""}` : "";
  $("team-open").hidden = !(who.name && who.manager);
  return setup;
}

function seller() {
  const who = state.setup && state.setup.caller;
  if (who && who.name) return who.name;
  return $("seller").value.trim().replace(/\s+/g, " ");
}

function newCallId() {  // crypto.randomUUID needs a secure context; a LAN address over http is not one
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `practice-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
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
  state.callId = newCallId();
  sessionStorage.setItem(SELLER, seller());
  state.turns = [];
  state.servedBy = [];
  state.hungUp = false;
  state.autoRetries = 0;
  $("transcript").replaceChildren();
  $("call-with").textContent = `You are calling ${state.customer.label}. Version ${setup.version} answers.`;
  for (const id of ["choose", "after", "progress", "team"]) $(id).hidden = true;
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
  return { call_id: state.callId, persona: state.customer.fields, system: state.customer.system,
    turns: state.turns.map((t) => ({ role: t.role, text: t.text })), served_by: state.servedBy };
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function showCall(turns) {
  const list = $("after-transcript");
  list.replaceChildren();
  turns.forEach((t, i) => {
    const li = el("li", null, `turn ${t.role}`);
    li.dataset.turn = String(i);
    li.tabIndex = -1;
    li.append(el("span", t.role === "seller" ? "You" : `Customer (${state.customer.label})`, "who"),
      el("span", t.text || "(silence)", "text"));
    list.append(li);
  });
}

// A quoted moment: a button that scrolls the call to its turn and marks it.
function quote(turn, text) {
  const button = el("button", `“${text}”`, "quote");
  button.type = "button";
  button.dataset.turn = String(turn);
  button.title = "Show this moment in the call";
  button.addEventListener("click", () => {
    const li = $("after-transcript").querySelector(`[data-turn="${turn}"]`);
    if (!li) return;
    for (const old of document.querySelectorAll(".turn.flash")) old.classList.remove("flash");
    li.classList.add("flash");
    li.scrollIntoView({ block: "center" });
    li.focus({ preventScroll: true });
  });
  return button;
}

function interval(f, digits = 2) {
  if (!f || f.value === null || f.value === undefined) return "n/a";
  const v = f.value.toFixed(digits);
  return f.low === null || f.low === undefined ? v : `${v} [${f.low.toFixed(digits)}, ${f.high.toFixed(digits)}]`;
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
  showCall(call.turns);
  $("call").hidden = true;
  $("after").hidden = false;
  $("after-title").focus();
  review(call);
}

async function review(call) {
  $("coach-review").replaceChildren();
  $("judge-review").replaceChildren();
  if (!call.turns.some((t) => t.role === "seller" && t.text.trim())) {
    $("coach-review").append(el("h3", "Your review"),
      el("p", "You said nothing in this call, so there is nothing of yours to review (no grade)."));
    return;
  }
  await coachReview(call);
  await judgeReview(call);
}

async function coachReview(call) {
  const box = $("coach-review");
  box.replaceChildren(el("h3", "Your review"), el("p", "The coach is reading your call…", "hint"));
  const body = { ...call, seller: seller() };
  sessionStorage.setItem(UNSAVED, JSON.stringify(body));
  try {
    const saved = await api("/practice/api/calls", body);
    sessionStorage.removeItem(UNSAVED);
    box.replaceChildren(...coachSections(saved.review));
    if (saved.stored) box.append(el("p", `Saved in the practice history of “${seller()}”.`, "hint saved"));
  } catch (err) {
    box.replaceChildren(el("h3", "Your review"), el("p", "No review: see the message above."));
    showError(err, () => coachReview(call));  // the same call_id: a retry stores the call once
  }
}

function coachSections(r) {
  const out = [el("h3", "Your review"), el("p", r.notice, "hint")];
  out.push(el("h4", "Grade estimate"));
  const g = r.grade;
  if (g.estimate === null || g.estimate === undefined) {
    out.push(el("p", `No grade: ${g.why}.`, "no-grade"));
  } else {
    out.push(el("p", `${g.shown} out of ${g.scale[1]}`, "estimate"));
    out.push(el("p", `How sure: on ${g.n_test} graded test calls this estimate was off by ${interval(g.mae, 1)} grade `
      + `points on average (always guessing the average grade: ${interval(g.baseline_mae, 1)}); rank agreement with `
      + `the real grades ${interval(g.spearman)}.${g.within_noise ? " Its edge over guessing the average is within "
      + "noise: take it as a rough hint." : ""}`, "hint"));
  }
  out.push(el("h4", "How you talked"));
  const list = el("ul", null, "analytics");
  for (const a of r.analytics) {
    const li = el("li");
    li.dataset.metric = a.metric;
    li.append(el("strong", `${a.label}: `), el("span", a.shown, "value"));
    if (a.band) li.append(el("span", ` · ${a.band}${a.percentile !== undefined ? `; you: percentile ${a.percentile}` : ""}`, "hint"));
    for (const e of a.evidence.slice(0, 3)) li.append(quote(e.turn, e.quote));
    list.append(li);
  }
  out.push(list);
  if (!r.scorecard) return out;
  out.push(el("h4", "The company's scorecard"));
  for (const c of r.criteria) {
    const section = el("div", null, "criterion");
    section.append(el("h5", c.original && c.original !== c.title ? `${c.title} (${c.original})` : c.title));
    const items = el("ul");
    for (const item of c.items) {
      const li = el("li");
      const judged = item.verdict !== "not judged";
      li.append(el("span", item.verdict, `verdict ${judged ? item.verdict : "unjudged"}`), el("span", item.name));
      const f = item.figures;
      if (judged) {
        li.append(el("p", `accuracy on ${f.n_test} test calls ${interval(f.accuracy)} against always “${f.majority}” `
          + `${interval(f.baseline_accuracy)}${item.within_noise ? ": within noise" : ""}`, "figures"));
      } else {
        li.append(el("p", `Not judged: ${item.why}.`, "figures"));
      }
      if (item.evidence.length) li.append(el("p", `The line that weighed most toward “${item.verdict}”:`, "figures"));
      for (const e of item.evidence) li.append(quote(e.turn, e.quote));
      items.append(li);
    }
    section.append(items);
    if (c.similar.length) {
      section.append(el("p", "Feedback that similar calls received (the company's words on other calls, not a "
        + "judgement of this one):", "similar"));
      const similar = el("ul", null, "similar");
      for (const s of c.similar) similar.append(el("li", `${s.summary} (a call graded ${s.grade})`));
      section.append(similar);
    }
    out.push(section);
  }
  return out;
}

async function judgeReview(call) {
  const box = $("judge-review");
  if (!state.setup.judge) {
    box.replaceChildren(el("p", "No judge is configured (judge.* in the config), so there is no judge's review; the "
      + "coach's review above needs none.", "hint"));
    return;
  }
  box.replaceChildren(el("h3", `The judge's review (${state.setup.judge})`),
    el("p", `The judge (${state.setup.judge}) is reviewing your call…`, "hint"));
  try {
    const r = await api("/practice/api/review", { ...call, seller: seller() });
    box.replaceChildren(...judgeSections(r));
  } catch (err) {
    box.replaceChildren(el("h3", `The judge's review (${state.setup.judge})`), el("p", "No judge's review: see the message above."));
    showError(err, () => judgeReview(call));
  }
}

function judgeSections(r) {
  const out = [el("h3", `The judge's review (${state.setup.judge})`)];
  for (const [title, text] of [["The judge's reasoning", r.rationale], ["Overview", r.overview],
    ["What went well", r.positive], ["What to do better", r.negative]]) out.push(el("h4", title), el("p", text));
  for (const f of r.feedbacks || []) {
    const section = el("div", null, "criterion");
    section.append(el("h5", f.title), el("p", f.summary));
    if (f.evidence) {
      section.append(f.evidence_turn === null ? el("p", `“${f.evidence}” (not found in your lines)`, "hint")
        : quote(f.evidence_turn, f.evidence));
    }
    const items = el("ul");
    for (const c of f.checklist) {
      const li = el("li");
      li.append(el("span", c.status ? "yes" : "no", `verdict ${c.status ? "yes" : "no"}`), el("span", c.type));
      items.append(li);
    }
    section.append(items);
    out.push(section);
  }
  out.push(el("h4", "Grade"), el("p", `${r.grade} / ${state.setup.coach.scale ? state.setup.coach.scale[1] : 10}`, "grade"));
  const raw = el("details");
  raw.append(el("summary", "The review as JSON, in the shape of the company's export"), el("pre", JSON.stringify(r, null, 2)));
  out.push(raw);
  return out;
}

// ---------------------------------------------------------------- my progress

function chart(calls) {
  const graded = calls.some((c) => c.grade !== null);
  const points = calls.slice().reverse().map((c) => (graded ? c.grade : c.analytics.talk_ratio))
    .filter((v) => v !== null && v !== undefined);
  const svg = $("progress-chart");
  const ns = svg.namespaceURI;  // the page's own <svg>: its children are made in its namespace
  const make = (tag, attrs) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  };
  svg.replaceChildren();
  $("progress-chart-label").textContent = !points.length ? ""
    : graded ? "Grade estimates of your calls, oldest to newest" : "Your share of the words, oldest to newest";
  if (!points.length) return;
  const [low, high] = graded ? (state.setup.coach.scale || [0, 10]) : [0, 1];
  const w = 360, h = 130, pad = 28;
  const x = (i) => pad + (points.length === 1 ? (w - 2 * pad) / 2 : (i * (w - 2 * pad)) / (points.length - 1));
  const y = (v) => h - pad - ((v - low) / (high - low || 1)) * (h - 2 * pad);
  for (const [v, text] of [[low, graded ? String(low) : "0%"], [high, graded ? String(high) : "100%"]]) {
    const t = make("text", { x: 2, y: y(v) + 4, "font-size": 10 });
    t.textContent = text;
    svg.append(t, make("line", { x1: pad, x2: w - pad, y1: y(v), y2: y(v), stroke: "#d5dae1" }));
  }
  svg.append(make("polyline", { points: points.map((v, i) => `${x(i)},${y(v)}`).join(" "), fill: "none",
    stroke: "#1f5fbf", "stroke-width": 2 }));
  points.forEach((v, i) => {
    const dot = make("circle", { cx: x(i), cy: y(v), r: 4, fill: "#1f5fbf", class: "point" });
    const tip = make("title", {});
    tip.textContent = graded ? `call ${i + 1}: about ${v.toFixed(1)}` : `call ${i + 1}: ${(v * 100).toFixed(0)}%`;
    dot.append(tip);
    svg.append(dot);
  });
}

function progressRow(c) {
  const tr = document.createElement("tr");
  const a = c.analytics;
  const cells = [new Date(c.at).toLocaleString(), c.customer || "", c.grade_shown || "no grade",
    c.judge_grade === null ? "-" : String(c.judge_grade), a.talk_ratio === null ? "-" : `${Math.round(a.talk_ratio * 100)}%`,
    String(a.questions ?? "-"), a.next_step ? "yes" : "no"];
  for (const text of cells) tr.append(el("td", text));
  return tr;
}

async function showProgress(more = false, of = null) {
  clearError();
  if (!more) state.progressSeller = of;
  const name = state.progressSeller || seller() || sessionStorage.getItem(SELLER) || "";
  if (!more) {
    state.progressFrom = SECTIONS.find((id) => !$(id).hidden) || "choose";
    state.progressBefore = null;
    $("progress-table").querySelector("tbody").replaceChildren();
  }
  for (const id of SECTIONS) $(id).hidden = true;
  $("progress").hidden = false;
  $("progress-title").textContent = state.progressSeller ? `Progress of ${name}` : "My progress";
  $("progress-notice").textContent = state.setup ? state.setup.name_notice : "";
  if (!name) {
    $("progress-who").textContent = "Type your name where you choose a customer: your calls are kept under it.";
    $("progress-more").hidden = true;
    chart([]);
    return;
  }
  $("progress-who").textContent = `Practice calls of “${name}”.`;
  try {
    const query = new URLSearchParams({ seller: name });
    if (more && state.progressBefore !== null) query.set("before", String(state.progressBefore));
    const page = await api(`/practice/api/history?${query}`);
    const body = $("progress-table").querySelector("tbody");
    for (const c of page.calls) body.append(progressRow(c));
    state.progressCalls = more ? [...(state.progressCalls || []), ...page.calls] : page.calls;
    state.progressBefore = page.next;
    $("progress-more").hidden = page.next === null;
    if (!state.progressCalls.length) $("progress-who").textContent = `No practice calls under “${name}” yet.`;
    chart(state.progressCalls);
  } catch (err) {
    showError(err, () => showProgress(more));
  }
  $("progress-title").focus();
}

function closeProgress() {
  $("progress").hidden = true;
  $(state.progressFrom || "choose").hidden = false;
}

// ---------------------------------------------------------------- the team (managers)

function fixed(v, digits = 1) {
  return v === null || v === undefined ? "-" : v.toFixed(digits);
}

// The checklist items one seller misses most: a bar per item, its length the share of judged calls that missed it.
function missedChart(s) {
  const svg = $("team-chart");
  const ns = svg.namespaceURI;
  const make = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  };
  svg.replaceChildren();
  if (!s || !s.missed.length) {
    $("team-chart-label").textContent = s ? `${s.seller}: no checklist item missed in these calls.` : "";
    return;
  }
  $("team-chart-label").textContent = `The checklist items ${s.seller} misses most (share of the judged calls)`;
  const left = 230, width = 200, row = 26;
  svg.setAttribute("viewBox", `0 0 480 ${12 + s.missed.length * row}`);
  s.missed.forEach((m, i) => {
    const y = 8 + i * row;
    const share = m.missed / m.judged;
    const label = make("text", { x: 0, y: y + 14, "font-size": 11 }, m.item.length > 38 ? `${m.item.slice(0, 37)}…` : m.item);
    label.append(make("title", {}, m.item));
    const bar = make("rect", { x: left, y, width: Math.max(2, share * width), height: 18, fill: "#a4161a", class: "missed-bar" });
    bar.append(make("title", {}, `${m.item}: missed in ${m.missed} of ${m.judged} judged calls`));
    svg.append(label, bar, make("text", { x: left + share * width + 4, y: y + 14, "font-size": 11 },
      `${m.missed}/${m.judged}`));
  });
}

function teamRow(s) {
  const tr = document.createElement("tr");
  tr.dataset.seller = s.seller;
  const days = s.days;
  const weighted = (key) => {
    const graded = days.filter((d) => d[key] !== null);
    const n = graded.reduce((a, d) => a + d.calls, 0);
    return n ? graded.reduce((a, d) => a + d[key] * d.calls, 0) / n : null;
  };
  const talk = s.analytics.talk_ratio;
  const top = s.missed.length ? `${s.missed[0].item} (${s.missed[0].missed}/${s.missed[0].judged})` : "-";
  for (const text of [s.seller, String(s.calls), fixed(weighted("grade")), fixed(weighted("judge_grade")),
    talk === null || talk === undefined ? "-" : `${Math.round(talk * 100)}%`, top]) tr.append(el("td", text));
  const actions = el("td");
  const chartButton = el("button", "Missed items", "secondary team-missed");
  chartButton.type = "button";
  chartButton.addEventListener("click", () => missedChart(s));
  const calls = el("button", "Calls", "secondary team-calls");
  calls.type = "button";
  calls.addEventListener("click", () => showProgress(false, s.seller));
  actions.append(chartButton, calls);
  tr.append(actions);
  return tr;
}

async function showTeam(more = false) {
  clearError();
  if (!more) {
    state.teamAfter = null;
    state.team = [];
    $("team-table").querySelector("tbody").replaceChildren();
  }
  for (const id of [...SECTIONS, "progress"]) $(id).hidden = true;
  $("team").hidden = false;
  try {
    const query = new URLSearchParams();
    if (more && state.teamAfter !== null) query.set("after", state.teamAfter);
    const page = await api(`/practice/api/team?${query}`);
    for (const s of page.sellers) $("team-table").querySelector("tbody").append(teamRow(s));
    state.team = [...state.team, ...page.sellers];
    state.teamAfter = page.next;
    $("team-more").hidden = page.next === null;
    $("team-who").textContent = state.team.length ? `${state.team.length} sellers.` : "No seller has practised yet.";
    if (!more) missedChart(state.team.find((s) => s.missed.length) || null);
  } catch (err) {
    showError(err, () => showTeam(more));
  }
  $("team-title").focus();
}

function closeTeam() {
  $("team").hidden = true;
  $("choose").hidden = false;
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
  for (const id of ["after", "progress", "team"]) $(id).hidden = true;
  $("choose").hidden = false;
  try {
    fillCustomers(await loadSetup());
  } catch (err) {
    showError(err, newCall);
  }
  $("customer").focus();
}

// ---------------------------------------------------------------- wiring

// A call that was ended but not saved when the tab was reloaded (the database was lost, say): saved now, under its
// own call_id, so it is stored once however often it was sent.
async function saveUnsaved() {
  const raw = sessionStorage.getItem(UNSAVED);
  if (!raw) return;
  const call = JSON.parse(raw);
  try {
    const saved = await api("/practice/api/calls", call);
    sessionStorage.removeItem(UNSAVED);
    if (saved.stored) notice(`The call you ended earlier is now saved in your practice history (${call.call_id}).`);
  } catch (err) {
    showError(err, saveUnsaved);
  }
}

async function init() {
  try {
    fillCustomers(await loadSetup());
    $("choose").hidden = false;
    $("key-form").hidden = true;
  } catch (err) {
    $("served").textContent = "Not connected";
    showError(err, init);
    return;
  }
  await saveUnsaved();
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
$("progress-open").addEventListener("click", () => showProgress());
$("progress-after").addEventListener("click", () => showProgress());
$("progress-more").addEventListener("click", () => showProgress(true));
$("progress-close").addEventListener("click", closeProgress);
$("team-open").addEventListener("click", () => showTeam());
$("team-more").addEventListener("click", () => showTeam(true));
$("team-close").addEventListener("click", closeTeam);
$("seller").value = sessionStorage.getItem(SELLER) || "";
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
