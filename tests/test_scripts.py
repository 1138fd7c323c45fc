"""The launch scripts in ``scripts/``: bash syntax, required environment, and that the commands they
print (``DRY_RUN=1``) are accepted by torchrun's parser and by open_clip_train's parser with the
C2LIP flags, giving the authors' recipe (docs/training.md)."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
TORCHRUN_SCRIPT = SCRIPTS / "train_c2lip_torchrun.sh"
SLURM_SCRIPT = SCRIPTS / "train_c2lip_slurm.sbatch"
ANNOTATE_SCRIPT = SCRIPTS / "annotate_concepts.sh"
ARRAY_SCRIPT = SCRIPTS / "annotate_concepts_array.sbatch"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash not available")

TRAIN_ENV = {"TRAIN_DATA": "/data/cc3m_c2lip/{00000..00331}.tar", "LOGS_DIR": "/results/c2lip"}


def run_script(script: Path, env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRAIN_DATA", "LOGS_DIR", "SHARDS", "OUTPUT_DIR",
                                                           "PRECISION", "DRY_RUN", "MASTER_ADDR", "PROCESSES",
                                                           "TASK_COUNT")
           and not k.startswith("SLURM_")}
    env.update(env_extra)
    return subprocess.run([BASH, str(script), *args], env=env, capture_output=True, text=True, timeout=60)


def dry_run(script: Path, env_extra: dict, *args: str) -> list:
    proc = run_script(script, {**TRAIN_ENV, "DRY_RUN": "1", **env_extra}, *args)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def training_args(command: list) -> list:
    """The open_clip_train arguments of a printed command: what follows ``-m open_clip_c2lip.train``."""
    start = command.index("open_clip_c2lip.train") + 1
    assert command[start - 2] == "-m"
    args = command[start:]
    return args[1:] if args[:1] == ["--"] else args


@pytest.fixture
def parse_args():
    """open_clip_train's ``parse_args`` with the plugin's C2LIP flags; resets the C2LIP runtime after."""
    import open_clip_c2lip  # noqa: F401  installs the hooks if the .pth did not
    from open_clip_train.params import parse_args as upstream_parse_args

    yield upstream_parse_args
    upstream_parse_args([])  # parsing without --c2lip-loss clears open_clip_c2lip.integration.runtime


@pytest.mark.parametrize("script", [TORCHRUN_SCRIPT, SLURM_SCRIPT, ANNOTATE_SCRIPT, ARRAY_SCRIPT], ids=lambda p: p.name)
def test_bash_syntax(script):
    proc = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script,missing", [
    (TORCHRUN_SCRIPT, "TRAIN_DATA"), (TORCHRUN_SCRIPT, "LOGS_DIR"),
    (SLURM_SCRIPT, "TRAIN_DATA"), (SLURM_SCRIPT, "LOGS_DIR"),
    (ANNOTATE_SCRIPT, "SHARDS"), (ANNOTATE_SCRIPT, "OUTPUT_DIR"),
    (ARRAY_SCRIPT, "SHARDS"), (ARRAY_SCRIPT, "OUTPUT_DIR"),
], ids=lambda x: getattr(x, "name", x))
def test_missing_environment_is_a_clear_error(script, missing):
    env = {**TRAIN_ENV, "SHARDS": "in/{0..1}.tar", "OUTPUT_DIR": "out", "DRY_RUN": "1"}
    env.pop(missing)
    proc = run_script(script, env)
    assert proc.returncode != 0
    assert missing in proc.stderr and proc.stdout == ""


def check_recipe(args, precision: str) -> None:
    """The authors' recipe (docs/training.md) as parsed by open_clip_train + the C2LIP flags."""
    assert args.model == "ViT-B-16-SigLIP-C2" and args.pretrained == "webli"
    assert args.c2lip_loss and args.siglip  # --c2lip-loss implies --siglip
    assert (args.c2lip_npc_weight, args.c2lip_xac_weight) == (1.0, 0.01)
    assert args.c2lip_concept_mode == "text" and args.c2lip_max_concepts == 8
    assert args.train_data == TRAIN_ENV["TRAIN_DATA"] and args.logs == TRAIN_ENV["LOGS_DIR"]
    assert args.dataset_type == "webdataset" and args.dataset_resampled
    assert args.train_num_samples == 2823019 and args.batch_size == 96 and args.epochs == 5
    assert (args.lr, args.wd, args.beta1, args.beta2, args.eps, args.warmup) == (1e-5, 0.1, 0.9, 0.98, 1e-6, 50)
    assert args.precision == precision
    assert args.seed == 42 and args.save_frequency == 1 and args.report_to == "tensorboard"


