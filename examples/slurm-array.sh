#!/bin/bash
# sdgen over a Slurm job array: task K of N generates the prompt-file entries
# whose index % N == K, all into one shared folder, one GPU per task.
#   sbatch examples/slurm-array.sh
# The settings come from the environment (sbatch passes it to the tasks):
#   SDGEN_MODEL=/models/sd15.safetensors SDGEN_PROMPTS=prompts.txt \
#   SDGEN_OUT=/shared/out SDGEN_ARGS='--steps 30' sbatch examples/slurm-array.sh
# A failed or preempted task is rerun with `scontrol requeue JOBID_K`, or
# resubmitted alone with `SDGEN_SHARDS=8 sbatch --array=K examples/slurm-array.sh`:
# --skip-existing keeps the images it had written.
#SBATCH --job-name=sdgen
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --output=sdgen-%A_%a.out
set -euo pipefail
N=${SDGEN_SHARDS:-8}  # the number of shards: as many as --array has tasks
# SDGEN_ARGS is split into words on purpose: any further sdgen flags.
# shellcheck disable=SC2086
exec "${SDGEN:-sdgen}" --model "${SDGEN_MODEL:-/models/sd15.safetensors}" \
  --prompt-file "${SDGEN_PROMPTS:-prompts.txt}" --seed 1 ${SDGEN_ARGS:-} \
  --shard "$SLURM_ARRAY_TASK_ID/$N" -o "${SDGEN_OUT:-/shared/out}/{index}-{prompt}.png" \
  --skip-existing --json
