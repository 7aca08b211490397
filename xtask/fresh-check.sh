#!/usr/bin/env bash
# The fresh-clone check (issue 17): as a new developer would, with no eBPF toolchain set up,
# run each of the README's two commands alone and see it succeed, as a normal user whose cargo
# root cannot find, and check that the build directory holds no root-owned file afterwards.
#
#   sudo xtask/fresh-check.sh [run] [test] [install]      (default: run test)
#
# Run as root; it changes nothing of the invoking user's own toolchain. It makes:
#   - a user `leash-fresh` with passwordless sudo (sudo is installed when missing);
#   - for that user, its own RUSTUP_HOME (a copy of this machine's toolchains) and CARGO_HOME
#     (rustup's proxies only: no bpf-linker, no virtiofsd, no crates), under /work/fresh-home;
#   - a clone of this checkout's HEAD at /work/fresh-clone, owned by that user.
# Before each command, nightly's rust-src and bpf-linker are removed again, so each command
# does the whole set-up itself. Logs: /work/fresh-home/<command>.log. Expect 15-30 minutes.
set -euo pipefail

[[ $EUID -eq 0 ]] || { echo "fresh-check: run as root (it creates a user and its toolchain)" >&2; exit 2; }
src=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
user=leash-fresh
home_dir=/work/fresh-home
clone=/work/fresh-clone
phases=("$@")
((${#phases[@]})) || phases=(run test)
for p in "${phases[@]}"; do
    case $p in run | test | install) ;; *) echo "fresh-check: unknown command '$p' (run, test, install)" >&2; exit 2 ;; esac
done

say() { printf '\nfresh-check: %s\n' "$*"; }

command -v sudo >/dev/null || { say "installing sudo"; apt-get install -y -q sudo >/dev/null; }
id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
echo "$user ALL=(ALL:ALL) NOPASSWD: ALL" >/etc/sudoers.d/$user
chmod 0440 /etc/sudoers.d/$user

say "toolchains for $user: RUSTUP_HOME and CARGO_HOME of its own under $home_dir"
rustup_src=${RUSTUP_HOME:-$HOME/.rustup}
cargo_src=${CARGO_HOME:-$HOME/.cargo}
rm -rf "$home_dir"
mkdir -p "$home_dir/rustup" "$home_dir/cargo/bin"
cp -a "$rustup_src/settings.toml" "$rustup_src/toolchains" "$home_dir/rustup/"
[[ -d $rustup_src/update-hashes ]] && cp -a "$rustup_src/update-hashes" "$home_dir/rustup/"
cp "$(readlink -f "$cargo_src/bin/rustup")" "$home_dir/cargo/bin/rustup"
for tool in cargo rustc rustdoc cargo-clippy clippy-driver rustfmt cargo-fmt; do
    ln -s rustup "$home_dir/cargo/bin/$tool"
done
chown -R "$user:" "$home_dir"

say "clone of $src (HEAD $(git -C "$src" rev-parse --short HEAD)) at $clone"
rm -rf "$clone"
git clone -q "$src" "$clone"
chown -R "$user:" "$clone"

as_user() {
    runuser -u "$user" -- env -i HOME="/home/$user" USER="$user" LOGNAME="$user" TERM=dumb LANG=C.UTF-8 \
        PATH="$home_dir/cargo/bin:/usr/local/bin:/usr/bin:/bin" \
        RUSTUP_HOME="$home_dir/rustup" CARGO_HOME="$home_dir/cargo" \
        bash -c "cd $clone && $1"
}

say "as $user: cargo is $(as_user 'command -v cargo'); as root through sudo: $(as_user 'sudo sh -c "command -v cargo || echo not found"')"

fresh_toolchain() {
    as_user 'rustup component remove rust-src --toolchain nightly 2>/dev/null || true'
    rm -f "$home_dir/cargo/bin/bpf-linker" "$home_dir/cargo/.crates.toml" "$home_dir/cargo/.crates2.json"
    as_user 'ls "$(rustup run nightly rustc --print sysroot)/lib/rustlib/src/rust/library/core" >/dev/null 2>&1 && echo "rust-src: still there" || echo "rust-src: absent"; command -v bpf-linker || echo "bpf-linker: absent"'
}

failed=0
for p in "${phases[@]}"; do
    case $p in
    run) cmd="cargo xtask run" ;;
    test) cmd="cargo xtask test" ;;
    install) cmd="cargo xtask install --prefix $home_dir/prefix" ;;
    esac
    say "fresh toolchain state before \`$cmd\`:"
    fresh_toolchain
    say "as $user in $clone: $cmd (log: $home_dir/$p.log)"
    start=$(date +%s)
    if as_user "$cmd" >"$home_dir/$p.log" 2>&1; then status=0; else status=$?; fi
    secs=$(($(date +%s) - start))
    grep -aE '^(setup|xtask|install|vm|vm_init|leash|audit|demo):|^Next:|^  sudo|as-expected|UNEXPECTED|^test result:|FAILED|panicked' "$home_dir/$p.log" | grep -v '^test result: ok. 0 passed' | tail -n 60 || true
    say "\`$cmd\`: exit $status after ${secs} s"
    ((status == 0)) || failed=1
done

say "files under $clone/target not owned by $user:"
foreign=$(find "$clone/target" ! -user "$user" | wc -l)
find "$clone/target" ! -user "$user" -printf '  %u %p\n' | head -n 20
echo "  $foreign file(s)"
((foreign == 0)) || failed=1
((failed == 0)) && say "PASS" || say "FAIL"
exit $failed
