#!/usr/bin/env bash
# Multi-host training with SLURM: one task per GPU, every task runs the same
# command; JAX reads the SLURM variables to join the job.
#
#   sbatch scripts/slurm_train.sh configs/lfw_cae.py /shared/runs/lfw_cae [--config.x=y ...]
#
#SBATCH --job-name=jax_dae
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=01:00:00
set -euo pipefail
config=${1:?usage: slurm_train.sh CONFIG WORKDIR [FLAGS...]}
workdir=${2:?usage: slurm_train.sh CONFIG WORKDIR [FLAGS...]}
shift 2
srun python -m jax_dae.main --config="$config" --workdir="$workdir" "$@"
