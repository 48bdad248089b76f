"""The `calltune` command: run, prepare, synthesize, chat, coach, rollback, serve, users, secrets, submit, upload.

It is over 400 lines on purpose: one argparse tree and one thin function a command, each a call into the layer that
does the work; split by command, the flags a newcomer reads in `--help` would be scattered over as many files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from calltune import __version__
from calltune.backends.registry_base import RegistryError
from calltune.config import Config, ConfigError, load_config

DEFAULT_CONFIG = Path("configs/local.yaml")
VERTEX_CONFIG = Path("configs/vertex.yaml")  # the default of submit and upload, which run on Vertex AI


def _config(args, load=load_config) -> Config:
    default = getattr(args, "default_config", DEFAULT_CONFIG)
    path = args.config if args.config else (default if default.exists() else None)
    return load(path, args.overrides)


def _offline() -> None:
    # Nothing may download weights at run time; child processes (kfp.local tasks) inherit this.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_run(args) -> int:
    from calltune.pipeline.local_run import outcome, run_local

    cfg = _config(args)
    _offline()
    out = Path(args.out or Path("runs") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))
    summary = run_local(cfg, out, verbose=args.verbose)
    print("\n".join(outcome(summary, cfg, out, _same_state(args))))
    return 0


def _same_state(args) -> str:
    """The --config and overrides a follow-up command needs to find this run's secret and model store."""
    keep = [o for o in args.overrides if o.startswith(("state_dir=", "deploy."))]
    return " ".join(([f"--config {args.config}"] if args.config else []) + keep)


def cmd_config(args) -> int:
    from calltune.config import describe_fields

    if args.show:
        import yaml

        print(yaml.safe_dump(_config(args).model_dump(), sort_keys=False, allow_unicode=True), end="")
        return 0
    for f in describe_fields():
        print(f"{f['name']}  ({f['type']}, default: {json.dumps(f['default'], ensure_ascii=False)})\n"
              f"    {f['description']}")
    return 0


def cmd_prepare(args) -> int:
    from calltune.data.ingest import resolve_input
    from calltune.data.prepare import prepare

    cfg = _config(args)
    if args.input:
        cfg.data.input = args.input
    report = prepare(resolve_input(cfg.data.input), Path(args.out), cfg)
    keys = ("calls", "examples", "train", "validation", "test", "overlap_calls", "quarantined")
    print(json.dumps({k: report.get(k) for k in keys}))
    calls = ", calls.jsonl (translated, originals kept)" if (Path(args.out) / "calls.jsonl").is_file() else ""
    print(f"wrote {args.out}/train.jsonl, test.jsonl (Vertex), *.messages.jsonl, quarantine.jsonl, report.json{calls}")
    return 0


def cmd_synthesize(args) -> int:
    from calltune.data.synthesize.job import synthesize

    cfg = _config(args)
    cfg.synthesize.enabled = True  # asking for the command is asking for the step
    report = synthesize(args.splits, args.out, cfg.synthesize, seed=cfg.seed, state_dir=cfg.state_path(),
                        split=cfg.split)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def cmd_secrets(args) -> int:
    from contextlib import closing

    from calltune.backends.registry import open_registry

    cfg = _config(args)
    secret = args.secret or cfg.deploy.secret_id
    if args.check:
        return _check_secret(cfg.model_copy(update={"deploy": cfg.deploy.model_copy(update={"secret_id": secret})}))
    readonly = args.disable is None and args.enable is None  # listing never waits behind a writer
    with closing(open_registry(cfg.deploy, cfg.state_path(), readonly=readonly)) as registry:
        for action in ("disable", "enable"):
            if getattr(args, action) is not None:
                getattr(registry, action)(secret, getattr(args, action))
                print(f"{secret} version {getattr(args, action)}: {action}d")
                return 0
        versions = registry.list_versions(secret)
    if not versions:
        print(f"{secret}: no versions")
        return 0
    latest = max(v.version for v in versions)
    print(f"{'version':>7}  {'state':<8}  {'created (UTC)':<19}  annotations")
    for v in sorted(versions, key=lambda v: v.version):
        note = ", ".join(f"{k}={val}" for k, val in sorted(v.annotations.items()))
        mark = " (latest)" if v.version == latest else ""
        print(f"{v.version:>7}  {v.state:<8}  {str(v.create_time)[:19]:<19}  {note}{mark}")
    return 0


