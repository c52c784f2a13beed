"""``ebm-fast train``: train a conditional EBM; the options are :class:`~ebm_fast.training.TrainConfig`'s
fields (:mod:`ebm_fast.training.options`). Under ``torchrun -m ebm_fast.cli train`` it trains with
DistributedDataParallel. ``--objective`` picks the training objective: ``cd`` (the default, contrastive
divergence) or ``dsm`` (denoising score matching of one energy-parameterized diffusion model over the scene
attributes, :mod:`ebm_fast.paper.diffusion_concepts`; its own options, ``--objective dsm --help``)."""

from __future__ import annotations

import gc
import json
import os

from ..chains import resolve_device
from ..continual import parse_frozen
from ..training.options import add_train_arguments, config_from_namespace
from ._common import Parser, command, existing_file, writable_dir


def _parser() -> Parser:
    p = Parser(prog="ebm-fast train", description=(
        "Train a conditional EBM by contrastive divergence (Langevin negatives from a replay buffer). Under "
        "torchrun it uses DistributedDataParallel. Writes OUT/log.jsonl, OUT/samples/, OUT/ckpt/ and, at the "
        "end, OUT/model.pt; `ebm-fast export RUN PATH` writes the model of a run's newest checkpoint."))
    add_train_arguments(p)
    return p


def _split_objective(argv: list[str]) -> tuple[str | None, list[str]]:
    """The value of ``--objective`` in ``argv`` (None when absent) and the other arguments."""
    for i, a in enumerate(argv):
        if a == "--objective" and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if a.startswith("--objective="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, list(argv)


def _dsm_main(argv: list[str]) -> int:
    from ..paper.diffusion_concepts import add_train_arguments, cmd_train

    p = Parser(prog="ebm-fast train --objective dsm", description=(
        "Train (or resume) one energy-parameterized diffusion model of the scenes, conditioned on position, "
        "colour, shape and size (each dropped with probability --drop), by denoising score matching. Writes "
        "OUT/log.txt, OUT/ckpt/ and OUT/ema.pt every --checkpoint-seconds; the same command resumes."))
    add_train_arguments(p)
    args = p.parse_args(argv)
    writable_dir(args.out, "--out")
    if args.init_from is not None:
        existing_file(args.init_from, "--init-from")
    return cmd_train(args)


@command("train")
def main(argv: list[str] | None = None) -> int:
    objective, rest = _split_objective(list(argv or []))
    if objective == "dsm":
        return _dsm_main(rest)
    args = _parser().parse_args(argv)
    from ..paper import training_data  # noqa: F401 - registers the "scenes" data source
    from ..training import Trainer

    config = config_from_namespace(args)
    # the mistakes a run would otherwise meet minutes in: checked before any data is rendered
    resolve_device(config.device)
    writable_dir(config.out, "--out")
    if config.init_from is not None:
        existing_file(config.init_from, "--init-from")
    for spec in config.frozen:
        existing_file(parse_frozen(spec)[0], "--frozen")
    # one trainer per training objective (TrainConfig.objective; ebm_fast.training.config.OBJECTIVES)
    trainers = {"cd": Trainer}
    stats = trainers[config.objective](config).train()
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("step", "loss", "e_pos", "e_neg", "param_digest")
        print(json.dumps({k: stats[k] for k in keys if k in stats}))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            # every rank waits for rank 0's export and last log line: a rank that tears gloo down while
            # its peer is still busy could abort at exit ("terminate called without an active exception").
            # Whatever of the trainer's DDP wrapper sits in reference cycles would be freed only at
            # interpreter teardown, where freeing tensors that gloo work still holds can abort
            # (pytorch/pytorch#179291): collect it first.
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
    return 0
