"""`python -m hf_paramgen.research.evaluation ...` = `hf-paramgen evaluate ...`."""

from __future__ import annotations

import sys

from .cli import cli_evaluate

sys.exit(cli_evaluate(sys.argv[1:]))