def _check_secret(cfg: Config) -> int:
    """`calltune secrets --check`: what each version names against what is deployed and taking traffic; exit 1 on
    drift."""
    from calltune.backends.resources import resource_id as short
    from calltune.release.endpoint_deploy import check

    found = check(cfg.deploy, cfg.gcp, cfg.state_path())
    print(f"{'version':>7}  {'state':<8}  {'model (deployed model id)':<40}  on the endpoint")
    for row in found["versions"]:
        d = row["deployment"]
        named = f"{short(row['vertex_model'])} ({row['deployed_model_id']})" if row["vertex_model"] \
            else "no Vertex model"
        mark = " (latest enabled)" if row["version"] == found["latest_enabled"] else ""
        print(f"{row['version']:>7}  {row['state']:<8}  {named:<40}  "
              f"{f'deployed, {d.traffic}% of the traffic' if d else 'not deployed'}{mark}")
    for d in found["deployed"]:
        print(f"deployed on {short(d.endpoint)}: {d.deployed_model_id} ({short(d.model)}), {d.traffic}% of the traffic")
    for line in found["drift"]:
        print(f"drift: {line}")
    if not found["drift"]:
        print("in agreement: the latest enabled version's model takes all the traffic, nothing else is deployed")
    return 1 if found["drift"] else 0


def _responder(cfg: Config, version: str = "latest"):
    """The model in a version of the secret; errors name the version, never the secret's payload."""
    from calltune.apps.serve.watcher import load_responder, redact
    from calltune.release.store import resolve_endpoint

    endpoint = resolve_endpoint(cfg.deploy, cfg.state_path(), version=version)
    try:
        return load_responder(endpoint, cfg.serve, cfg.split)
    except Exception as exc:
        why = redact(str(exc), endpoint, f"<{cfg.deploy.secret_id} version {version}>")
        raise ValueError(f"{cfg.deploy.secret_id} version {version} cannot be loaded: {why}") from None


def cmd_chat(args) -> int:
    from calltune.apps.chat import ChatSession, repl

    cfg = _config(args)
    _offline()
    _serve_flags(cfg, args)
    responder = _responder(cfg, args.version)
    print(f"Customer model from {cfg.deploy.secret_id} ({args.version}).")
    try:
        repl(ChatSession(responder), seller_first=args.seller_first, max_new_tokens=cfg.serve.default_max_tokens)
    finally:
        responder.close()
    return 0


def cmd_coach(args) -> int:
    from calltune.coaching.transcripts import find_coach, read_calls, render, review_calls

    cfg = _config(args)
    _offline()
    coach, source = find_coach(cfg, args.coach)
    calls, rejected, stats = read_calls(args.file, cfg, args.call)
    results = review_calls(calls, coach, cfg)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        print(f"coach: {source}; {len(calls)} call(s)" + (f", {stats['translated_calls']} translated from "
                                                           f"{cfg.translate.source_lang} first ({cfg.translate.backend}, "
                                                           f"{stats.get('cache_hits', 0)} texts from the cache)"
                                                           if stats["translated_calls"] else "") + "\n")
        for result in results:
            print("\n".join(render(result)))
    for line in rejected:
        print(f"calltune: {line} (not reviewed)", file=sys.stderr)
    return 0 if any("review" in r for r in results) else 1


def cmd_rollback(args) -> int:
    from calltune.release.deploy import rollback
    from calltune.release.endpoint_deploy import rollback as rollback_endpoint
    from calltune.release.endpoint_deploy import serves_on_endpoint

    cfg = _config(args)
    if serves_on_endpoint(cfg.deploy, cfg.state_path()):  # deploy.target=vertex-endpoint: the endpoint's traffic too
        res = rollback_endpoint(cfg.deploy, cfg.gcp, cfg.state_path(), to=args.to)
    else:
        res = rollback(cfg.deploy, cfg.state_path(), to=args.to)
    print(f"{res['secret_id']} version {res['version']} (now latest) holds version {res['rolled_back_to']}'s endpoint; "
          + ("the latest version was disabled, nothing was served" if res.get("latest_was_disabled") else
             f"version {res['rolled_back_from']} is no longer served"))
    if res["disabled"]:
        print(f"disabled old versions {res['disabled']} (deploy.keep_enabled_versions={cfg.deploy.keep_enabled_versions})")
    return 0


def _serve_flags(cfg: Config, args) -> None:
    """The serve.* settings the command line gives (chat and serve read the same ones: the same Vertex base URL)."""
    flags = {name: getattr(args, name, None) for name in ("host", "port", "refresh_s", "max_tokens", "vertex_base_url")}
    cfg.serve = type(cfg.serve)(**{**cfg.serve.model_dump(), **{k: v for k, v in flags.items() if v is not None}})


def cmd_serve(args) -> int:
    import logging

    from calltune.apps.serve.app import serve

    cfg = _config(args)
    _offline()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _serve_flags(cfg, args)
    serve(cfg.serve, cfg.deploy, cfg.state_path(), cfg.split, page=cfg)
    return 0


