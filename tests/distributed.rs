//! Data parallelism on this machine's CPU: two ranks against one process with the same global
//! batch (every figure within 1e-5 relative; RL figures near zero within 1e-6 absolute), launched
//! by `rlhf run --nproc 2`, by `torchrun` from the venv, with srun's variables and by hand with
//! torchrun's; rank 0 alone writes the run directory; a rank killed or stopped mid-run makes the
//! other fail naming it; a run resumed with another number of ranks (2 → 1, 1 → 2) ends as an
//! uninterrupted one. The collectives themselves (bucketed gradient sums, broadcast, all-gather,
//! barrier) are checked between two processes of this test binary.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rlhf_lab::distributed::{self, Launch, World};
use serde_json::Value;
use tch::{Kind, Tensor};

/// lm → sft → reward (one head, and an ensemble of three), without dropout (a rank's dropout masks
/// are its own), one thread a rank.
const EXPERIMENT: &str = r#"name = "dp"
seed = 7
threads = 1

[task]
kind = "synthetic-reviews"
corpus_size = 200
demonstrations_size = 120
prompts_size = 20
eval_fraction = 0.1

[tokenizer]
vocab_size = 300

[models.base]
n_layer = 1
n_head = 2
n_embd = 32
n_ctx = 64
device = "cpu"

[[stages]]
name = "pretrain"
kind = "lm"
model = "base"
steps = 10
batch_size = 5
seq_len = 32
eval_every = 5
eval_batches = 2
samples = 1

[[stages]]
name = "sft"
kind = "sft"
init = "pretrain"
steps = 10
batch_size = 4
grad_accum = 2
seq_len = 48
eval_every = 5
eval_batches = 2
samples = 1

[[stages]]
name = "rm"
kind = "reward"
init = "sft"
pairs = 32
eval_pairs = 8
steps = 6
batch_size = 4
eval_every = 3
normalization_samples = 4

[[stages]]
name = "ensemble"
kind = "reward"
init = "sft"
ensemble = 3
pairs = 32
eval_pairs = 8
steps = 4
batch_size = 4
eval_every = 2
normalization_samples = 4
"#;

const STAGES: [&str; 4] = ["pretrain", "sft", "rm", "ensemble"];

/// PPO (adaptive KL, a value model), GRPO and RLOO (one update per rollout: the sampler's own
/// log-probs) from one run's sft and rm (`UPSTREAM`): each rank
/// samples and scores half of each rollout and takes one of each minibatch's two micro-batches.
const RL_STAGES: &str = r#"
[[stages]]
name = "ppo"
kind = "ppo"
policy = "run:UPSTREAM/sft"
reference = "run:UPSTREAM/sft"
reward = "run:UPSTREAM/rm"
value = "run:UPSTREAM/rm"
iterations = 6
rollout_batch = 8
minibatch_size = 4
grad_accum = 2
ppo_epochs = 2
max_new_tokens = 8
adaptive_kl = true
eval_every = 3
eval_prompts = 4
samples = 2

[[stages]]
name = "grpo"
kind = "grpo"
policy = "run:UPSTREAM/sft"
reference = "run:UPSTREAM/sft"
reward = "run:UPSTREAM/rm"
iterations = 4
rollout_batch = 8
group_size = 4
minibatch_size = 4
grad_accum = 2
updates_per_rollout = 2
max_new_tokens = 8
policy_lr = 1e-4
eval_every = 2
eval_prompts = 4
samples = 2

[[stages]]
name = "rloo"
kind = "rloo"
policy = "run:UPSTREAM/sft"
reference = "run:UPSTREAM/sft"
reward = "gold"
iterations = 4
rollout_batch = 8
k = 2
minibatch_size = 8
grad_accum = 2
max_new_tokens = 8
policy_lr = 1e-4
eval_every = 2
eval_prompts = 4
samples = 2
"#;

fn write_experiment(dir: &Path) -> PathBuf {
    let path = dir.join("dp.toml");
    std::fs::write(&path, EXPERIMENT).unwrap();
    path
}

fn rlhf() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rlhf"));
    command.env_remove("RANK").env_remove("WORLD_SIZE").env_remove("SLURM_STEP_NUM_TASKS");
    command
}

