# Sourced by _env.sh: preload tcmalloc, which keeps XLA:CPU's big per-call buffers mapped (glibc's malloc unmaps
# them, and every call page-faults them in again: arjax/host.py, docs/inference_speed.md). Preloaded where the
# system has it; ARJAX_TCMALLOC=0 turns it off, ARJAX_TCMALLOC=install also installs it (Debian's
# libtcmalloc-minimal4, as root: scripts/demo.sh). A caller's own LD_PRELOAD is kept. Nothing fails without it.
tcmalloc_path() {  # reads all of ldconfig's output (no SIGPIPE); succeeds without ldconfig on PATH (set -e callers)
  { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true; } \
    | awk '$1 == "libtcmalloc_minimal.so.4" && !found {print $NF; found = 1}'
}
if [ "${ARJAX_TCMALLOC:-1}" = install ] && [ -z "$(tcmalloc_path)" ]; then
  pkg=libtcmalloc-minimal4
  { apt-get install -y -q $pkg || { apt-get update -q && apt-get install -y -q $pkg; }; } >/dev/null 2>&1 \
    || echo "note: could not install $pkg; running with glibc malloc" >&2
fi
if [ "${ARJAX_TCMALLOC:-1}" != 0 ] && [ -z "${LD_PRELOAD:-}" ]; then
  tcmalloc=$(tcmalloc_path)
  if [ -n "$tcmalloc" ]; then
    export LD_PRELOAD="$tcmalloc"
    # no "large alloc" report on stderr for buffers below 64 GiB
    export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD="${TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD:-68719476736}"
  fi
fi
