#!/usr/bin/env bash
# Label-free recovery of a reduced small VLM (docs/RESULTS.md section 14): each reduction evaluated before, then
# trained with `train.py objective=distill` (the unreduced model teaching on the CIFAR-10 mosaics' training stream;
# projector + LoRA on the language model, a constant learning rate) and evaluated after each stage of STEPS
# (a stage goes on from the last one's checkpoint in a run dir of its own: the stages are one run), and the last stage also unreduced
# (pruning=none on the export). One sweep dir, one report: report.md (before / after per kind, training minutes,
# exact match against steps) and recovery_vs_steps.png.
#   bash scripts/results/s14_vlm_recovery.sh MODEL [sweep dir] [evaluate.py overrides...]
#   METHODS="tome:keep=0.125 pitome:keep=0.125" STEPS="100 200 400" bash scripts/results/s14_vlm_recovery.sh tiny_llava_cifar10
# METHODS: <pruning>:<budget knob>=<value> ... (default: every encoder and boundary strategy at 12.5 % of the
# 256 visual tokens); every reduction keeps its tokens' original positions. A rerun skips what is done.
# TRAIN: the recipe's train.py overrides (default: Adam at a constant 5e-4, LoRA rank 8). A schedule that decays
# over trainer.max_steps (TRAIN="optimizer.lr=1e-3 scheduler.warmup_fraction=0.05") wants one stage: STEPS="2400".
# UNREDUCED=no skips evaluating each method's last export with pruning=none.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?usage: scripts/results/s14_vlm_recovery.sh MODEL [sweep dir] [evaluate.py overrides...]}
sweep=${2:-multirun/vlm_recovery_$model}
methods=${METHODS:-"cls_preserving:keep=0.125 late_layer:keep=0.125 tome:keep=0.125 pitome:keep=0.125
  visionzip:tokens=32 divprune:tokens=32 random:tokens=32 vispruner:tokens=32 cdpruner:tokens=32"}
steps=${STEPS:-"100 200 400"}
data=(data=cifar10_vqa data.root=../shared/data/cifar10-jpeg.tar.gz logger=none)
evaluate=(protocol=vqa model=$model "${data[@]}" "${@:3}")
recover=(objective=distill objective.train=projector+lora lora=default model=$model "${data[@]}"
         data.batch_size=16 checkpoint_every_n_steps=50 ${TRAIN:-optimizer.lr=5e-4 scheduler=null})
once() {  # once RUN_DIR SCRIPT OVERRIDES...: run unless RUN_DIR already has its results
  local dir=$1 script=$2
  shift 2
  [[ -f $dir/results.csv ]] || python "$script" "$@" "hydra.run.dir=$dir"
}
sorted_steps=$(printf '%s\n' $steps | sort -n | tr '\n' ' ')
[[ -n ${steps// } && ${sorted_steps% } == "$(echo $steps)" ]] || { echo "STEPS=\"$steps\" must be ascending step counts" >&2; exit 2; }
once "$sweep/none" evaluate.py "${evaluate[@]}" pruning=none
for method in $methods; do
  [[ $method == *:*=* ]] || { echo "METHODS: $method is not <pruning>:<knob>=<value>" >&2; exit 2; }
  name=${method%%:*} knob=${method#*:}
  label=$name-${knob//=/}
  reduce=(pruning=$name "pruning.$knob" pruning.positions=original)
  [[ $name == cdpruner ]] && reduce+=('pruning.text_tower=${model.init_tower}')
  once "$sweep/before-$label" evaluate.py "${evaluate[@]}" "${reduce[@]}"
  previous=resume=true  # the first stage starts fresh (or goes on from its own checkpoint after a kill)
  for n in $steps; do  # each stage in its own run dir, going on from the last stage's checkpoint
    run=$sweep/train-$label-$n export_dir=$sweep/exports/$label-$n
    [[ -f $run/checkpoints/last.ckpt ]] && previous=resume=true  # this stage was cut short: its own checkpoint
    [[ -f $export_dir/training_summary.json ]] || python train.py "${recover[@]}" "${reduce[@]}" \
      trainer.max_steps=$n "$previous" "hydra.run.dir=$run" "export_dir=$export_dir"
    previous=resume=$run/checkpoints/last.ckpt
    once "$sweep/after-$label-$n" evaluate.py "${evaluate[@]}" "model.path=$export_dir"
  done
  [[ ${UNREDUCED:-yes} == no ]] || once "$sweep/unreduced-$label" evaluate.py "${evaluate[@]}" "model.path=$export_dir" pruning=none
done
python -m vlm_eff.report "$sweep" --no-wandb
