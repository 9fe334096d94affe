"""``comcoco sahm train`` / ``eval`` / ``preflight``: train SAHM on a release, evaluate a run, size a device.

``train --nproc N`` (or ``torchrun --nproc_per_node=N -m comcoco sahm train ...``) runs data-parallel: one
process per GPU over NCCL, or N CPU processes over gloo; only rank 0 writes. See docs/sahm.md.
"""

from __future__ import annotations

from pathlib import Path

import typer

from comcoco.commands._common import EXIT_USAGE, UserError, user_errors

sahm_app = typer.Typer(help="Train the SAHM validation model on a release, and evaluate a run.",
                       no_args_is_help=True, add_completion=False)

_DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N."
CACHE_HELP = ("MiB of decoded samples (at the model's working size) kept in memory per split and process; "
              "0 turns the cache off.")
THREADS_HELP = ("Torch CPU threads (default: 1 for inputs up to 128², where more threads only add "
                "synchronisation; otherwise one per core).")
PRECISION_HELP = ("auto (bf16 on CUDA that supports it, fp16 on older GPUs, fp32 on CPU), fp32, bf16 or fp16 "
                  "(autocast; fp16 with a gradient scaler). bf16 and fp16 also run on the CPU.")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def precision_option(value: str) -> str | None:
    """``--precision`` as the Runtime takes it (None for auto); an unknown name is a usage error (exit 2)."""
    if value not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {value!r}", EXIT_USAGE)
    return None if value == "auto" else value


def device_option(value: str) -> str:
    """``--device`` of a known form (exit 2 otherwise); whether that device exists is checked later (exit 3)."""
    from comcoco.sahm.distributed import check_device_form
    from comcoco.sahm.runs import RunError

    try:
        return check_device_form(value)
    except RunError as exc:
        raise UserError(str(exc), EXIT_USAGE) from None


def _errors():
    return user_errors(*_error_types(), OSError)


def _error_types() -> tuple[type[Exception], ...]:
    from comcoco.sahm.data import DataError
    from comcoco.sahm.encoders import WeightsError
    from comcoco.sahm.metrics import MetricWeightsError
    from comcoco.sahm.runs import RunError
    from comcoco.sahm.text import TokenizerError
    from comcoco.sahm.train import TrainError

    return RunError, DataError, TrainError, TokenizerError, MetricWeightsError, WeightsError


def print_metrics(metrics: dict) -> None:
    for name, m in metrics.items():
        value = m.get("value")
        shown = f"{value:.4f}" if isinstance(value, float) else str(m.get("reason") if value is None else value)
        typer.echo(f"  {name:<12} {shown}")