def cmd_users(args) -> int:
    from calltune.coaching.history import open_history

    cfg = _config(args)
    store = open_history(cfg.serve.database_url, cfg.state_path())
    try:
        if args.action == "add":
            key = store.add_user(args.name, manager=args.manager)
            print(f"{' '.join(args.name.split())}'s {'manager' if args.manager else 'seller'} key (shown this once; "
                  f"calltune keeps only its hash):", file=sys.stderr)
            print(key)
        elif args.action == "revoke":
            if not store.revoke_user(args.name):
                raise ValueError(f"no user {args.name!r} with a valid key")
            print(f"{args.name}: key revoked (running servers refuse it within serve.refresh_s="
                  f"{cfg.serve.refresh_s:g} s)")
        else:
            for user in store.users():
                state = f"revoked {user.revoked_at:%Y-%m-%d %H:%M}" if user.revoked_at else "valid"
                print(f"{user.name}\t{'manager' if user.manager else 'seller'}\t{state}\t"
                      f"added {user.created_at:%Y-%m-%d %H:%M}")
    finally:
        store.close()
    return 0


def cmd_submit(args) -> int:
    from functools import partial

    from calltune.pipeline.vertex import VertexError, load_vertex_config, submit

    cfg = _config(args, partial(load_vertex_config, compiling=False))
    try:
        result = submit(args.template, cfg, job_id=args.job_id, wait=args.wait, poll_s=args.poll_s)
    except VertexError as exc:
        print(f"calltune: {exc}", file=sys.stderr)
        return 1
    print(f"{result['job_id']}: {result['state']}")
    return 0


