#!/bin/sh
# The node test's stand-in for `claude`: deploy/runner-pod.yaml's wrapper runs `claude "$@"` under
# `leash confine`, and xtask installs this script as /usr/local/bin/claude in the agent image.
# It tries what an agent does and what it must not, one `AGENT <name> <outcome>` line each, for
# vm_init's `node` suite to judge; then it stays, trying again every second (the suite replaces
# the node daemon meanwhile), until the suite creates /workspace/.node-test/stop.
# UPSTREAM: the allowed HTTPS server's port; DENIED: one the policy does not name; CURL_ONLY: one
# that only /usr/bin/curl may use (a `binaries:` rule).
. /workspace/.node-test/env

status() { curl -sS -o /dev/null -w '%{http_code}' --max-time 20 "$@" 2>/dev/null; }

echo "AGENT uid $(id -u)"
echo "AGENT api-key $ANTHROPIC_API_KEY"
echo "AGENT allowed-https $(status -H "x-api-key: $ANTHROPIC_API_KEY" "https://127.0.0.1:$UPSTREAM/v1/messages")"
echo "AGENT unlisted-through-proxy $(status "http://127.0.0.1:$DENIED/")"
echo "AGENT unlisted-direct $(status --noproxy '*' "http://127.0.0.1:$DENIED/")"
echo "AGENT curl-only-by-curl $(status "http://127.0.0.1:$CURL_ONLY/")"
if wget -q -O /dev/null "http://127.0.0.1:$CURL_ONLY/" 2>/dev/null; then echo "AGENT curl-only-by-wget ok"; else echo "AGENT curl-only-by-wget refused"; fi
/usr/local/bin/lsm_probe --attempt open /etc/node-test/secret
# The parent is `leash confine` (its proxy), outside the sandbox, of the same user.
/usr/local/bin/lsm_probe --attempt ptrace-attach "$PPID"
if echo ok > /workspace/agent-was-here; then echo "AGENT write-workspace ok"; else echo "AGENT write-workspace failed"; fi
echo "AGENT done"
while [ ! -e /workspace/.node-test/stop ]; do
    echo "AGENT loop $(status -H "x-api-key: $ANTHROPIC_API_KEY" "https://127.0.0.1:$UPSTREAM/v1/messages") $(status --noproxy '*' "http://127.0.0.1:$DENIED/")"
    sleep 1
done
