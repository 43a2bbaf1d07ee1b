"""Research fixtures: what builds research data and runs benchmarks.

Model zoos and adapter zoos (`zoo`, `adapter_zoo`, `adapter_zoo_minilm`), their architectures and
task datasets (`architectures`, `tasks`), the evaluation runner (`evaluation`) and the demo (`demo`).
The core (`layout`, `models`, `conditioning`, `data`, `training`, `generation`, `adapters`, `hub`)
never imports this package; the `hf-paramgen` console command reaches it lazily.
"""