/// Runs `command` to its end; panics with its stderr unless it succeeds. Returns stdout.
fn succeed(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{command:?} failed:\n{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The run directory a finished `rlhf run` printed last.
fn printed_run(stdout: &str) -> PathBuf {
    PathBuf::from(stdout.lines().last().expect("rlhf run prints the run directory").trim())
}

fn metric_lines(stage_dir: &Path) -> Vec<BTreeMap<String, Value>> {
    let text = std::fs::read_to_string(stage_dir.join("metrics.jsonl")).unwrap();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Every metric of every stage equal within `tolerance` relative — or, for a figure near zero,
/// within `floor` absolute — (wall-clock rates and memory figures left out), and the same names
/// at the same steps.
fn assert_same_metrics(expected: &Path, actual: &Path, stages: &[&str], tolerance: f64, floor: f64) {
    for stage in stages {
        let (want, got) = (metric_lines(&expected.join(stage)), metric_lines(&actual.join(stage)));
        assert_eq!(want.len(), got.len(), "{stage}: number of metric lines");
        for (want, got) in want.iter().zip(&got) {
            let names = |line: &BTreeMap<String, Value>| line.keys().cloned().collect::<Vec<_>>();
            assert_eq!(names(want), names(got), "{stage}: metric names");
            for (name, value) in want {
                if name.ends_with("_per_s") || name.starts_with("time/") || name.starts_with("memory/") {
                    continue;
                }
                let (a, b) = (value.as_f64(), got[name].as_f64());
                let (Some(a), Some(b)) = (a, b) else {
                    assert_eq!(value, &got[name], "{stage} {name}");
                    continue;
                };
                let relative = (a - b).abs() / a.abs().max(1e-30);
                assert!(
                    relative <= tolerance || (a - b).abs() <= floor,
                    "{stage} step {} {name}: {a} (one process) vs {b} (two ranks): {relative:e} relative",
                    want["step"]
                );
            }
        }
    }
}

#[test]
fn two_ranks_train_as_one_process_does_and_rank_0_alone_writes() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = write_experiment(dir.path());
    let single = printed_run(&succeed(rlhf().arg("run").arg(&experiment).args(["--out", "one"]).current_dir(dir.path())));
    // The other rank's private copy goes to TMPDIR: it must be gone once the run ends.
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let stdout =
        succeed(rlhf().arg("run").arg(&experiment).args(["--out", "two", "--nproc", "2"]).env("TMPDIR", &scratch).current_dir(dir.path()));
    assert_eq!(stdout.lines().count(), 1, "only rank 0 prints the run directory: {stdout}");
    let ranks = dir.path().join(printed_run(&stdout));
    let upstream = dir.path().join(single);
    assert_same_metrics(&upstream, &ranks, &STAGES, 1e-5, 0.0);
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "rank 1's copy of the run directory is removed");
    assert_eq!(std::fs::read_dir(dir.path().join("two/dp")).unwrap().count(), 1, "one run directory for both ranks");
    // Written once: one sample line per evaluation (rank 1 generates none), one summary.
    let samples = std::fs::read_to_string(ranks.join("sft/samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 2, "{samples}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(ranks.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.as_object().unwrap().len(), STAGES.len(), "{summary}");
    let env: Value = serde_json::from_str(&std::fs::read_to_string(ranks.join("env.json")).unwrap()).unwrap();
    assert_eq!(env["data_parallel_ranks"], 2);

    // The RL stages from the same checkpoints (the lm/sft/reward figures above agree to 1e-5;
    // starting PPO from two such runs would compare their rounding too).
    let header = &EXPERIMENT[..EXPERIMENT.find("[[stages]]").unwrap()];
    let rl = dir.path().join("rl.toml");
    std::fs::write(&rl, format!("{header}{}", RL_STAGES.replace("UPSTREAM", upstream.to_str().unwrap()))).unwrap();
    let single = dir.path().join(printed_run(&succeed(rlhf().arg("run").arg(&rl).args(["--out", "rl-one"]).current_dir(dir.path()))));
    let ranks = dir
        .path()
        .join(printed_run(&succeed(rlhf().arg("run").arg(&rl).args(["--out", "rl-two", "--nproc", "2"]).current_dir(dir.path()))));
    // Each rank scores its rows in a batch of its own shape, which rounds log-probs differently
    // (~1e-7 each): KL figures near 0 (objective/kl ~1e-3, policy/approxkl ~1e-7) differ by as
    // much absolutely, however small relatively. The samples are the same.
    assert_same_metrics(&single, &ranks, &["ppo", "grpo", "rloo"], 1e-5, 1e-6);
    for stage in ["ppo", "grpo", "rloo"] {
        let samples = |run: &Path| std::fs::read_to_string(run.join(stage).join("samples.jsonl")).unwrap();
        let completions = |text: String| -> Vec<Value> {
            text.lines().map(|line| serde_json::from_str::<Value>(line).unwrap()["completion"].clone()).collect()
        };
        assert_eq!(completions(samples(&single)), completions(samples(&ranks)), "{stage}: sampled responses");
    }
}

#[test]
fn torchrun_launches_the_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = write_experiment(dir.path());
    let only = ["--only", "pretrain,sft"];
    let single = printed_run(&succeed(rlhf().arg("run").arg(&experiment).args(["--out", "one"]).args(only).current_dir(dir.path())));
    let torchrun = common::python().with_file_name("torchrun");
    let stdout = succeed(
        Command::new(torchrun)
            .args(["--standalone", "--nproc-per-node", "2", "--no-python", env!("CARGO_BIN_EXE_rlhf"), "run"])
            .arg(&experiment)
            .args(["--out", "two"])
            .args(only)
            .current_dir(dir.path()),
    );
    let ranks = dir.path().join(printed_run(&stdout));
    assert_same_metrics(&dir.path().join(single), &ranks, &["pretrain", "sft"], 1e-5, 0.0);
}

/// Starts rank `rank` of 2 by hand, with torchrun's variables.
fn start_rank(rank: usize, port: u16, dir: &Path, experiment: &Path, timeout_s: &str) -> Child {
    rlhf()
        .arg("run")
        .arg(experiment)
        .args(["--out", "runs"])
        .envs([
            ("RANK", rank.to_string()),
            ("LOCAL_RANK", rank.to_string()),
            ("WORLD_SIZE", "2".to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
            (distributed::TIMEOUT_VARIABLE, timeout_s.to_string()),
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        // A file, not a pipe: a pipe nobody reads while the rank runs would fill and block it.
        .stderr(std::fs::File::create(dir.join(format!("rank{rank}.log"))).unwrap())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until rank 0's run has trained a few steps of its first stage.
fn wait_for_training(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metrics = std::fs::read_dir(dir.join("runs/dp"))
            .ok()
            .and_then(|mut runs| runs.next())
            .map(|run| run.unwrap().path().join("pretrain/metrics.jsonl"));
        if metrics.and_then(|path| std::fs::read_to_string(path).ok()).is_some_and(|text| text.lines().count() >= 2) {
            return;
        }
        assert!(Instant::now() < deadline, "rank 0 never started training");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rank 0's exit after rank 1 was made to fail by `fail_rank_1`: it must fail on its own within
/// `within`, naming rank 1.
fn assert_rank_0_names_lost_rank_1(fail_rank_1: impl FnOnce(&mut Child), within: Duration) {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that rank 1 is lost mid-stage.
    let experiment = write_experiment(dir.path());
    let text = std::fs::read_to_string(&experiment).unwrap().replacen("steps = 10\nbatch_size = 5", "steps = 100000\nbatch_size = 5", 1);
    std::fs::write(&experiment, text).unwrap();
    let port = free_port();
    let mut rank0 = start_rank(0, port, dir.path(), &experiment, "5");
    let mut rank1 = start_rank(1, port, dir.path(), &experiment, "5");
    wait_for_training(dir.path());
    fail_rank_1(&mut rank1);
    let lost_at = Instant::now();
    while rank0.try_wait().unwrap().is_none() {
        if lost_at.elapsed() > within {
            rank0.kill().unwrap();
            let _ = rank1.kill();
            panic!("rank 0 still runs {within:?} after rank 1 was lost");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = rank1.kill();
    let _ = rank1.wait();
    assert!(!rank0.wait().unwrap().success());
    let stderr = std::fs::read_to_string(dir.path().join("rank0.log")).unwrap();
    let error = stderr.lines().find(|line| line.starts_with("error:")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(error.contains("rank 0 of 2") && error.contains("lost rank 1"), "{error}");
}

#[test]
fn a_killed_rank_makes_the_other_exit_naming_it() {
    assert_rank_0_names_lost_rank_1(|rank1| rank1.kill().unwrap(), Duration::from_secs(30));
}

#[test]
fn a_hung_rank_makes_the_other_exit_after_the_timeout() {
    // SIGSTOP: the process lives on, holding its connections, but never answers.
    let stop = |rank1: &mut Child| {
        assert_eq!(unsafe { libc::kill(rank1.id() as i32, libc::SIGSTOP) }, 0);
    };
    // The 5 s timeout, then up to 5 s asking the store who is alive.
    assert_rank_0_names_lost_rank_1(stop, Duration::from_secs(40));
}

#[test]
fn a_run_resumes_with_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = write_experiment(dir.path());
    let single = dir.path().join(printed_run(&succeed(rlhf().arg("run").arg(&experiment).args(["--out", "one"]).current_dir(dir.path()))));
    // Stopped by an abort (as kill -9 would) once the state of sft's step 5 is saved — on every
    // rank — then resumed with the other number of ranks.
    for (out, started, resumed) in [("two-then-one", Some("2"), None), ("one-then-two", None, Some("2"))] {
        let mut first = rlhf();
        first.arg("run").arg(&experiment).args(["--out", out]);
        first.args(started.map(|n| ["--nproc", n]).iter().flatten());
        // A rank's private copy of the run is left behind by the abort: here, not in /tmp.
        let output = first.env("RLHF_TEST_ABORT_AT", "sft:5:saved").env("TMPDIR", dir.path()).current_dir(dir.path()).output().unwrap();
        assert!(!output.status.success(), "{out}");
        let run = std::fs::read_dir(dir.path().join(out).join("dp")).unwrap().next().unwrap().unwrap().path();
        assert_eq!(metric_lines(&run.join("sft")).len(), 5, "{out}: stopped in the middle of sft");
        let mut resume = rlhf();
        resume.arg("run").arg("--resume").arg(&run);
        resume.args(resumed.map(|n| ["--nproc", n]).iter().flatten());
        succeed(resume.current_dir(dir.path()));
        assert_same_metrics(&single, &run, &STAGES, 1e-5, 0.0);
    }
}

/// What `srun --ntasks 2` gives each task (Slurm is not installed here; its variables are what
/// the ranks read): the rendezvous on the launching node, the port from MASTER_PORT.
#[test]
fn slurm_step_variables_launch_the_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = write_experiment(dir.path());
    let only = ["--only", "pretrain"];
    let single = printed_run(&succeed(rlhf().arg("run").arg(&experiment).args(["--out", "one"]).args(only).current_dir(dir.path())));
    let port = free_port().to_string();
    let tasks: Vec<Child> = (0..2)
        .map(|task| {
            rlhf()
                .arg("run")
                .arg(&experiment)
                .args(["--out", "two"])
                .args(only)
                .envs([
                    ("SLURM_PROCID", task.to_string()),
                    ("SLURM_LOCALID", task.to_string()),
                    ("SLURM_STEP_NUM_TASKS", "2".to_string()),
                    ("SLURM_JOB_ID", "4242".to_string()),
                    ("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1".to_string()),
                    ("MASTER_PORT", port.clone()),
                ])
                .current_dir(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = tasks.into_iter().map(|task| task.wait_with_output().unwrap()).collect();
    for (task, output) in outputs.iter().enumerate() {
        assert!(output.status.success(), "task {task}: {}", String::from_utf8_lossy(&output.stderr));
    }
    assert!(outputs[1].stdout.is_empty(), "only rank 0 prints the run directory");
    let ranks = dir.path().join(printed_run(&String::from_utf8_lossy(&outputs[0].stdout)));
    assert_same_metrics(&dir.path().join(single), &ranks, &["pretrain"], 1e-5, 0.0);
}

#[test]
fn nproc_inside_a_launcher_and_too_small_a_batch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = write_experiment(dir.path());
    let output = rlhf()
        .arg("run")
        .arg(&experiment)
        .args(["--nproc", "2"])
        .envs([("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("already one rank"), "{}", String::from_utf8_lossy(&output.stderr));
    let output = rlhf()
        .arg("run")
        .arg(&experiment)
        .args(["--nproc", "3", "--set", "stages.sft.batch_size=2", "--only", "pretrain,sft"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("`batch_size` = 2 is smaller than the number of data-parallel ranks (3)"), "{stderr}");
}

/// The collectives between two processes of this test binary: the test re-runs itself as rank 0
/// and rank 1 (`COLLECTIVES_RANK`), each checking what it receives.
#[test]
fn collectives_between_two_processes() {
    if let Ok(rank) = std::env::var("COLLECTIVES_RANK") {
        let launch = Launch::from_env().unwrap().expect("the launcher's variables");
        assert_eq!(launch.rank.to_string(), rank);
        check_collectives(distributed::init(&launch).unwrap());
        return;
    }
    let port = free_port().to_string();
    let children: Vec<Child> = (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "collectives_between_two_processes", "--nocapture"])
                .envs([
                    ("COLLECTIVES_RANK", rank.to_string()),
                    ("RANK", rank.to_string()),
                    ("LOCAL_RANK", rank.to_string()),
                    ("WORLD_SIZE", "2".to_string()),
                    ("MASTER_ADDR", "127.0.0.1".to_string()),
                    ("MASTER_PORT", port.clone()),
                    ("RLHF_DIST_TIMEOUT", "30".to_string()),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "rank {rank}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // The child ran exactly the one test (an empty filter match would pass vacuously).
        assert!(String::from_utf8_lossy(&output.stdout).contains("1 passed"), "{}", String::from_utf8_lossy(&output.stdout));
    }
}

fn check_collectives(world: &World) {
    let rank = world.rank() as f64;
    assert_eq!((world.size(), world.is_main()), (2, rank == 0.0));
    // Gradients of mixed dtypes and one over the bucket size (25 MiB): each summed in place.
    let gradients = vec![
        Tensor::full([3, 4], rank + 1.0, (Kind::Float, tch::Device::Cpu)),
        Tensor::full([7_000_000], 2.0 * rank + 1.0, (Kind::Float, tch::Device::Cpu)),
        Tensor::full([5], rank + 0.5, (Kind::BFloat16, tch::Device::Cpu)),
        Tensor::full([2, 2], 10.0 * rank, (Kind::Double, tch::Device::Cpu)),
    ];
    world.all_reduce_gradients(&gradients).unwrap();
    for (gradient, sum) in gradients.iter().zip([3.0, 4.0, 2.0, 10.0]) {
        let (min, max) = (gradient.min().double_value(&[]), gradient.max().double_value(&[]));
        assert_eq!((min, max), (sum, sum), "{:?}", gradient.kind());
    }
    let mut values = [rank, 1.0];
    world.all_reduce_values(&mut values).unwrap();
    assert_eq!(values, [1.0, 2.0]);
    // Rank 0's bytes everywhere, whatever the others pass.
    let sent = if rank == 0.0 { b"results/dp/20261201-120000".to_vec() } else { Vec::new() };
    assert_eq!(world.broadcast_bytes(&sent).unwrap(), b"results/dp/20261201-120000");
    let gathered = world.all_gather(&Tensor::from_slice(&[rank, rank * 2.0])).unwrap();
    let gathered: Vec<Vec<f64>> = gathered.iter().map(|t| Vec::try_from(t).unwrap()).collect();
    assert_eq!(gathered, vec![vec![0.0, 0.0], vec![1.0, 2.0]]);
    assert_eq!((world.shard(5), world.shard(4).len()), (if rank == 0.0 { 0..2 } else { 2..5 }, 2));
    world.barrier().unwrap();
}