@sahm_app.command("train")
def train(
    release: Path = typer.Argument(..., help="An extracted release folder (comcoco release / download)."),
    out: Path = typer.Option(..., "--out", "-o", help="The run folder (config, tokenizer, checkpoints, logs)."),
    config: str = typer.Option("tiny", "--config", help="tiny (CPU smoke runs) or paper (480², 42.6 M)."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes on this machine: one per GPU "
                              "(NCCL), or CPU processes (gloo). --batch-size is per process."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs in total (default: paper 76, tiny 10)."),
    steps: int | None = typer.Option(None, "--steps", min=0, help="Stop after this many steps in total."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                          help="Per process (default: paper 8, i.e. 32 on 4 GPUs; tiny 4)."),
    image_size: int | None = typer.Option(None, "--image-size", min=32, help="Input size (multiple of 32)."),
    seed: int = typer.Option(0, "--seed", help="Seed for weights, data order and crops."),
    variant: str = typer.Option("ComCOCO", "--variant", help="ComCOCO or ComCOCO+."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader workers (default: 4 on CUDA, 0 on CPU)."),
    cache_mb: float = typer.Option(1024, "--cache-mb", min=0, help=CACHE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", min=0,
                                         help="Also write checkpoints/last.pt every N steps (0: epoch ends only)."),
    eval_split: str = typer.Option("val", "--eval-split", help="Split evaluated after each epoch for best.pt; 'none' to skip."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="A local ALBERT tokenizer folder "
                                          "(default: train one on the release's expressions)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from checkpoints/last.pt."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train SAHM on RELEASE into --out; --resume continues it at the saved step."""
    from comcoco.sahm.distributed import check_nproc, launch
    from comcoco.sahm.runs import Runtime, TrainOptions, train_run

    with _errors():
        if config not in ("tiny", "paper"):
            raise UserError(f"--config must be tiny or paper, got {config!r}", EXIT_USAGE)
        options = TrainOptions(
            release=str(release), config=config, variant=variant, epochs=epochs, max_steps=steps,
            batch_size=batch_size, seed=seed, image_size=image_size, checkpoint_every=checkpoint_every,
            eval_split=None if eval_split.lower() == "none" else eval_split,
            tokenizer=str(tokenizer) if tokenizer else None,
        )
        runtime = Runtime(device=device_option(device), precision=precision_option(precision), num_workers=workers,
                          progress=progress, cache_mb=cache_mb, threads=threads)
        if nproc > 1:
            if device.startswith("cuda:"):  # a command line that cannot mean anything: usage, not refusal
                raise UserError(f"--nproc {nproc} with --device {device}: each process takes cuda:LOCAL_RANK; "
                                "use --device cuda", EXIT_USAGE)
            check_nproc(nproc, device)
            summary = launch(train_run, (out, options, runtime, resume), nproc, expected=_error_types())
        else:
            summary = train_run(out, options, runtime, resume=resume)
    if summary.rank != 0:  # under torchrun only rank 0 reports
        return
    typer.echo(f"run      {summary.run}  (step {summary.step}, epoch {summary.epoch}, "
               f"{summary.steps_per_epoch} steps/epoch, {summary.device}, {summary.precision}, "
               f"{summary.world_size} process(es), "
               f"{summary.seconds:.1f} s)")
    typer.echo(f"last     {summary.last_checkpoint}")
    if summary.best_checkpoint and summary.best_value is not None:
        typer.echo(f"best     {summary.best_checkpoint}  (iou_mean {summary.best_value:.4f})")


@sahm_app.command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="A run folder written by `comcoco sahm train`."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last, or a checkpoint file."),
    fid_net: Path | None = typer.Option(None, "--fid-net", help="TorchScript Inception feature network for FID "
                                        "(or $COMCOCO_FID_WEIGHTS)."),
    alexnet: Path | None = typer.Option(None, "--alexnet", help="alexnet-owt-7be5be79.pth for LPIPS "
                                        "(or $COMCOCO_LPIPS_ALEXNET)."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Evaluation batch size."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader workers."),
    cache_mb: float = typer.Option(1024, "--cache-mb", min=0, help=CACHE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    release: Path | None = typer.Option(None, "--release", help="Evaluate on this release instead of the run's."),
) -> None:
    """Evaluate a run; writes RUN/metrics.json (psnr, ssim, iou_mean, iou_overall, pr@0.7, fid, lpips)."""
    from comcoco.sahm.runs import Runtime, eval_run, metrics_file

    with _errors():
        if split not in ("train", "val", "test"):
            raise UserError(f"--split must be train, val or test, got {split!r}", EXIT_USAGE)
        metrics = eval_run(run, split=split, checkpoint=checkpoint, fid_net=fid_net, alexnet=alexnet,
                           runtime=Runtime(device=device_option(device), precision=precision_option(precision), num_workers=workers,
                                           cache_mb=cache_mb, threads=threads),
                           batch_size=batch_size,
                           release=release)
    typer.echo(f"{split} metrics -> {run / metrics_file(split)}")
    print_metrics(metrics)


@sahm_app.command("preflight")
def preflight(
    config: str = typer.Option("paper", "--config", help="paper (480², 42.6 M) or tiny."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    batch: int | None = typer.Option(None, "--batch", min=1, help="Batch to measure (default: 1 on CPU, the "
                                     "config's per-process batch on CUDA)."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    image_size: int | None = typer.Option(None, "--image-size", min=32, help="Input size (default: the config's)."),
) -> None:
    """Build SAHM, run real train steps at the configured size, and print parameters, activation and peak
    memory, step time and the largest batch the device holds (CPU: extrapolated from the measured batch)."""
    from comcoco.sahm.preflight import format_report
    from comcoco.sahm.preflight import preflight as run_preflight

    with _errors():
        if config not in ("tiny", "paper"):
            raise UserError(f"--config must be tiny or paper, got {config!r}")
        report = run_preflight(config, device_option(device), batch, precision_option(precision), image_size)
    for line in format_report(report):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.add_typer(sahm_app, name="sahm")
