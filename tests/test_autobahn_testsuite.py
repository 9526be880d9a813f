"""WebSocket protocol compliance: the echo namespace the Autobahn Testsuite talks to, and the
suite itself (scripts/autobahn-testsuite: cases 1-10, and 12-13 with compression on, their
smaller message sizes) run against a real `twistd eformws`."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import pytest_twisted
from processes import _reactor, environment
from twisted.internet.utils import getProcessOutputAndValue

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "autobahn-testsuite"
SUITE_TIMEOUT = 1200.0  # building the Python 2.7 virtualenv (first run) plus the suite: ~40 s here
CASES_1_TO_10 = 301  # autobahntestsuite 0.8.2: sections 1-7, 9 and 10 (section 8 has no cases)
DEFLATE_CASES = 72  # sections 12 and 13 (permessage-deflate), message sizes 1 to 6 of 18 each
CASES = CASES_1_TO_10 + DEFLATE_CASES

ECHO_CONFIG = """
[[namespaces]]
path = "/ws/echo"
require_auth = false
echo = true
"""


@pytest.fixture
def start_echo_server(start_configured):
    """`await start_echo_server()`: a server from a TOML file with the echo namespace."""
    return lambda: start_configured(ECHO_CONFIG)


@pytest_twisted.ensureDeferred
async def test_echo_namespace_sends_nothing_first_and_echoes_text_and_binary_as_they_came(start_echo_server):
    from eformws.transports.legacy import LegacyProtocol

    server = await start_echo_server()
    client = await server.connect("/ws/echo")
    # A protocol message is not answered (no pong): it comes back as it was sent. Being the
    # first message received, it also shows that the server said nothing on open.
    ping = json.dumps({"type": "ping", "data": {"timestamp": "t"}})
    await client.send(ping)
    assert await client.recv_raw() == ping
    text = "héllo \U0001f600 " * 1000
    await client.send(text)
    assert await client.recv_raw() == text
    binary = bytes(range(256)) * 40
    await client.send(binary)
    echoed = await client.recv_raw()
    assert isinstance(echoed, bytes) and echoed == binary
    # The same protocol class as the real namespaces serves it.
    (connection,) = server.hub.connections()
    assert isinstance(connection, LegacyProtocol) and connection.namespace == "/ws/echo"
    await client.close()


@pytest.mark.slow  # ~45 s: the whole Autobahn Testsuite (cases 1-10) against a real twistd
@pytest_twisted.ensureDeferred
async def test_autobahn_testsuite_cases_1_to_10_12_and_13_have_no_failed_and_no_non_strict_case(tmp_path):
    """The CI hook of scripts/autobahn-testsuite (docs/reliability.md). Without a Python 2.7
    it fails, unless AUTOBAHN_SKIP_WITHOUT_PY2=1 is set: then it is skipped."""
    bash = shutil.which("bash")
    reports = tmp_path / "reports"
    env = environment()
    env.setdefault("AUTOBAHN_TIMEOUT", "900")
    d = getProcessOutputAndValue(
        bash, [str(SCRIPT), "--reports", str(reports)], env=env, path=str(ROOT), reactor=_reactor()
    )
    d.addTimeout(SUITE_TIMEOUT, _reactor())
    out, err, code = await d
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if code == 0 and "no Python 2.7 interpreter" in err:
        if os.environ.get("EFORMWS_TEST_REQUIRE_ALL"):  # scripts/test: what it needs must be there
            pytest.fail(f"the Autobahn Testsuite needs a Python 2.7 interpreter: {err.strip()}")
        pytest.skip(err.strip())
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"

    counts = dict(re.findall(r"^  (OK|NON-STRICT|INFORMATIONAL|FAILED|UNIMPLEMENTED) +(\d+)$", out, re.MULTILINE))
    assert set(counts) == {"OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"}, out
    counts = {behavior: int(count) for behavior, count in counts.items()}
    assert counts["FAILED"] == 0 and counts["NON-STRICT"] == 0, out
    assert counts["UNIMPLEMENTED"] == 0, out
    assert re.search(rf"^autobahn-testsuite: {CASES} cases in \d+s; eformws exited 0;", out, re.MULTILINE), out
    assert counts["OK"] + counts["INFORMATIONAL"] == CASES, out
    assert "compression on" in out
    assert "passed (0 FAILED, 0 NON-STRICT)" in out
    # Every case the suite ran is in its report, and each was really played against eformws.
    index = json.loads((reports / "index.json").read_text())["eformws"]
    assert len(index) == CASES
    assert sum(case.startswith(("12.", "13.")) for case in index) == DEFLATE_CASES
    first = json.loads((reports / index["1.1.1"]["reportfile"]).read_text())
    assert "Server: eformws" in first["httpResponse"]