@pytest.mark.parametrize("precision_env,precision", [(None, "amp_bf16"), ("pure_bf16", "bf16"),
                                                     ("amp_bf16", "amp_bf16")])
def test_torchrun_script_command_parses(parse_args, precision_env, precision):
    from torch.distributed.run import get_args_parser

    env = {} if precision_env is None else {"PRECISION": precision_env}
    command = dry_run(TORCHRUN_SCRIPT, env, "--name", "run1")
    assert command[0] == "torchrun"
    # torchrun itself must accept it: '--logs' after the module would be an ambiguous abbreviation
    # of torchrun's --logs-specs without the '--' guard
    launcher = get_args_parser().parse_args(command[1:])
    assert launcher.module and launcher.training_script == "open_clip_c2lip.train"
    assert launcher.nproc_per_node == "8"
    # the '--' ends torchrun's options and is not passed on: the child sees the training flags
    assert launcher.training_script_args == training_args(command)
    args = parse_args(launcher.training_script_args)
    check_recipe(args, precision)
    assert args.name == "run1"  # extra script arguments are passed through


def test_torchrun_without_guard_is_rejected():
    """Why the script puts '--' before the training flags (pytorch#120601)."""
    from torch.distributed.run import get_args_parser

    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--nproc_per_node", "2", "-m", "open_clip_c2lip.train", "--logs", "x"])


@pytest.mark.parametrize("precision_env,precision", [(None, "amp_bf16"), ("pure_bf16", "bf16")])
def test_slurm_script_command_parses(parse_args, precision_env, precision):
    env = {} if precision_env is None else {"PRECISION": precision_env}
    command = dry_run(SLURM_SCRIPT, env)
    assert command[0] == "srun"
    check_recipe(parse_args(training_args(command)), precision)


def test_slurm_script_requeues_resume_the_same_run(parse_args):
    """A requeued job keeps its SLURM_JOB_ID, so its run name and ``--resume latest`` find its checkpoints;
    RUN_NAME and flags given to the script win."""
    env = {"SLURM_JOB_NAME": "c2lip-vitb16", "SLURM_JOB_ID": "4242"}
    args = parse_args(training_args(dry_run(SLURM_SCRIPT, env)))
    assert (args.name, args.resume) == ("c2lip-vitb16-4242", "latest")
    args = parse_args(training_args(dry_run(SLURM_SCRIPT, {**env, "RUN_NAME": "earlier"}, "--resume", "x.pt")))
    assert (args.name, args.resume) == ("earlier", "x.pt")