def cmd_upload(args) -> int:
    from calltune.pipeline.vertex import git_commit, upload

    cfg = _config(args)
    result = upload(args.template, cfg, args.tag or [git_commit(), "latest"])
    print(f"uploaded {result['package']} {result['version']} tagged {', '.join(result['tags'])}; submit it with:")
    print(f"  calltune submit {result['urls'][0]}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (`calltune: ...`, exit 2), pointing to --help instead of printing the usage."""

    def error(self, message: str):
        self.exit(2, f"calltune: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="calltune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"calltune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, help="what to do (each has its own --help)")

    def common(p, default: Path = DEFAULT_CONFIG):
        p.add_argument("--config", type=Path, help=f"YAML config (default: {default} when present)")
        p.set_defaults(default_config=default)
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. translate.backend=none tune.max_steps=10")
        return p

    def vertex_base_url(p) -> None:
        p.add_argument("--vertex-base-url", default=os.environ.get("GOOGLE_VERTEX_BASE_URL") or None,
                       help="Vertex AI API base URL for a Vertex endpoint in the secret (default: "
                            "$GOOGLE_VERTEX_BASE_URL, else serve.vertex_base_url)")

    p = common(sub.add_parser("run", help="run the whole pipeline locally through kfp.local"))
    p.add_argument("--out", type=Path, help="output folder (default: runs/<UTC time>)")
    p.add_argument("--verbose", action="store_true",
                   help="kfp's full log: every task's executor input, outputs and library notices")
    p.set_defaults(func=cmd_run)

    p = common(sub.add_parser("config", help="list every config field with its type, default and description"))
    p.add_argument("--show", action="store_true",
                   help="print the effective config instead: the YAML file with the overrides applied")
    p.set_defaults(func=cmd_config)

    p = common(sub.add_parser("prepare", help="ingest -> translate -> turn-split -> sample, without KFP"))
    p.add_argument("--input", help="raw data file (default: data.input from the config)")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for the splits, quarantine.jsonl, report.json and, when translating, calls.jsonl "
                        "(the translated calls, each turn's original text beside it)")
    p.set_defaults(func=cmd_prepare)

    p = common(sub.add_parser("synthesize", help="add synthetic train examples to a prepared splits folder"))
    p.add_argument("--splits", required=True, type=Path, help="folder written by `calltune prepare`")
    p.add_argument("--out", required=True, type=Path, help="new splits folder (validation and test copied unchanged)")
    p.set_defaults(func=cmd_synthesize)

    p = common(sub.add_parser("chat", help="talk, as the seller, to the model in the secret's latest version"))
    p.add_argument("--version", default="latest", help="secret version (default: latest)")
    p.add_argument("--seller-first", action="store_true", help="start the call yourself")
    vertex_base_url(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("coach", help="the coach's review (and the judge's, when configured) of the calls in a "
                                     "transcript file: a practice download, a seed-CSV export, any format ingest "
                                     "reads; translated first when in translate.source_lang")
    p.add_argument("file", help="transcript file (calls JSONL from the practice page, seed CSV, chat JSONL...)")
    common(p)
    p.add_argument("--call", help="review only this call id (default: every call in the file)")
    p.add_argument("--coach", help="a coach.json, the coach step's folder or a model folder (default: the coach of "
                                   "the model in the secret's latest version)")
    p.add_argument("--json", action="store_true", help="print the reviews as JSON, as the page receives them")
    p.set_defaults(func=cmd_coach)

    p = common(sub.add_parser("rollback", help="publish an earlier version's endpoint again, as the newest version"))
    p.add_argument("--to", type=int, metavar="VERSION",
                   help="version to roll back to (default: the newest enabled earlier version with another endpoint)")
    p.set_defaults(func=cmd_rollback)

    p = common(sub.add_parser("serve", help="OpenAI-compatible API (/v1/chat/completions, streaming) for the secret's "
                                            "latest version, following new versions without a restart"))
    p.add_argument("--host", help="address to listen on (default: serve.host, 127.0.0.1; any other needs an API key "
                                  "in $CALLTUNE_API_KEY)")
    p.add_argument("--port", type=int, help="port (default: serve.port, 8000)")
    p.add_argument("--refresh-s", type=float, help="seconds between checks for a new version (default: serve.refresh_s)")
    p.add_argument("--max-tokens", type=int, help="longest reply a request may ask for (default: serve.max_tokens)")
    vertex_base_url(p)
    p.set_defaults(func=cmd_serve)

    users = sub.add_parser("users", help="who may sign in to `calltune serve` (serve.auth=keys): sellers' and "
                                         "managers' keys, kept in the practice history's database (serve.database_url)")
    actions = users.add_subparsers(dest="action", required=True, help="add, list or revoke a user")
    p = actions.add_parser("add", help="issue a key to NAME and print it once (only its hash is kept)")
    p.add_argument("name", help="the seller's name (or, with serve.auth=iap, their email)")
    p.add_argument("--manager", action="store_true", help="a manager: sees the team view and every seller's calls")
    common(p)
    common(actions.add_parser("list", help="every user: seller or manager, valid or revoked"))
    p = actions.add_parser("revoke", help="revoke NAME's key (servers refuse it within serve.refresh_s)")
    p.add_argument("name", help="the seller's or manager's name, as `calltune users list` shows it")
    common(p)
    users.set_defaults(func=cmd_users)

    p = common(sub.add_parser("secrets", help="list a secret's versions; disable or enable one; check them against "
                                              "the Vertex endpoint"))
    action = p.add_mutually_exclusive_group()
    action.add_argument("--disable", type=int, metavar="VERSION", help="disable a version (it can no longer be read)")
    action.add_argument("--enable", type=int, metavar="VERSION", help="enable a disabled version again")
    action.add_argument("--check", action="store_true", help="deploy.target=vertex-endpoint: what each version names "
                                                             "against what is deployed and taking traffic (exit 1 "
                                                             "on drift)")
    p.add_argument("--secret", help="secret id (default: deploy.secret_id)")
    p.set_defaults(func=cmd_secrets)

    p = sub.add_parser("submit", help="start the pipeline on Vertex AI Pipelines, with the config's parameter values")
    p.add_argument("template", help="compiled pipeline (build/calltune-vertex.yaml) or Artifact Registry template URL "
                                    "(https://REGION-kfp.pkg.dev/PROJECT/REPO/calltune/TAG)")
    common(p, VERTEX_CONFIG)
    p.add_argument("--job-id", help="pipeline job id (default: calltune-<timestamp>)")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 1 unless it succeeds")
    p.add_argument("--poll-s", type=float, default=30.0, help="seconds between state checks with --wait (default: 30)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("upload", help="push a compiled pipeline to Artifact Registry (gcp.template_registry) as a template")
    p.add_argument("template", type=Path, help="compiled pipeline, e.g. build/calltune-vertex.yaml")
    common(p, VERTEX_CONFIG)
    p.add_argument("--tag", action="append", help="tag of the uploaded version, repeatable (default: the git commit, "
                                                  "and latest)")
    p.set_defaults(func=cmd_upload)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Options and key=value overrides in any order after the subcommand (argparse alone stops taking a
    positional list once an option follows it)."""
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown or not hasattr(args, "overrides"):
        parser.parse_args(argv)  # the usage error argparse gives for them (it exits)
    args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(build_parser(), argv)
    except SystemExit as done:  # --help (0) or a usage error (2, already printed)
        return done.code
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"calltune: {exc.one_line()}", file=sys.stderr)
        return 2
    except (ValueError, RegistryError, OSError, RuntimeError) as exc:  # bad input, unknown secret, missing file, a
        # cloud service that refused or gave up: one line, no traceback (messages never hold secret payloads). Not
        # every LookupError: a KeyError or IndexError is a bug, and its traceback is what finds it.
        print(f"calltune: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
