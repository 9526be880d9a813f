// Autobahn|JS peer for tests/test_wamp.py: joins realm eform with a ticket, subscribes to
// the prefix eform.lockers, prints {"ready":...} once subscribed, then prints the first
// event it gets as {"envelope","topic"} and leaves. Usage: node subscriber.js URL TICKET json|msgpack
const autobahn = require("autobahn");
const [url, ticket, serializer] = process.argv.slice(2);
const serializers = [serializer === "msgpack" ? new autobahn.serializer.MsgpackSerializer() : new autobahn.serializer.JSONSerializer()];
const connection = new autobahn.Connection({
  url, realm: "eform", serializers, authmethods: ["ticket"], onchallenge: () => ticket, max_retries: 0,
});
connection.onopen = async (session, details) => {
  await session.subscribe("eform.lockers", (args, kwargs, event) => {
    console.log(JSON.stringify({ envelope: args[0], topic: event.topic }));
    connection.close();
  }, { match: "prefix" });
  const status = await session.call("eform.status");
  console.log(JSON.stringify({ ready: true, authmethod: details.authmethod, wamp: status.endpoints["/wamp"] }));
};
connection.onclose = (reason) => { process.exitCode = reason === "closed" ? 0 : 1; };
connection.open();
