// Autobahn|JS peers for tests/test_wamp_apps.py: a callee (first ticket) registers app.js.add,
// answering with progressive results, and subscribes to app.js.news; a caller (second ticket)
// publishes app.js.news, calls app.js.add with receive_progress, and calls a procedure nobody
// registered. Prints one JSON line of what each side saw, then leaves.
// Usage: node apps.js URL CALLEE_TICKET CALLER_TICKET json|msgpack [CALLER_URL]
// (the caller on CALLER_URL, another process of the deployment, when given)
const autobahn = require("autobahn");
const [calleeUrl, calleeTicket, callerTicket, serializer, callerUrl] = process.argv.slice(2);

function open(ticket, url) {
  const serializers = [serializer === "msgpack" ? new autobahn.serializer.MsgpackSerializer() : new autobahn.serializer.JSONSerializer()];
  const connection = new autobahn.Connection({
    url, realm: "eform", serializers, authmethods: ["ticket"], onchallenge: () => ticket, max_retries: 0,
  });
  return new Promise((resolve, reject) => {
    connection.onopen = (session) => resolve({ connection, session });
    connection.onclose = (reason) => { if (reason !== "closed") reject(new Error(reason)); };
    connection.open();
  });
}

(async () => {
  const seen = {};
  const callee = await open(calleeTicket, calleeUrl);
  const caller = await open(callerTicket, callerUrl || calleeUrl);
  let news;
  const heard = new Promise((resolve) => { news = resolve; });
  await callee.session.subscribe("app.js.news", (args, kwargs, details) => {
    news({ args, kwargs, publisher_authrole: details.publisher_authrole });
  });
  await callee.session.register("app.js.add", (args, kwargs, details) => {
    if (details.progress) details.progress(["half"], { of: args.length });
    return new autobahn.Result([args.reduce((a, b) => a + b, 0)], { caller_authrole: details.caller_authrole });
  });
  await caller.session.publish("app.js.news", ["hello", 1], { n: 2 }, { acknowledge: true });
  seen.event = await heard;
  const progress = [];
  const result = await caller.session.call("app.js.add", [1, 2, 3.5], {}, { receive_progress: true })
    .then((r) => r, (e) => { throw e; }, (p) => progress.push({ args: p.args, kwargs: p.kwargs }));
  seen.result = { args: result.args, kwargs: result.kwargs };
  seen.progress = progress;
  try {
    await caller.session.call("app.js.nobody");
  } catch (error) {
    seen.error = error.error;
  }
  console.log(JSON.stringify(seen));
  caller.connection.close();
  callee.connection.close();
})().catch((error) => { console.error(error); process.exitCode = 1; });