def test_slurm_directives_request_the_recipe_layout():
    directives = [line.split(None, 1)[1] for line in SLURM_SCRIPT.read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "--ntasks-per-node=8" in directives and "--gpus-per-node=8" in directives


def test_annotate_script_runs_the_concepts_cli():
    command = run_script(ANNOTATE_SCRIPT, {"SHARDS": "in/{000..001}.tar", "OUTPUT_DIR": "out", "DRY_RUN": "1",
                                           "PROCESSES": "4"}, "--overwrite")
    assert command.returncode == 0, command.stderr
    argv = shlex.split(command.stdout)
    assert argv[1:3] == ["-m", "open_clip_c2lip.concepts"]
    from open_clip_c2lip.concepts.cli import _parse_args

    cli = _parse_args(argv[3:])
    assert cli.inputs == ["in/{000..001}.tar"] and cli.output_dir == "out"
    assert cli.processes == 4 and cli.overwrite
    assert cli.clean == "canonicalize"  # the recipe trains SigLIP models


def test_array_script_gives_each_slurm_task_its_share(monkeypatch):
    """What an array task of ``sbatch --array=3-6`` runs: the CLI with the task from SLURM's variables."""
    from open_clip_c2lip.concepts.cli import _parse_args
    from open_clip_c2lip.concepts.tasks import share

    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "6",
             "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "1", "SLURM_CPUS_PER_TASK": "8"}
    command = run_script(ARRAY_SCRIPT, {"SHARDS": "in/{000..009}.tar", "OUTPUT_DIR": "out", "DRY_RUN": "1", **slurm},
                         "--batch-size", "64")
    assert command.returncode == 0, command.stderr
    argv = shlex.split(command.stdout)
    assert argv[1:3] == ["-m", "open_clip_c2lip.concepts"]
    for name, value in slurm.items():  # the CLI reads them in the task's environment
        monkeypatch.setenv(name, value)
    cli = _parse_args(argv[3:])
    assert cli.inputs == ["in/{000..009}.tar"] and cli.output_dir == "out" and cli.batch_size == 64
    assert cli.processes == 8 and cli.clean == "canonicalize" and cli.on_error == "skip" and cli.quiet
    assert (cli.task.index, cli.task.count) == (2, 4)
    assert [p[-7:] for p in share([f"in/{i:03d}.tar" for i in range(10)], cli.task)] == ["002.tar", "006.tar"]
    directives = [line.split(None, 1)[1] for line in ARRAY_SCRIPT.read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert any(d.startswith("--array=0-") for d in directives) and "--ntasks=1" in directives


def test_array_script_redoes_chosen_tasks_of_a_larger_array(monkeypatch):
    """``TASK_COUNT=100 sbatch --array=17,42``: a list of ids, which the CLI alone refuses, is tasks 17
    and 42 of 100; without an array TASK_COUNT is an error."""
    from open_clip_c2lip.concepts.cli import _parse_args

    slurm = {"SLURM_ARRAY_TASK_ID": "42", "SLURM_ARRAY_TASK_MIN": "17", "SLURM_ARRAY_TASK_MAX": "42",
             "SLURM_ARRAY_TASK_COUNT": "2"}
    base = {"SHARDS": "in/{000..999}.tar", "OUTPUT_DIR": "out", "DRY_RUN": "1"}
    command = run_script(ARRAY_SCRIPT, {**base, **slurm, "TASK_COUNT": "100"})
    assert command.returncode == 0, command.stderr
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    cli = _parse_args(shlex.split(command.stdout)[3:])
    assert (cli.task.index, cli.task.count) == (42, 100)
    with pytest.raises(SystemExit):  # the same array without TASK_COUNT: refused, no share is guessed
        _parse_args(shlex.split(run_script(ARRAY_SCRIPT, {**base, **slurm}).stdout)[3:])
    command = run_script(ARRAY_SCRIPT, {**base, "TASK_COUNT": "100"})
    assert command.returncode != 0 and "TASK_COUNT is for a job array" in command.stderr


# ------------------------------------------------------------------------------------------------
# scripts/bench_step.py (the measurements themselves are benchmarks, not tests)

def load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_step", SCRIPTS / "bench_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_concept_row_stats_match_a_naive_count():
    import torch
    from open_clip_c2lip.layout import unpack_texts

    bench = load_bench()
    texts = bench.synthetic_packed_texts("C2LIP-Tiny", batch_size=6, max_concepts=4, seed=3)
    assert texts.shape == (6, 9, 32)
    _, concept_ids, _ = unpack_texts(texts)
    rows = [tuple(row.tolist()) for sample in concept_ids for row in sample if any(row.tolist())]
    assert bench.concept_row_stats(texts) == {"total": len(rows), "unique": len(set(rows))}
    assert len(set(rows)) < len(rows)  # the synthetic pool repeats concepts, like real captions


@pytest.mark.parametrize("variant", ["siglip", "c2lip-span"])
def test_bench_worker_runs_a_variant(tmp_path, variant):
    import torch

    bench = load_bench()
    inputs = tmp_path / "inputs.pt"
    torch.save({"texts": bench.synthetic_packed_texts("C2LIP-Tiny", batch_size=4, max_concepts=4)}, inputs)
    args = bench.parse_args(["--worker", variant, "--inputs", str(inputs), "--warmup", "0", "--steps", "1"])
    try:
        result = bench.run_variant(args)
    finally:
        torch.set_num_threads(1)
    assert len(result["times"]) == 1 and result["times"][0] > 0 and result["peak_mem_mib"] > 0
    assert bool(result["model_stats"]) == (variant != "siglip")


def test_bench_table_ratio():
    bench = load_bench()
    args = bench.parse_args(["--batch-size", "4"])
    results = {"siglip": {"times": [1.0, 2.0, 3.0], "cpu_times": [1.0, 1.0, 1.0], "peak_mem_mib": 10,
                          "step_mem_mib": 1},
               "c2lip-text": {"times": [3.0, 3.0, 4.0], "cpu_times": [1.5, 1.0, 2.0], "peak_mem_mib": 12,
                              "step_mem_mib": 2}}
    table = bench.format_table(args, results, {"total": 10, "unique": 5})
    # CPU: the ratio is of median CPU times; images/s = batch / median wall time
    assert "| c2lip-text | 3000.0 | 3000.0 | 1500.0 | 1.50x | - | 1.3 | 12 | 2 |" in table
    assert "| siglip | 2000.0 | 1000.0 | 1000.0 | 1.00x | - | 2.0 | 10 | 1 |" in table
    # CUDA: of median wall times
    table = bench.format_table(bench.parse_args(["--device", "cuda", "--batch-size", "4"]), results,
                               {"total": 10, "unique": 5})
    assert "| c2lip-text | 3000.0 | 3000.0 | 1.50x | - | 1.3 | 12 |" in table


def test_bench_per_round_ratios():
    """Each round's ratio is of medians within that round; the table shows their min-max."""
    bench = load_bench()
    rounds = [{"siglip": {"cpu_times": [1.0, 2.0, 9.0]}, "c2lip-span": {"cpu_times": [2.0, 2.0, 2.0]}},
              {"siglip": {"cpu_times": [4.0, 4.0]}, "c2lip-span": {"cpu_times": [1.0, 5.0, 6.0]}}]
    ratios = [bench.round_ratios(r, "cpu_times") for r in rounds]
    assert ratios == [{"siglip": 1.0, "c2lip-span": 1.0}, {"siglip": 1.0, "c2lip-span": 1.25}]
    results = {name: {"times": [1.0], "cpu_times": [1.0], "peak_mem_mib": 1, "step_mem_mib": 1,
                      "round_ratios": [r[name] for r in ratios]} for name in ("siglip", "c2lip-span")}
    table = bench.format_table(bench.parse_args([]), results, {"total": 1, "unique": 1})
    assert "| 1.00x | 1.00-1.25x |" in table


# ------------------------------------------------------------------------------------------------
# scripts/bench_concept_tasks.py on a few captions (the rates themselves are benchmarks)

def load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_concept_tasks_fit_recovers_fixed_cost_and_rate():
    fit = load_script("bench_concept_tasks").fit
    # 25,000 captions at 1,000 per CPU s plus 5 CPU s per task: 1 task 30 s, 8 tasks 65 s
    assert fit(1, 1 * 5.0 + 25.0, 8, 8 * 5.0 + 25.0, 25_000) == pytest.approx((5.0, 1000.0))
    assert fit(4, 4 * 2.5 + 10.0, 2, 2 * 2.5 + 10.0, 6_000) == pytest.approx((2.5, 600.0))


@pytest.mark.slow
def test_bench_concept_tasks_runs_and_checks_its_outputs(tmp_path, real_data):
    captions = real_data("coco_captions_val2017.json")
    report = tmp_path / "tasks.md"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_concept_tasks.py"), "--captions", str(captions),
                           "--limit", "30", "--shards", "3", "--tasks", "1", "3", "--output", str(report)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    text = report.read_text()
    assert "Outputs byte-identical for every K and round: True." in text and "`uptime` before:" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| 0 |")]
    assert [int(row[1]) for row in rows] == [1, 3]
    assert [30 / float(row[2]) for row in rows] == pytest.approx([float(row[4]) for row in rows], abs=1)  # captions/CPU s
