#!/usr/bin/env bash
# Produces every figure of SIMULATIONS.md with `qscale simulate`:
#
#   bash config/traces/simulate-all.sh            # print the results section (Markdown)
#   bash config/traces/simulate-all.sh --update   # rewrite it in SIMULATIONS.md, and the charts
#
# The qscale binary is $QSCALE, else target/release/qscale if built, else target/debug/qscale
# (`cargo build` first; a debug build runs the whole script in about a second).
# tests/sim.rs runs this script and fails when SIMULATIONS.md is stale.
set -euo pipefail
cd "$(dirname "$0")/../.."
default=target/debug/qscale
[ -x target/release/qscale ] && default=target/release/qscale
qscale=${QSCALE:-$default}
rules=config/traces/rules.sim.toml
begin='<!-- BEGIN simulate-all.sh output -->'
end='<!-- END simulate-all.sh output -->'

traces=(
  steady burst daily_wave spiky_noise
  azure2019/azure2019_queue_steady azure2019/azure2019_queue_ramp
  azure2019/azure2019_queue_periodic_bursts azure2019/azure2019_queue_sparse_spikes
  azure2019/azure2019_http_spiky
)

# Per trace: qscale with the defaults (rule worker), keda+hpa, and qscale with cooldown=1m.
# Then a few sweeps on steady.csv that explain the tables.
sweeps=(
  "worker startup_delay=5s,60s"
  "worker scale_down.stabilization_window=2m,5m,10m"
  "worker-tuned target_per_replica=10,25"
)

results() {
  for trace in "${traces[@]}"; do
    printf '#### `%s.csv`\n\n' "$trace"
    "$qscale" simulate --rules "$rules" --rule worker --trace "config/traces/$trace.csv" \
      --sweep cooldown=1m --format markdown
    printf '\n'
  done
  for sweep in "${sweeps[@]}"; do
    read -r rule setting <<<"$sweep"
    printf '#### `steady.csv`, rule `%s`, `--sweep %s`\n\n' "$rule" "$setting"
    "$qscale" simulate --rules "$rules" --rule "$rule" --trace config/traces/steady.csv \
      --sweep "$setting" --format markdown
    printf '\n'
  done
}

if [ "${1:-}" != "--update" ]; then
  results
  exit 0
fi

section=$(mktemp)
trap 'rm -f "$section"' EXIT
results >"$section"
awk -v begin="$begin" -v end="$end" -v section="$section" '
  $0 == begin { print; while ((getline line < section) > 0) print line; skipping = 1; next }
  $0 == end { skipping = 0 }
  !skipping { print }
' SIMULATIONS.md >SIMULATIONS.md.new
mv SIMULATIONS.md.new SIMULATIONS.md

mkdir -p config/traces/plots
for plot in worker:burst worker:steady worker-tuned:steady worker:azure2019/azure2019_queue_periodic_bursts; do
  rule=${plot%%:*}
  trace=${plot#*:}
  "$qscale" simulate --rules "$rules" --rule "$rule" --trace "config/traces/$trace.csv" \
    --svg "config/traces/plots/$(basename "$trace")-$rule.svg" >/dev/null
done
