"""Research fixtures: what builds research data and runs benchmarks.

Model zoos (`zoo`: build; `zoo_plan`: presets, tasks, splits; `zoo_train`: training and saving checkpoints) and
adapter zoos (`adapter_zoo`, `adapter_zoo_minilm`), their architectures and task datasets (`architectures`, `tasks`),
few-shot samples of zoo tasks for the prior's training (`samples`), generation for zoo tasks (`generate`), the
evaluation runner (`evaluation/`) and the demo (`demo`).
The core (`layout`, `models`, `conditioning`, `data`, `training`, `generation`, `adapters`, `hub`)
never imports this package; the `hf-paramgen` console command reaches it lazily.
"""
