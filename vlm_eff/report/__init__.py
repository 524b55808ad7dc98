"""The study report of a sweep: `python -m vlm_eff.report multirun/DATE/TIME`.

Gathers every job's `results.csv` under the sweep dir into `report.csv` and a Markdown table
(`report.md`, also printed) with speed-ups against the stock model measured in the same sweep,
draws the figures (`latency_vs_keep.png`, `memory_vs_keep.png`; `accuracy_vs_flops.png` and
`accuracy_vs_throughput.png` with their Pareto fronts when the jobs measured zero-shot accuracy,
`recall_vs_flops.png` when they measured retrieval recall; for generative VLM requests
`ttft_vs_visual_tokens.png`, `accuracy_vs_ttft.png` / `accuracy_vs_flops.png` when they measured
vqa exact match, and for benchmark runs the papers' table: per benchmark each configuration's score and its %
of the unreduced score, the mean retention, and `score_vs_flops.png`), and logs all of it to one summary W&B
run in the sweep's group. Figures draw each strategy as a line through its budgets and the unreduced model as
a dashed line, the model named in the title.
Failed, unfinished or missing jobs are named with their reason and left out. `--token-maps N` adds each
job's token maps of N images (vlm_eff/jobs/visualize.py: `--images`, else the first test image of N
classes of the CIFAR-10 data the sweep ran on) under `token_maps/<job>/`, linked from report.md and logged.
"""
