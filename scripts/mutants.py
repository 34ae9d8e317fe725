"""Deliberate bugs: each mutant is a small source patch that breaks one feature, with the
tests that name that feature. For each, the harness copies the checkout to a temporary
folder, applies the patch there, runs only those tests, and requires at least one to fail.
It prints a table (mutant, tests, caught?) and exits 1 if any mutant survives.

    .venv/bin/python scripts/mutants.py            # every mutant (about 16 minutes on 2 cores)
    .venv/bin/python scripts/mutants.py -k lock    # the mutants whose name contains "lock"
    .venv/bin/python scripts/mutants.py --check    # only that every patch still applies

tests/test_mutants.py runs a few of them in the suite; docs/testing.md has the last table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("src", "tests", "conf", "scripts", "docs", "README.md", "pyproject.toml")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the checkout
    old: str  # must occur in the file exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments (node ids, -k expressions)


T = "src/trainlab/"
SWEEPER = "src/hydra_plugins/trainlab_sweeper/optuna_sweeper.py"
MUTANTS = [
    # -- the bugs issue 12 found surviving --
    Mutant("first Ctrl-C kills at once", T + "signals.py",
           "if request.signum is not None and signum == signal.SIGINT:",
           "if signum == signal.SIGINT:",
           ("tests/test_edges.py", "-k", "any_phase and SIGINT and validation")),
    Mutant("restore skips the optimizer", T + "checkpoint.py",
           "        if part is not None and saved.get(name) is not None:",
           '        if part is not None and saved.get(name) is not None and name != "optimizer":',
           ("tests/test_checkpoint.py", "-k", "round_trip")),
    Mutant("lambda_warmup decays with another shape", T + "schedules.py",
           "0.5 * (1 + math.cos(math.pi * progress))",
           "0.5 * (1 + math.cos(math.pi * progress)) ** 2",
           ("tests/test_optim.py", "-k", "traces and lambda_warmup")),
    Mutant("multi-task loss ignores its weights", T + "losses.py",
           "self.weights[k] * loss(output[k], target[k])", "loss(output[k], target[k])",
           ("tests/test_losses.py", "-k", "weights")),
    Mutant("trainer.compile ignored", T + "parts.py",
           "        model = torch.compile(model)  #", "        model = model  #",
           ("tests/test_precision.py", "-k", "compile")),
    Mutant("channels_last leaves the model as it is", T + "parts.py",
           "model = build_model(cfg.model).to(device, memory_format=memory_format(trainer))",
           "model = build_model(cfg.model).to(device)",
           ("tests/test_precision.py", "-k", "channels_last")),
    Mutant("a restart resumes from the oldest checkpoint", T + "checkpoint_files.py",
           'entries.sort(key=lambda item: item[1]["step"], reverse=True)',
           'entries.sort(key=lambda item: item[1]["step"])',
           ("tests/test_chaos.py", "-k", "ten_random")),
    Mutant("a resume keeps the events the crashed attempt wrote after its checkpoint",
           T + "train.py",
           "purge = state.step + 1 if resume is not None else (0 if in_place else None)",
           "purge = None if resume is not None else (0 if in_place else None)",
           ("tests/test_resume.py", "-k", "continues_with_more_epochs")),
    Mutant("a resume forgets the best value so far", T + "parts.py",
           'return cls(**known | {"history": unpack_history(saved["history"])})',
           'return cls(**known | {"history": unpack_history(saved["history"]), "best": None})',
           ("tests/test_resume.py", "-k", "matrix and mid_epoch")),
    Mutant("eval prints other lines than README shows", T + "evaluation.py",
           'print(f"written to {out}")', 'print(f"saved as {out}")',
           ("tests/test_readme.py", "-k", "every_readme_command")),
    Mutant("ONNX export fixed to a batch of one", T + "export.py",
           'dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,',
           "verbose=False,", ("tests/test_verbs.py", "-k", "onnx")),
    Mutant("Optuna maximizes whatever the monitor", T + "studies.py",
           '"minimize" if name in RECORD_KEYS or metric_mode(name) == "min" else "maximize"',
           '"maximize"', ("tests/test_studies.py", "-k", "shipped_spaces")),
    Mutant("a trial a killed sweep left running starts over", SWEEPER,
           '*_assignments(trial.params), "trainer.resume=auto"]))',
           "*_assignments(trial.params)]))",
           ("tests/test_sweep.py", "-k", "continues_after_a_kill")),
    # -- issue 16: sweeps you can trust and scale --
    Mutant("one sampler seed for every trial (a continued study replays)", T + "studies.py",
           "seed=epoch_seed(base, number) % 2**32", "seed=base",
           ("tests/test_studies.py", "-k", "continued_study")),
    Mutant("a worker takes trials another one runs", SWEEPER,
           "            if not self.claims.take(trial.number):\n                continue",
           "            if not self.claims.take(trial.number):\n                pass",
           ("tests/test_studies.py", "-k", "two_workers and journal")),
    Mutant("a trial killed twice is resumed again", SWEEPER,
           "if attempts >= 2 or not", "if attempts >= 99 or not",
           ("tests/test_studies.py", "-k", "dead_worker")),
    Mutant("a space key the model lacks is not checked", SWEEPER,
           "raise ConfigError(_not_a_key(cfg, key, picked))", "pass",
           ("tests/test_studies.py", "-k", "shipped_spaces")),
    Mutant("the pruner is never asked", T + "loop.py",
           "pruned = distributed.broadcast_object(pruning.check(state.history[-1]))",
           "pruned = None", ("tests/test_studies.py", "-k", "pruned")),
    Mutant("a pruned trial fails the sweep", T + "sweep.py",
           'ENDED_WELL = ("completed", "pruned")', 'ENDED_WELL = ("completed",)',
           ("tests/test_studies.py", "-k", "pruned")),
    Mutant("report sorts numbers as text", T + "sweep.py",
           '        return (0, float(text.split(" ")[0]))', "        return (1, text)",
           ("tests/test_sweep.py", "-k", "report_sorts")),
    Mutant("a job's wall time counts from the process start", T + "train.py",
           'outcome["wall_s"] = earlier_s + time.perf_counter() - started',
           'outcome["wall_s"] = time.perf_counter() - trainlab.STARTED',
           ("tests/test_sweep.py", "-k", "own_start")),
    Mutant("the explainer cannot enumerate an interval", T + "explain.py",
           "        return [str(sweep.start), str(sweep.end)]",
           "        return list(override.sweep_string_iterator())",
           ("tests/test_errors.py", "-k", "sweep_syntax and interval")),
    Mutant("parallel joblib jobs each take all the cores", T + "job.py",
           "        cfg.trainer.num_threads = max(1, (os.cpu_count() or 1) // parallel)",
           "        pass", ("tests/test_sweep.py", "-k", "share_of_the_cores")),
    Mutant("report shows nothing of an unfinished run", T + "sweep.py",
           'row.best = files[manifest["best"]].get("metric")', "row.best = None",
           ("tests/test_sweep.py", "-k", "unfinished_runs")),
    Mutant("report --desc ignored", T + "cli.py",
           'sort = f"-{ns.sort}" if ns.sort and ns.desc else ns.sort', "sort = ns.sort",
           ("tests/test_sweep.py", "-k", "unfinished_runs")),
    Mutant("tensorboard --bind-all still on loopback", T + "board.py",
           'where = ["--bind_all"] if bind_all else ["--host", "127.0.0.1"]',
           'where = ["--host", "127.0.0.1"]',
           ("tests/test_verbs.py", "-k", "bind_all")),
    Mutant("regression predictions rounded to two digits", T + "fitting.py",
           'rows = [[f"{v:.6g}" for v in row] for row in out.tolist()]',
           'rows = [[f"{v:.2g}" for v in row] for row in out.tolist()]',
           ("tests/test_verbs.py", "-k", "regression_table")),
    Mutant("the hinge loss built with another margin", "conf/loss/multi_margin.yaml",
           "margin: 1.0 ", "margin: 0.5 ", ("tests/test_losses.py", "-k", "hinge")),
    Mutant("a resume may change the precision unasked", T + "continuation.py",
           '(("precision", "trainer.precision"), ("world_size", "trainer.devices"))',
           '(("world_size", "trainer.devices"),)',
           ("tests/test_options.py", "-k", "precision_unasked")),
    Mutant("progress=none prints progress lines", T + "progress.py",
           "self.mode, self.max_epochs, self.total = mode, max_epochs, steps_per_epoch",
           'self.mode, self.max_epochs, self.total = mode.replace("none", "lines"), max_epochs, '
           "steps_per_epoch",
           ("tests/test_options.py", "-k", "progress_none")),
    # -- one per feature --
    Mutant("gradient clipping off", T + "steps.py",
           "            nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)\n",
           "            pass\n",
           ("tests/test_options.py", "-k", "clipping")),
    Mutant("min_delta ignored", T + "loop.py",
           "    delta = trainer.early_stopping.min_delta", "    delta = 0.0",
           ("tests/test_options.py", "-k", "min_delta")),
    Mutant("early stopping one validation late", T + "loop.py",
           "state.bad_validations >= patience", "state.bad_validations > patience",
           ("tests/test_options.py", "-k", "min_delta")),
    Mutant("val_every_epochs ignored", T + "loop.py",
           "state.epoch % self.trainer.val_every_epochs == 0", "True",
           ("tests/test_options.py", "-k", "cadence")),
    Mutant("checkpoint every_n_epochs ignored", T + "loop.py",
           "state.epoch % every.every_n_epochs == 0", "True",
           ("tests/test_options.py", "-k", "cadence")),
    Mutant("nan_skip_limit ignored", T + "loop.py",
           "state.nan_skips < trainer.nan_skip_limit", "True",
           ("tests/test_options.py", "-k", "nan_skip")),
    Mutant("scheduler not stepped per step", T + "loop.py",
           "            schedules.step_per_batch(scheduler, cadence.fractional_epoch(state))",
           "            pass",
           ("tests/test_optim.py", "-k", "traces and onecycle")),
    Mutant("RNG not restored on resume", T + "checkpoint.py",
           'def restore_rng(state: dict[str, Any]) -> None:\n',
           'def restore_rng(state: dict[str, Any]) -> None:\n    return\n',
           ("tests/test_resume.py", "-k", "matrix and mid_epoch and memory")),
    Mutant("mid-epoch running sums dropped", T + "checkpoint.py",
           '        loop["partial_sums"] = partial',
           '        loop["partial_sums"] = None',
           ("tests/test_resume.py", "-k", "matrix and mid_epoch and memory")),
    Mutant("manifest hash not checked", T + "checkpoint_files.py",
           'or hashlib.sha256(payload).hexdigest() != entry["sha256"]:', ":",
           ("tests/test_checkpoint.py", "-k", "damaged")),
    Mutant("ASGD averaged weights not swapped in", T + "parts.py",
           "    if not parts.eval_with_average:\n        yield\n        return\n",
           "    if True:\n        yield\n        return\n",
           ("tests/test_optim.py", "-k", "asgd")),
    Mutant("param group options dropped", T + "build.py",
           'groups += [{**{k: v for k, v in spec.items() if k != "match"}, "params": []} for',
           'groups += [{"params": []} for', ("tests/test_optim.py", "-k", "param_groups_by")),
    Mutant("DDP sums not all-reduced", T + "distributed.py",
           "    if active():\n        dist.all_reduce(t)\n",
           "    if False:\n        dist.all_reduce(t)\n",
           ("tests/test_distributed.py", "-k", "two_ranks_train_like_one_process")),
    # -- trust at the edges (issue 11) --
    Mutant("run folder lock is a no-op", T + "lock.py",
           "    key = run_dir.absolute()\n    if key in _held:\n",
           "    key = run_dir.absolute()\n    if True:\n",
           ("tests/test_edges.py", "-k", "lock_refuses or eval_is_refused")),
    Mutant("target walk through module attributes", T + "targets.py",
           "if isinstance(child, ModuleType) and child.__name__ != here:", "if False:",
           ("tests/test_targets.py", "-k", "users_own_package")),
    Mutant("torchvision's download/extract helpers not denied", T + "targets.py",
           '"torch.utils.cpp_extension", "torchvision.datasets.utils",',
           '"torch.utils.cpp_extension",',
           ("tests/test_targets.py", "-k", "loader and inside and train_refuses")),
    Mutant("no check before Hydra builds callbacks", T + "cli.py",
           "    message = launch.precheck(args)\n", "    message = None\n",
           ("tests/test_targets.py", "-k", "callbacks and train_refuses")),
    Mutant("records written in place", T + "rundir.py",
           "        write_atomic(path, text.encode())\n", "        path.write_text(text)\n",
           ("tests/test_edges.py", "-k", "config_yaml_survives")),
    Mutant("a signal in the final test is not read", T + "train.py",
           "            stop.check()\n            results.record_results",
           "            results.record_results",
           ("tests/test_edges.py", "-k", "any_phase and SIGTERM and final")),
    Mutant("a signal in start-up is not read", T + "train.py",
           "            stop.check(saved=s.resumed_from is not None)\n", "",
           ("tests/test_edges.py", "-k", "any_phase and SIGTERM and start")),
    Mutant("SIGHUP not handled", T + "signals.py",
           "signal.SIGINT, signal.SIGHUP, signal.SIGUSR1", "signal.SIGINT, signal.SIGUSR1",
           ("tests/test_edges.py", "-k", "real_start_up")),
    Mutant("resume=auto starts a finished run over", T + "continuation.py",
           '    if (run_dir / "metrics.json").is_file() or rundir', "    if False and rundir",
           ("tests/test_edges.py", "-k", "manifest_is_gone")),
    Mutant("resume=auto takes a foreign folder", T + "continuation.py",
           '    if not (run_dir / "config.yaml").is_file():\n        found',
           '    if False:\n        found', ("tests/test_edges.py", "-k", "not_a_trainlab_run")),
    Mutant("max_epochs on a max_steps run accepted", T + "continuation.py",
           "    if bounded and new.max_epochs != old.max_epochs:", "    if False:",
           ("tests/test_edges.py", "-k", "bounded_by_max_steps")),
    Mutant("NaN cells in a CSV accepted", T + "datasets.py",
           "if not math.isfinite(value) or abs(value) > FLOAT32_MAX:", "if False:",
           ("tests/test_edges.py", "-k", "non_finite_csv")),
    Mutant("predict ignores the stored class names", T + "evaluation.py",
           '        labels = stored.get("classes")', "        labels = None",
           ("tests/test_edges.py", "-k", "class_names")),
    Mutant("names may leave outputs/", T + "config.py",
           "    check_name(cfg.name)\n", "", ("tests/test_edges.py", "-k", "one_folder_name")),
    Mutant("the test reports the best validation, not the checkpoint tested", T + "results.py",
           'best_record = next(r for r in state.history if r["step"] == best_step)',
           'best_record = next(r for r in state.history if r["step"] == state.best_step)',
           ("tests/test_edges.py", "-k", "on_error_continue")),
    Mutant("a DataLoader worker's error shown as its traceback", T + "rundir.py",
           '    if text.startswith("Caught ") and "Original Traceback" in text:', "    if False:",
           ("tests/test_edges.py", "-k", "corrupt_image")),
    # -- one home per concept (issue 13) --
    Mutant("metrics.csv keeps what a crashed attempt wrote after its checkpoint",
           T + "metrics.py", "                if step < purge_step:", "                if True:",
           ("tests/test_reporting.py", "-k", "re_paced_resume")),
    Mutant("the sinks are not flushed before a save", T + "loop.py",
           "    events.flush()\n    checkpoint.save(", "    checkpoint.save(",
           ("tests/test_chaos.py", "-k", "ten_random")),
    Mutant("fast_dev_run keeps its checkpoints", T + "train.py",
           "        if trainer.fast_dev_run:\n            ckpt_dir",
           "        if False:\n            ckpt_dir",
           ("tests/test_switches.py", "-k", "fast_dev_run")),
    Mutant("overfit_batches shuffles", T + "parts.py",
           "    shuffle = training and trainer.overfit_batches is None", "    shuffle = training",
           ("tests/test_switches.py", "-k", "overfit")),
    Mutant("limit_val_batches ignored", T + "parts.py",
           '        limit = getattr(trainer, f"limit_{which}_batches")',
           '        limit = trainer.limit_train_batches if which == "train" else None',
           ("tests/test_switches.py", "-k", "limit_val")),
    Mutant("a resume may change limit_train_batches", T + "continuation.py",
           '"trainer.resume", "trainer.progress",',
           '"trainer.resume", "trainer.progress", "trainer.limit_train_batches",',
           ("tests/test_switches.py", "-k", "resume_refuses")),
    # -- an installable product (issue 14, first steps) --
    Mutant("a relative dataset.path is stored as typed", T + "runconfig.py",
           'DATASET_PATH_KEYS = ("path", "test_path", "root", "train_dir", "test_dir")',
           "DATASET_PATH_KEYS = ()", ("tests/test_edges.py", "-k", "relative_paths")),
    Mutant("a misspelt dotpath gets no suggestion", T + "targets.py",
           "    near = difflib.get_close_matches(name, names, n=1)", "    near = []",
           ("tests/test_errors.py", "-k", "dotpath and misspelt")),
    Mutant("a project module is trusted by its name alone", T + "targets.py",
           "    if not project.imported_from(top, where, folder):", "    if False:",
           ("tests/test_project.py", "-k", "trusted_by_where")),
    Mutant("a project's config folder goes after trainlab's",
           "src/hydra_plugins/trainlab_project/project_searchpath.py",
           'search_path.prepend("trainlab project", f"file://{folder}", SearchPathQuery("main"))',
           'search_path.append("trainlab project", f"file://{folder}")',
           ("tests/test_project.py", "-k", "stack_in_front")),
    Mutant("configs --copy writes over the user's edits", T + "configs.py",
           "    if dest.exists() and not force:", "    if False:",
           ("tests/test_project.py", "-k", "copy_writes")),
    Mutant("null shape keys are not read from the data", T + "dataspec.py",
           "        if key in cfg and cfg[key] is None:", "        if False:",
           ("tests/test_dataspec.py", "-k", "come_from")),
    Mutant("eval standardizes with fresh statistics, not the run's", T + "evaluation.py",
           'build_data(cfg.dataset, device, run.data.get("standardize"), cfg.task)',
           "build_data(cfg.dataset, device, None, cfg.task)",
           ("tests/test_dataspec.py", "-k", "any_folder")),
    Mutant("an export of a standardized run takes standardized inputs", T + "export.py",
           '        model = Standardized(model, stats, "run.json data.standardize")',
           "        pass", ("tests/test_dataspec.py", "-k", "export")),
    Mutant("bash completion replaces the whole word", T + "completion.py",
           "        cut = len(word) - len(args[1])", "        cut = 0",
           ("tests/test_project.py", "-k", "completion_query")),
    Mutant("adam's lr drifts to torch's default unnoticed", "conf/optimizer/adam.yaml",
           "lr: 0.01 ", "lr: 0.001", ("tests/test_defaults.py",)),
    # -- issue 15: the step contract and the other shapes of training --
    Mutant("a step's extra state is not checkpointed", T + "checkpoint.py",
           "        **parts.extra,", "", ("tests/test_steps.py", "-k", "resumes_bitwise")),
    Mutant("trainer.step is ignored", T + "parts.py",
           "        step=steps.resolve(cfg),", "        step=steps.SUPERVISED,",
           ("tests/test_steps.py", "-k", "resumes_bitwise")),
    Mutant("the generator ascends its own loss", T + "steps.py",
           "            per_sample = loss_fn.generator_terms(fooled)",
           "            per_sample = -loss_fn.generator_terms(fooled)",
           ("tests/test_adversarial.py", "-k", "hand_written")),
    Mutant("the hinge discriminator loss has a sign wrong", T + "losses.py",
           "return F.relu(1 - real).mean() + F.relu(1 + fake).mean()",
           "return F.relu(1 + real).mean() + F.relu(1 + fake).mean()",
           ("tests/test_adversarial.py", "-k", "hinge_losses")),
    Mutant("corruption is seeded by the position in the batch", T + "reconstruction.py",
           "sample_seeds(self.seed, (CORRUPTION_STREAM, self.split, epoch), idx)",
           "sample_seeds(self.seed, (CORRUPTION_STREAM, self.split, epoch), "
           "torch.arange(len(idx)))",
           ("tests/test_reconstruction.py", "-k", "per_sample")),
    Mutant("the masked loss counts the visible patches too", T + "losses.py",
           "        return (err * mask).sum() / mask.sum().clamp(min=1)",
           "        return err.mean()",
           ("tests/test_reconstruction.py", "-k", "counts_exactly")),
    Mutant("InfoNCE's positive is another sample", T + "losses.py",
           "positive = torch.arange(2 * n, device=z.device).roll(n)",
           "positive = torch.arange(2 * n, device=z.device).roll(n + 1)",
           ("tests/test_contrastive.py", "-k", "nt_xent")),
    Mutant("k-NN counts a sample as its own neighbour", T + "contrastive.py",
           '    similarity.fill_diagonal_(-float("inf"))', "",
           ("tests/test_contrastive.py", "-k", "scikit")),
    Mutant("kl_div's reduction may be mean", T + "catalogue.py",
           'REDUCTION = {"torch.nn.KLDivLoss": "batchmean"}', "REDUCTION = {}",
           ("tests/test_losses.py", "-k", "check_naming_the_key")),
    Mutant("the binary hinge has no margin", T + "losses.py",
           "terms = F.relu(self.margin - target", "terms = F.relu(0.0 - target",
           ("tests/test_losses.py", "-k", "binary_hinge")),
]  # fmt: skip


def run(mutant: Mutant, python: str) -> tuple[bool, float, str]:
    """(caught, seconds, last line of pytest's output) for one mutant, in a scratch copy."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as scratch:
        copy = Path(scratch)
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, copy / name)
        apply(mutant, copy)
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        env["PYTHONPATH"] = str(copy / "src")  # the copy's trainlab, not the checkout's
        started = time.perf_counter()
        done = subprocess.run(
            [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
            cwd=copy, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        tail = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        # 1: tests ran and one failed. 0 (all passed) is a survivor; anything else (no test
        # collected, a usage error) means the mutant names tests that do not exist.
        if done.returncode not in (0, 1):
            raise SystemExit(f"{mutant.name}: pytest exited {done.returncode}: {tail}")
        return done.returncode == 1, time.perf_counter() - started, tail


def apply(mutant: Mutant, root: Path) -> None:
    path = root / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(
            f"{mutant.name}: {mutant.path} holds the patched text {text.count(mutant.old)} "
            "times, not once: update the mutant to the code"
        )
    path.write_text(text.replace(mutant.old, mutant.new))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="select", help="only mutants whose name contains this")
    parser.add_argument("--check", action="store_true", help="only check the patches apply")
    parser.add_argument("--python", default=sys.executable, help="the interpreter with trainlab")
    ns = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not ns.select or ns.select in m.name]
    if ns.check:
        for mutant in chosen:
            apply(mutant, _copy_of(mutant))
        print(f"{len(chosen)} patches apply")
        return 0
    print("| mutant | tests | caught | seconds |\n| --- | --- | --- | --- |")
    survivors = []
    for mutant in chosen:
        caught, seconds, tail = run(mutant, ns.python)
        tests = " ".join(mutant.tests).replace("tests/", "")
        print(f"| {mutant.name} | `{tests}` | {'yes' if caught else 'NO: ' + tail} | "
              f"{seconds:.0f} |", flush=True)  # fmt: skip
        if not caught:
            survivors.append(mutant.name)
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutants caught")
    if survivors:
        print(f"survived: {', '.join(survivors)}", file=sys.stderr)
    return 1 if survivors else 0


def _copy_of(mutant: Mutant) -> Path:
    """A scratch folder holding only the mutant's file, to check the patch applies."""
    scratch = Path(tempfile.mkdtemp(prefix="mutant-check-"))
    (scratch / mutant.path).parent.mkdir(parents=True)
    shutil.copy2(ROOT / mutant.path, scratch / mutant.path)
    return scratch


if __name__ == "__main__":
    raise SystemExit(main())
