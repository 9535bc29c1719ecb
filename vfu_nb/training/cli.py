"""Train one model from the command line (reference: docs/training.md).

    python -m vfu_nb.training --model mtl --data-root DIR --run-dir runs/x [--epochs 10 --batch-size 8 ...]
    python -m vfu_nb.training --config run.yaml [--lr 3e-4]   # file settings, flags override; --print_config shows them
    torchrun --nproc_per_node 8 -m vfu_nb.training ...        # DistributedDataParallel, batch size per process
"""

from __future__ import annotations

from typing import Callable, Optional

import torch.distributed as dist

from vfu_nb.diskspace import DiskFullError
from vfu_nb.training.config import ConfigError, cli_parser, parse_config
from vfu_nb.training.loop import format_metrics, train
from vfu_nb.training.rundir import RunDirError
from vfu_nb.training.runtime import dist_info
from vfu_nb.weights import WeightsUnavailableError


def build_parser():
    """The command line: every :class:`TrainConfig` field, ``--config FILE`` and ``--print_config`` (jsonargparse)."""
    return cli_parser("python -m vfu_nb.training", __doc__.split("\n")[0])


def main(argv=None, on_step: Optional[Callable] = None) -> Optional[dict]:
    """Parse ``argv`` (default: ``sys.argv[1:]``), train, print the metrics; a run-directory, settings, disk or
    weights problem exits with status 2 and one line."""
    parser = build_parser()
    try:
        config = parse_config(argv, parser)
        metrics = train(config, on_step=on_step)
    except (RunDirError, ConfigError, DiskFullError, WeightsUnavailableError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if dist_info()[1] == 0:
        print(format_metrics(metrics), flush=True)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return metrics
