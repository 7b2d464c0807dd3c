#!/usr/bin/env bash
# EMR step: run the bovw main job on Spark (YARN) over s3:// data.
#
# Add it with command-runner.jar (see README.md):
#   bash -c "aws s3 cp s3://BUCKET/bovw/run_step.sh . && bash run_step.sh s3://BUCKET/fruits-360/ s3://BUCKET/bovw-out/run1 --k 100 --pca 0.95"
#
# Arguments: INPUT_URI OUTPUT_URI [more `bovw run` flags]
# Environment: BOVW_PYTHON (default /usr/bin/python3), BOVW_SPARK_MASTER (default yarn),
#              BOVW_EXECUTOR_CORES (default 4),
#              BOVW_EXECUTOR_MEMORY (default 6g), BOVW_RECORDS_PER_BATCH (default 1024).
set -euo pipefail
IN="${1:?usage: run_step.sh s3://bucket/images/ s3://bucket/out/ [bovw run flags]}"
OUT="${2:?usage: run_step.sh s3://bucket/images/ s3://bucket/out/ [bovw run flags]}"
shift 2
PYTHON="${BOVW_PYTHON:-/usr/bin/python3}"
DRIVER="$(mktemp -d)/bovw_step.py"
cat > "$DRIVER" <<'PY'
import sys
from bovw.cli import main
sys.exit(main(["run", *sys.argv[1:]]))
PY
# One kernel thread per Spark task: executor cores = concurrent single-threaded tasks,
# so rayon must not start its own pool of all cores in each task.
exec spark-submit \
    --master "${BOVW_SPARK_MASTER:-yarn}" --deploy-mode client \
    --conf spark.pyspark.python="$PYTHON" \
    --conf spark.pyspark.driver.python="$PYTHON" \
    --conf spark.executor.cores="${BOVW_EXECUTOR_CORES:-4}" \
    --conf spark.executor.memory="${BOVW_EXECUTOR_MEMORY:-6g}" \
    --conf spark.executorEnv.RAYON_NUM_THREADS=1 \
    --conf spark.task.cpus=1 \
    --conf spark.sql.execution.arrow.maxRecordsPerBatch="${BOVW_RECORDS_PER_BATCH:-1024}" \
    "$DRIVER" "$IN" --engine spark --out "$OUT" --no-progress "$@"
