#!/usr/bin/env bash
# The whole architectures study in one go (README.md in this folder): train the grid, explain every checkpoint,
# analyse. Finished jobs are skipped, so it resumes. Extra arguments go to every sweep, e.g.
#   experiments/architectures/run_study.sh trainer=gpu                 # a GPU machine
#   experiments/architectures/run_study.sh threads=1 data.num_workers=1 data.generator.context_bias=0
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
"$BIN/python" -m motion_relevance.train experiment=study_train "$@"
"$BIN/python" -m motion_relevance.explain_app experiment=study_explain_cnn "$@"
"$BIN/python" -m motion_relevance.explain_app experiment=study_explain_transformers "$@"
"$BIN/python" experiments/architectures/analyse.py
