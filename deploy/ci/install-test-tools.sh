#!/usr/bin/env bash
# Install the system tools some tests need, if they are missing:
#
#   promtool, prometheus   Debian package `prometheus`   (tests/integration/test_deploy.py)
#   pg_ctl, postgres       Debian package `postgresql`   (the history tests' throwaway server)
#   /usr/bin/chromium      Debian package `chromium`     (tests/integration/test_ui.py, headless)
#   a C compiler           Debian package `gcc`          (the compiled model: deploy/ci/compiled_model.py)
#   Python.h               Debian package `python3-dev`  (the same, when the Python is Debian's)
#
# Idempotent: does nothing (not even `apt-get update`) when all are present.
# Missing ones are installed in one apt transaction, without recommends and
# non-interactively; the Debian services they ship are NOT started (a
# policy-rc.d that answers 101 is in place for the duration of the install).
#
# Without root or apt-get it prints a note on stderr and exits 0: the tests
# that need the tools then skip, saying why, and without a compiler the
# "compiled" run of `make test` runs the interpreted model, saying so. Output is quiet unless something
# fails (apt's output is then shown). Concurrent runs serialise on a lock.
set -euo pipefail

note() { printf 'install-test-tools: %s\n' "$*" >&2; }

have_promtool() { command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; }
have_pg_ctl() { compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null; }
have_chromium() { [ -x /usr/bin/chromium ]; }

# The Python of the project's virtualenv (make setup runs first), else python3.
python_bin() { if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi; }
# The compiler Python builds extensions with (sysconfig's CC, as setup.py probes it).
have_cc() {
    local cc
    cc="$("$(python_bin)" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')"
    command -v "$cc" >/dev/null 2>&1
}
have_python_headers() {
    "$(python_bin)" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}
# Debian's python3-dev only helps Debian's own Python.
debian_python() { [ "$("$(python_bin)" -c 'import sys; print(sys.base_prefix)')" = /usr ]; }

missing_packages() {
    local packages=()
    have_promtool || packages+=(prometheus)
    have_pg_ctl || packages+=(postgresql)
    have_chromium || packages+=(chromium)
    have_cc || packages+=(gcc)
    if ! have_python_headers && debian_python; then packages+=(python3-dev); fi
    echo "${packages[@]}"
}

read -r -a wanted <<<"$(missing_packages)"
if [ "${#wanted[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    note "not root: not installing ${wanted[*]} (tests needing them will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    note "no apt-get: not installing ${wanted[*]} (tests needing them will skip)"
    exit 0
fi

lock_file=/var/lock/vitals-install-test-tools.lock
exec 9>"$lock_file"
flock 9
# Another run may have installed them while we waited for the lock.
read -r -a wanted <<<"$(missing_packages)"
if [ "${#wanted[@]}" -eq 0 ]; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
policy_backup=""
log="$(mktemp)"

restore_policy() {
    if [ -n "$policy_backup" ]; then
        mv -f "$policy_backup" "$policy"
    else
        rm -f "$policy"
    fi
    rm -f "$log"
}

if [ -e "$policy" ]; then
    policy_backup="$(mktemp)"
    cp -p "$policy" "$policy_backup"
fi
trap restore_policy EXIT
printf '#!/bin/sh\n# vitals install-test-tools: do not start services during install\nexit 101\n' >"$policy"
chmod 755 "$policy"

apt_get() {
    # Wait for another apt/dpkg (e.g. a colleague's install) instead of failing.
    if ! apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 "$@" >>"$log" 2>&1; then
        note "apt-get $* failed:"
        tail -n 30 "$log" >&2
        return 1
    fi
}

started=$SECONDS
apt_get update -qq
apt_get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${wanted[@]}"
note "installed ${wanted[*]} in $((SECONDS - started))s"

read -r -a still <<<"$(missing_packages)"
if [ "${#still[@]}" -ne 0 ]; then
    note "after installing, still missing: ${still[*]}"
    exit 1
fi
