#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, private to one directory:
#   tests/pg/cluster.sh start DIR   initdb in DIR/data, listen on no TCP port,
#                                   only on a Unix socket in a short directory
#                                   of its own under /tmp (a socket's path is
#                                   at most 107 bytes, DIR may be deep);
#                                   prints the URL of its database
#                                   "switchyard"
#   tests/pg/cluster.sh start DIR ADDRS
#                                   the same, and TCP on these addresses
#                                   (comma-separated: private ones, as a
#                                   test's veth pairs), trusting the
#                                   networks they are on
#   tests/pg/cluster.sh stop DIR    stops it (fast), whatever state it is in,
#                                   and removes the socket's directory
#   tests/pg/cluster.sh fresh DIR   stops what a killed run left in DIR,
#                                   empties DIR, starts a new cluster there
#                                   and writes its URL to DIR/url (the
#                                   suite's cluster: ctest's fixture)
# PostgreSQL refuses to run as root: as root the cluster runs as the
# 'postgres' user the Debian package creates, and DIR is handed to it.
set -euo pipefail
cmd=${1:?start, stop or fresh}
dir=$(cd "${2:?a directory}" && pwd)
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "cluster.sh: no PostgreSQL server (scripts/setup installs it)" >&2; exit 1; }
as=()
user=$(id -un)
if [ "$(id -u)" -eq 0 ]; then
  as=(runuser -u postgres --)
  user=postgres
fi
stop() {
  if [ -f "$dir/data/postmaster.pid" ]; then
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 60 stop >/dev/null || true
  fi
  if [ -f "$dir/socket-dir" ]; then
    rm -rf "$(cat "$dir/socket-dir")"
  fi
}
case $cmd in
  fresh)
    stop
    find "$dir" -mindepth 1 -delete
    "$0" start "$dir" >"$dir/url.tmp"
    mv "$dir/url.tmp" "$dir/url"
    cat "$dir/url"
    ;;
  start)
    sock=$(mktemp -d /tmp/sy-pg.XXXXXX)
    echo "$sock" >"$dir/socket-dir"
    if [ "$(id -u)" -eq 0 ]; then
      chown postgres "$dir" "$sock"
    fi
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U "$user" --auth=trust \
      --no-sync -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
    listen=${3:-}
    if [ -n "$listen" ]; then
      echo "host all all samenet trust" >>"$dir/data/pg_hba.conf"
    fi
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses='$listen' -k $sock -c fsync=off -c max_connections=100" \
      start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    "${as[@]}" "$bin/createdb" -h "$sock" -U "$user" switchyard
    echo "postgresql://$user@/switchyard?host=$sock"
    ;;
  stop)
    stop
    ;;
  *)
    echo "usage: cluster.sh start|stop|fresh DIR" >&2; exit 2 ;;
esac
