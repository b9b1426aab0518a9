#!/usr/bin/env bash
# One pass of chipaudit on a real accelerator: inventory (with the NVML recording), a stack baseline and
# its diff, a quick audit, a standard bench, and how close the fp8 bound sits to the device's honest
# error (issue 13 asks for within 20x; the accelerator model was set from a recorded H200 run). Every step runs under its own time limit and the pass goes
# on when one fails, so that a short hardware loan always returns whatever it measured.
#
# Usage: docs/validation/run-on-gpu.sh OUT_DIR [DEVICE] [PART]   (DEVICE defaults to cuda:0)
# PART: all (default), audit (inventory, baseline, quick audit, bench, fp8 bound: about 9 minutes),
# load (burn-in efficiency and the red team's GPU subset: about 9 minutes) or evasion (issue 13: a
# quick audit with every worker under the sinkhole and the location worlds, the red team's evasive
# adversaries and the fp8 bound, about 9 minutes), so that each part fits a 10-minute command. The red
# team runs when REDTEAM (default ../shared/redteam) holds it.
# Python packages chipaudit needs that the machine lacks can travel as wheels in .whl/, and the sensors'
# programs (tcpdump, ip, nft, strace, libfaketime) as .tools/ from pack-tools.sh (see README.md).
set -uo pipefail
out=${1:?usage: run-on-gpu.sh OUT_DIR [DEVICE]}
device=${2:-cuda:0}
part=${3:-all}
redteam=${REDTEAM:-../shared/redteam}
mkdir -p "$out/nvml"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [[ -d .tools/bin ]]; then  # after the machine's own programs, so that those are preferred
    export PATH="$PATH:$PWD/.tools/bin"
    for lib in .tools/faketime/*.so.1; do
        [[ -e /usr/lib/x86_64-linux-gnu/faketime/${lib##*/} ]] || { mkdir -p /usr/local/lib/faketime && cp -n "$lib" /usr/local/lib/faketime/; }
    done
fi
ca=(python3 -m chipaudit)  # timeout runs programs, not shell functions

redteam_cli() {  # the red team sets its own PYTHONPATH for the adversary; this wrapper adds chipaudit's
    printf '#!/bin/sh\nexport PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}%s"\nexec python3 -m chipaudit "$@"\n' \
        "$PYTHONPATH" > /tmp/chipaudit-cli && chmod +x /tmp/chipaudit-cli
}

sensors() {  # sensors REPORT: which sensors watched the audit's device processes, and why not where not
    python3 - "$1" <<'PY'
import json, sys
seen = {}
for check in json.load(open(sys.argv[1]))["checks"]:
    for name, s in (check.get("coverage") or {}).get("sensors", {}).items():
        seen.setdefault((name, s["ran"], s["detail"][:160]), []).append(check["id"])
for (name, ran, detail), ids in sorted(seen.items()):
    print(f"{'ran' if ran else 'NOT RUN':8} {name:28} {len(ids):3} checks  {detail}")
PY
}

step() {  # step NAME LIMIT_S COMMAND...: time one step, keep its exit code, never stop the pass
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - start)) s"
}

{
    date -u +"%F %T UTC"
    nvidia-smi --query-gpu=name,uuid,driver_version,vbios_version,memory.total,clocks.max.sm,power.limit \
        --format=csv 2>&1 || true
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    if [[ $part == all || $part == audit ]]; then
    step inventory 60 "${ca[@]}" inventory --device "$device" --json "$out/inventory.json" --record "$out/nvml"
    step baseline-create 60 "${ca[@]}" baseline create /tmp/chipaudit-baseline.json --device "$device" --force
    step baseline-diff 60 "${ca[@]}" baseline diff /tmp/chipaudit-baseline.json --json "$out/baseline-diff.json"
    step quick-audit 200 "${ca[@]}" run --device "$device" --level quick --json "$out/quick.json" --html "$out/quick.html" \
        --db /tmp/chipaudit-history.sqlite3
    step bench 180 "${ca[@]}" bench --device "$device" --level standard --json "$out/bench.json"
    step fp8-bound 120 python3 benchmarks/bound_tightness.py --device "$device" --formats fp8_e4m3,fp16,bf16 --seeds 4
    fi
    if [[ $part == all || $part == load ]]; then
    # issue 14: the burn-in's verified throughput over the bench's peak, per format (bf16 should reach 0.90)
    step burn-efficiency 240 python3 benchmarks/burn_efficiency.py --device "$device" --rounds 3
    if [[ -f $redteam/run.py ]]; then
        redteam_cli
        step redteam 330 python3 "$redteam/run.py" /tmp/chipaudit-cli \
            --device "$device" --only clean,bitflip,tcp_phone_home,fp64_refusal --keep "$out/redteam"
    else
        echo "=== redteam: not run: no red team at $redteam (set REDTEAM)"
    fi
    fi
    if [[ $part == all || $part == evasion ]]; then
    # issue 13. The programs the sensors need, as this machine has them:
    for tool in unshare nsenter ip tc nft tcpdump strace bpftrace faketime; do
        printf '%-9s %s\n' "$tool" "$(command -v "$tool" || echo 'not found')"
    done
    # A healthy device's quick audit, side by side with the evasive adversaries' (ADVERSARIES, default
    # all four), each in a red team of its own: no finding may come of the sinkhole, the private worlds
    # or the capability declarations on a busy machine, and every adversary must be caught.
    if [[ -f $redteam/run.py ]]; then
        redteam_cli
        for adversary in ${ADVERSARIES:-fp64_refusal outlier_trigger watched_quiet hostname_geofence}; do
            step "redteam-$adversary" 300 python3 "$redteam/run.py" /tmp/chipaudit-cli --device "$device" \
                --only "$adversary" --keep "$out/redteam" > "$out/redteam-$adversary.txt" 2>&1 &
        done
    else
        echo "=== redteam: not run: no red team at $redteam (set REDTEAM)"
    fi
    step evasion-quick-audit 280 "${ca[@]}" run --device "$device" --level quick --json "$out/evasion-quick.json" \
        --html "$out/evasion-quick.html" --db /tmp/chipaudit-history.sqlite3
    [[ -f $out/evasion-quick.json ]] && sensors "$out/evasion-quick.json"
    step fp8-bound 200 python3 benchmarks/bound_tightness.py --device "$device" --formats fp8_e4m3,fp16,bf16 --seeds 4
    wait
    cat "$out"/redteam-*.txt 2>/dev/null
    fi
} 2>&1 | tee "$out/log-$part.txt"
