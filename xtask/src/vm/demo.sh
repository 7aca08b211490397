#!/bin/sh
# The demo agent of `cargo xtask run`: runs under `leash run` in the VM, tries things the demo
# policy allows and things it forbids, and prints one verdict per try. vm_init serves HTTP on
# 127.0.0.1:8080 (allowed by the demo policy) and 127.0.0.1:8081 (not allowed); vm_init prints
# leash's audit lines after the agent exits. Exits 1 when a try did not go as the demo policy
# says it should.

tries=0
unexpected=0

try() {
    what=$1
    expect=$2
    shift 2
    out=$("$@" 2>&1)
    status=$?
    if [ $status -eq 0 ]; then verdict=ALLOWED; else verdict=DENIED; fi
    tries=$((tries + 1))
    if [ "$verdict" = "$expect" ]; then
        mark=as-expected
    else
        mark=UNEXPECTED
        unexpected=$((unexpected + 1))
    fi
    printf '%-52s %-8s %-12s %s\n' "$what" "$verdict" "$mark" "$(echo "$out" | tr '\n' ' ')"
}

echo "demo: running as $(id), in $(pwd)"
echo "demo: HTTP_PROXY=$HTTP_PROXY"
try "GET 127.0.0.1:8080 through the proxy (allowed)" ALLOWED netprobe get proxy 127.0.0.1:8080
try "GET 127.0.0.1:8081 through the proxy (not in policy)" DENIED netprobe get proxy 127.0.0.1:8081
try "connect 127.0.0.1:8080 directly, skipping the proxy" DENIED netprobe tcp 127.0.0.1:8080
try "UDP datagram to 127.0.0.1:53" DENIED netprobe udp 127.0.0.1:53
try "ping 127.0.0.1" DENIED netprobe ping 127.0.0.1:0
try "raw ICMP socket" DENIED netprobe raw 127.0.0.1:0
try "read the project directory" ALLOWED ls .
try "write into the project directory (read-only share)" DENIED touch ./.leash-demo-write
try "read /etc/leash-vm/secret (kernel.deny_open)" DENIED cat /etc/leash-vm/secret
try "read the secret through a symlink" DENIED cat /usr/share/leash/secret-link
cp /bin/busybox /tmp/copied-tool 2>/dev/null && chmod 755 /tmp/copied-tool
try "run a program copied to /tmp (not in kernel.exec.allow)" DENIED /tmp/copied-tool true
try "run /bin/true (in kernel.exec.allow)" ALLOWED /bin/true

echo "demo: $tries tries, $unexpected unexpected"
[ "$unexpected" -eq 0 ]
