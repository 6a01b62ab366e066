"""The grids of `conf/sweep/*.yaml`, per experiment: `-m +sweep=NAME` sweeps `sweeps.NAME`.

Values use Hydra's sweep syntax (comma-separated choices; a list choice in brackets). The defaults
are the paper's grids (Qwen2.5-0.5B: 24 layers, 32k context); an experiment whose model is smaller
sets grids that fit it (conf/exp/tiny.yaml), and every grid is checked against the experiment's
model before the first job starts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SweepGrids:
    l1_coeff: str = "0.5,1,2,4,8"
    """train.l1_coeff values of `+sweep=l1_coeff` (python -m reasondiff.train -m)."""
    k: str = "16,32,64,128"
    """train.k values of `+sweep=k` (batchtopk)."""
    token_limits: str = "[128,256,512,1024,2048],[64,128,256,512],[1024,2048,4096]"
    """bench.token_limits grids of `+sweep=token_limits` (python -m reasondiff.bench -m)."""
    layers: str = "blocks.8.hook_resid_pre,blocks.14.hook_resid_pre,blocks.20.hook_resid_pre"
    """harvest.hook values of `+sweep=layers` (python -m reasondiff.harvest -m)."""
