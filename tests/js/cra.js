// Autobahn|JS joins /wamp by WAMP-CRA for tests/test_wamp_cra.py: the issued authid in HELLO,
// the challenge signed with auth_cra.sign(secret, challenge). Prints one JSON line of what
// WELCOME said, then leaves.
// Usage: node cra.js URL AUTHID SECRET
const autobahn = require("autobahn");
const [url, authid, secret] = process.argv.slice(2);

const connection = new autobahn.Connection({
  url, realm: "eform", authmethods: ["wampcra"], authid, max_retries: 0,
  onchallenge: (session, method, extra) => autobahn.auth_cra.sign(secret, extra.challenge),
});
connection.onopen = (session, details) => {
  console.log(JSON.stringify({ authid: details.authid, authrole: details.authrole, authmethod: details.authmethod }));
  connection.close();
};
connection.onclose = (reason, details) => {
  if (reason !== "closed") {
    console.error(reason, JSON.stringify(details));
    process.exitCode = 1;
  }
};
connection.open();
