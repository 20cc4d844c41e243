"""The ``egoray`` command: a thin map from subcommands onto functions."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from egoray import __version__
from egoray.console import say
from egoray.errors import EgorayError

DESCRIPTION = """\
Egocentric video-language research jobs on Ray: ingest Ego4D narrations, generate QA with an LLM,
rephrase and caption, extract video and text features, train dual encoders, LaViLa's towers and
narrator and EILEV-style VLMs, and evaluate. Each job is one YAML config; it runs on your machine
(`egoray run`) or on a Ray cluster (`egoray submit`), and a killed job resumes where it stopped.
Try `egoray demo` for every job on synthetic data."""


class UsageError(EgorayError):
    """A problem the user can fix from the command line; printed as one line, exit code 2."""


def cmd_run(args: argparse.Namespace) -> int:
    """Run (or resume) the job a config describes."""
    from egoray.pipelines import job_module, load_config

    config = load_config(args.config, args.overrides + (["ray.in_process=true"] if args.in_process else []))
    if args.dry_run:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    if args.plan:
        for line in job_module(config.job).plan(config).describe():  # checks the inputs, writes nothing
            print(line)
        return 0
    # The job reaches Ray itself (after checking its inputs: bad input fails fast) with the
    # options it needs; whatever it started ends here.
    running_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    with _console(args, config.output, config.job, tags={config.job, "egoray"}) as log_path:
        try:
            manifest = job_module(config.job).run(config, overwrite=args.overwrite)
        finally:
            if not running_before and "ray" in sys.modules and sys.modules["ray"].is_initialized():
                sys.modules["ray"].shutdown()
        _print_summary(manifest)
        if log_path:
            say(f"  log: {log_path}")
    return 0 if manifest.get("status") == "complete" else 1


@contextlib.contextmanager
def _console(args: argparse.Namespace, output: str, name: str, tags: set[str],
             show_progress: bool = True) -> Iterator[Path | None]:
    """Ray's and the libraries' output into a log file unless ``--verbose``; yields its path."""
    if args.verbose:
        yield None
        return
    from egoray.console import log_file, quiet

    path = log_file(output, name).resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # an output we cannot write says so itself, later and more precisely
        say(f"egoray: no log file ({e}); Ray's output stays here")
        yield None
        return
    try:
        with quiet(path, tags, show_progress):
            yield path
    except BaseException as e:
        e.add_note(f"egoray: the log of this run is {path}")  # shown with a traceback, not with our one-liners
        raise


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a deterministic synthetic Ego4D-style dataset."""
    from egoray.data.synth import synthesize

    manifest = synthesize(
        args.out,
        videos=args.videos,
        seed=args.seed,
        actions_per_video=args.actions,
        with_videos=not args.no_videos,
        defects=not args.no_defects,
    )
    print(json.dumps(manifest, indent=2))
    print(f"synthetic dataset written to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run every available job on fresh synthetic data on a local Ray."""
    from egoray.pipelines.demo import check_skip, run_demo

    check_skip(tuple(args.skip))
    with _console(args, args.out, "demo", tags=set(), show_progress=False) as log_path:
        run_demo(args.out, videos=args.videos, seed=args.seed, skip=tuple(args.skip))
        if log_path:
            say(f"[demo] log: {log_path}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score any system's outputs from files; prints one JSON object of metrics."""
    from egoray.eval import scoring

    if args.what == "captions":
        result = scoring.score_captions_files(args.pred, args.ref, args.tokenizer)
    elif args.what == "retrieval":
        result = scoring.score_retrieval_files(args.sim, args.relevancy)
    else:
        result = scoring.score_gap_files(args.a, args.b, args.plot, args.method)
    print(json.dumps(result, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write a static HTML report of a run directory (job outputs with run.json)."""
    from egoray.eval.report import write_report

    print(write_report(args.run_dir, args.out))
    return 0


def _print_summary(manifest: dict) -> None:
    say(f"\n{manifest['job']}: {manifest['status']} -> {manifest['output']}")
    for name, c in manifest.get("stages", {}).items():
        say(f"  {name:<12} in {c['in']:>9}  out {c['out']:>9}  rejected {c['rejected']:>7}")
    ran, configured = manifest.get("actors", {}), manifest.get("actors_configured", {})
    for name, want in configured.items():
        if ran.get(name, want) < want:
            say(f"  {name}: {ran[name]} of {want} actors ran (the cluster had no room for more)")
    shards = manifest.get("shards", {})
    if shards:
        say(f"  shards: {shards.get('completed')}/{shards.get('total')} complete"
              f" ({shards.get('resumed', 0)} from an earlier run)")


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a job to a Ray cluster (Ray Jobs API); prints the job id."""
    from egoray import submit

    job_id = submit.submit(args.config, args.overrides, address=args.address, working_dir=args.working_dir)
    print(job_id)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a job's output in another tool's format (hdf5: features as one file keyed by video uid)."""
    from egoray.features.export import export_hdf5

    n = export_hdf5(args.features, args.out)
    print(f"{n} keys -> {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Turn another tool's released model into an egoray export (lavila: LaViLa's dual encoders and narrators)."""
    from egoray.models.lavila_import import import_lavila

    summary = import_lavila(args.checkpoint, args.output, args.head_width, args.text_model, args.lm)
    print(f"{summary['kind']} ({summary['model'] or 'LaViLa'}, {summary['tensors']} tensors) -> {summary['output']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print a submitted job's status as JSON."""
    from egoray import submit

    print(json.dumps(submit.status(args.job_id, address=args.address), indent=2))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a submitted job's logs (--follow: until it ends)."""
    from egoray import submit

    text = submit.logs(args.job_id, address=args.address, follow=args.follow)
    if text is not None:
        print(text, end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop a submitted job."""
    from egoray import submit

    stopped = submit.stop(args.job_id, address=args.address)
    print("stopping" if stopped else "not running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egoray", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"egoray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    p.add_argument("config", help="job config YAML (path or URL)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--overwrite", action="store_true", help="delete the output first instead of resuming")
    p.add_argument("--dry-run", action="store_true", help="print the validated config and stop")
    p.add_argument("--plan", action="store_true", help="check the job's inputs, print what it would read, prepare, "
                   "run (stages and actors, Ray Train's workers, or shard tasks) and write, and stop")
    p.add_argument("--in-process", action="store_true", help="run a streaming job's stages in this process, "
                   "without Ray (for pdb; training jobs, ingest and eval refuse)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the libraries' output here instead "
                   "of in the run's log file")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("synth", help=cmd_synth.__doc__, description=cmd_synth.__doc__)
    p.add_argument("out", help="output directory (path or URL)")
    p.add_argument("--videos", type=int, default=8, help="number of videos (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--actions", type=int, default=10, help="actions per video (default 10)")
    p.add_argument("--no-videos", action="store_true", help="annotations only, no mp4 files")
    p.add_argument("--no-defects", action="store_true", help="no deliberately bad records")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    p.add_argument("--out", default="egoray-demo", help="output directory (default ./egoray-demo)")
    p.add_argument("--videos", type=int, default=12, help="synthetic videos (default 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", nargs="+", default=[], metavar="STEP",
                   help="steps to leave out (config names: qa rephrase class_prompts ingest_em ...)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the libraries' output here instead "
                   "of in the demo's log file")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("score", help=cmd_score.__doc__, description=cmd_score.__doc__)
    score = p.add_subparsers(dest="what", required=True)
    q = score.add_parser("captions", help="BLEU-1..4, METEOR, ROUGE-L, CIDEr (COCO caption evaluation code)")
    q.add_argument("--pred", required=True, help="JSON or Parquet: id -> text")
    q.add_argument("--ref", required=True, help="JSON or Parquet: id -> text or [texts]")
    q.add_argument("--tokenizer", choices=["ptb", "lavila", "none"], default="ptb",
                   help="ptb: COCO's PTB tokenizer (default); lavila: LaViLa's narrator evaluation (BERT uncased "
                        "tokens, punctuation kept); none: input is already tokenised")
    q = score.add_parser("retrieval", help="R@1/5/10, median rank; with --relevancy also MIR mAP and nDCG")
    q.add_argument("--sim", required=True, help=".npy similarity [videos, texts] (square without --relevancy)")
    q.add_argument("--relevancy", help=".npy/.npz or pickle relevancy of the same shape (EK-100 MIR)")
    q = score.add_parser("gap", help="modality gap of paired embeddings")
    q.add_argument("--a", required=True, help=".npy [n, d] embeddings of one modality")
    q.add_argument("--b", required=True, help=".npy [n, d] embeddings of the other, row i paired with a's")
    q.add_argument("--plot", help="also write a PNG of the pairs in 2-D here")
    q.add_argument("--method", choices=["svd", "umap"], default="svd")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__)
    export = p.add_subparsers(dest="format", required=True)
    q = export.add_parser("hdf5", help="a video_features (or import_features) output as one HDF5 file, "
                                       "f[video_uid][:] as CLEP's and GroundVQA's loaders read it")
    q.add_argument("features", help="a video_features output")
    q.add_argument("out", help="the .h5 file to write (path or URL)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help=cmd_import.__doc__, description=cmd_import.__doc__)
    imports = p.add_subparsers(dest="format", required=True)
    q = imports.add_parser("lavila", help="a LaViLa checkpoint (TSF dual encoder or VCLM narrator) as an export that "
                                          "video_features tower=, text_features, train_video_text init_from= and "
                                          "narrate model= take")
    q.add_argument("checkpoint", help="LaViLa's .pth ({'state_dict': ...}; path or URL)")
    q.add_argument("output", help="folder to write model/model.pt into (path or URL)")
    q.add_argument("--head-width", type=int, default=64, help="width of every attention head (LaViLa's: 64)")
    q.add_argument("--text-model", default="distilbert-base-uncased",
                   help="the transformers text tower of a *_DISTILBERT_BASE checkpoint (config and tokenizer)")
    q.add_argument("--lm", help="a narrator's LM (its config and tokenizer; default: the GPT-2 of the checkpoint's width)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("run_dir", help="a directory of job outputs (e.g. egoray demo's --out)")
    p.add_argument("--out", help="where to write the HTML (default RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)

    address_help = "dashboard URL (default: RAY_ADDRESS if http(s), else http://127.0.0.1:8265)"
    p = sub.add_parser("submit", help=cmd_submit.__doc__, description=cmd_submit.__doc__)
    p.add_argument("config", help="job config YAML inside the working directory")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--address", help=address_help)
    p.add_argument("--working-dir", default=".", help="directory shipped to the cluster (default .)")
    p.set_defaults(func=cmd_submit)
    for name, fn in (("status", cmd_status), ("logs", cmd_logs), ("stop", cmd_stop)):
        p = sub.add_parser(name, help=fn.__doc__, description=fn.__doc__)
        p.add_argument("job_id")
        p.add_argument("--address", help=address_help)
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream new lines until the job ends")
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from egoray.config import ConfigError
    from egoray.settings import apply_driver_defaults, working_directory_exists

    if not working_directory_exists():  # relative paths mean nothing, and `import torch` aborts
        say("egoray: error: the current directory no longer exists (it was removed after this shell "
            "entered it); cd to an existing directory and run the command again", error=True)
        return 2
    apply_driver_defaults()  # before anything imports ray
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options (`run cfg.yaml --overwrite a=1`): argparse leaves them over.
    if extra and getattr(args, "overrides", None) is not None and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ConfigError, UsageError) as e:
        say(f"egoray: config error: {e}", error=True)
        return 2
    except EgorayError as e:  # bad input, storage, a refused resume, a failing stage, a cluster
        say(f"egoray: error: {e}", error=True)
        return 1
    except KeyboardInterrupt:
        print("egoray: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
