"""Command-line training for clusters and scripts; the notebooks call the same library functions.

    python -m mmt_lib.train pretrain --profile paper --task duke2market --seed 1 --out runs/x/pre1
    python -m mmt_lib.train mmt --profile paper --task duke2market --variant mmt-kmeans --seed 1 \\
        --pretrained runs/x/pre1 runs/x/pre2 --out runs/x/mmt

Relative paths (``--out``, ``--pretrained``, ``--data-root``, ``--imagenet-weights``) are relative to the
current directory. Each writes ``metrics.json`` (top-level ``mAP``, ``top1``, ...) into ``--out`` once it finishes.
One process per device: ``torchrun --nproc_per_node=N -m mmt_lib.train ...`` (several nodes: torchrun's
``--nnodes``/``--rdzv_*`` arguments); rank 0 alone writes (see ``mmt_lib.runtime.distributed``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmt_lib import config
from mmt_lib.method import provenance
from mmt_lib.method.mmt import run_checked_variant
from mmt_lib.method.pretrain import pretrain
from mmt_lib.method.trainer import CHECKPOINT
from mmt_lib.models import known_archs
from mmt_lib.runtime import distributed
from mmt_lib.runtime.checkpoints import ensure_writable, save_metrics
from mmt_lib.runtime.commandline import Refusal, refuse
from mmt_lib.runtime.paths import from_command_line

PROG = "python -m mmt_lib.train"
PATHS_HELP = "a relative path starts at the current directory"


def pretrained_runs(dirs: list[str]) -> list[Path]:
    """The checkpoints of the two ``--pretrained`` folders, each named in the refusal when it is not a Stage I run."""
    checkpoints = []
    for folder in dirs:
        path = Path(folder) / CHECKPOINT
        if not path.is_file():
            why = "does not exist" if not Path(folder).exists() else f"holds no {CHECKPOINT}"
            raise Refusal(f"--pretrained {folder} {why}: expected the --out folder of a finished "
                          f"`{PROG} pretrain` run of the same task (with its {CHECKPOINT})")
        checkpoints.append(path)
    return checkpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["pretrain", "mmt"])
    parser.add_argument("--profile", default="synthetic", choices=sorted(config.PROFILES))
    parser.add_argument("--task", default="duke2market")
    parser.add_argument("--variant", default="mmt-kmeans", choices=list(config.VARIANTS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default=None, choices=sorted(config.DOMAIN_DATASETS))
    parser.add_argument("--data-root", default=None, help=f"the folder holding the datasets; {PATHS_HELP}")
    parser.add_argument("--source", default=None, help="dataset name, for a custom task (with --target)")
    parser.add_argument("--target", default=None)
    parser.add_argument("--arch", default=None, choices=known_archs(), help="backbone (default: the profile's)")
    parser.add_argument("--imagenet-weights", default=None,
                        help=f"local ImageNet weights file for the backbone; {PATHS_HELP}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pretrained", nargs=2, metavar="DIR",
                        help=f"the two Stage I run folders of the same task (mmt only); {PATHS_HELP}")
    parser.add_argument("--overrides", default="{}", help='JSON, e.g. \'{"mmt": {"epochs": 10}}\'')
    parser.add_argument("--out", required=True, help=f"output folder; {PATHS_HELP}")
    args = parser.parse_args(argv)
    out = from_command_line(args.out)
    try:  # every refusal before any data loads and before --out exists: settings, Stage I runs, then --out
        if args.stage == "mmt" and not args.pretrained:
            raise Refusal("mmt needs --pretrained DIR1 DIR2: the --out folders of the task's two Stage I runs "
                          f"(`{PROG} pretrain --seed 1` and `--seed 2`)")
        cfg = config.resolve(stage=args.stage, profile=args.profile, task=args.task, variant=args.variant,
                             seed=args.seed, data=args.data, data_root=from_command_line(args.data_root),
                             source=args.source, target=args.target, arch=args.arch,
                             pretrained=from_command_line(args.imagenet_weights), device=args.device,
                             overrides=config.parse_overrides(args.overrides))
        stage1 = []
        if args.stage == "mmt":
            checkpoints = pretrained_runs([from_command_line(d) for d in args.pretrained])
            try:
                stage1 = provenance.check_pretrained(cfg, checkpoints)
            except ValueError as err:
                raise Refusal(f"--pretrained: {err}") from None
        ensure_writable(out)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(refuse(PROG, err)) from None
    if args.stage == "pretrain" and args.profile == "paper" and not args.imagenet_weights:
        print("warning: --profile paper without --imagenet-weights starts the backbone from random weights; "
              "the paper starts from ImageNet", file=sys.stderr)
    try:
        metrics = pretrain(cfg, out) if args.stage == "pretrain" else run_checked_variant(cfg, out, stage1)
        if distributed.is_main():
            path = save_metrics(out, metrics)
            print(f"mAP {metrics['mAP']:.4f}  top1 {metrics['top1']:.4f}  -> {path}")
        distributed.barrier()
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
