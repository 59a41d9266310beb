#!/bin/bash
# A SHELL for make that times each recipe line: `make SHELL=bench/recipe_shell.sh
# RECIPE_LOG=FILE ...` runs every line with /bin/bash as usual and appends
# "wall user sys load<TAB>line" to FILE (seconds; user + sys include the line's children;
# load: the 1-minute average when it ended). bench_pipeline.py sums them per stage.
TIMEFORMAT='%R %U %S'
exec 3>&2 4>&1
times=$({ time /bin/bash "$@" 2>&3 1>&4; } 2>&1)
rc=$?
if [ -n "${RECIPE_LOG:-}" ]; then
  read -r load _ </proc/loadavg
  line=${*: -1}
  printf '%s %s\t%s\n' "${times##*$'\n'}" "$load" "${line//$'\n'/ }" >>"$RECIPE_LOG"
fi
exit $rc
