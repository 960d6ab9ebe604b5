//! One run as several data-parallel ranks. `rlhf run --nproc N` starts N processes of this
//! binary on this machine with the variables `torchrun` sets; under `torchrun` or `srun` the
//! launcher has started them. Every rank trains the same models (see `crate::distributed`); rank
//! 0 alone writes the run directory. The others run in a private mirror of it — a temporary
//! copy, deleted when they finish — so that every rank reads what its stages read (earlier
//! stages' checkpoints, a resumed stage's state) from identical files, and none of them writes
//! where rank 0 does.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::RunDirError;

/// How long ranks that are still running get to exit on their own once one has failed (they
/// report the lost rank themselves), before the launcher stops them.
const GRACE: Duration = Duration::from_secs(30);

/// Runs `args` (this binary's arguments without `--nproc`) as `nproc` local ranks joined on a free
/// loopback port; returns the first failed rank's exit status, else success.
pub fn spawn_local(nproc: usize, args: &[OsString]) -> std::io::Result<ExitStatus> {
    let program = std::env::current_exe()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // torchrun's default: ranks sharing a machine share its cores, unless told otherwise.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| (cores / nproc).max(1).to_string());
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut command = Command::new(&program);
        // A rank outlives no launcher: if this process dies, the kernel stops its ranks.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let child = command
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", &threads)
            .spawn();
        match child {
            Ok(child) => children.push((rank, child)),
            Err(error) => {
                stop(&mut children);
                return Err(error);
            }
        }
    }
    let mut failed: Option<(usize, ExitStatus, Instant)> = None;
    while !children.is_empty() {
        let mut index = 0;
        while index < children.len() {
            match children[index].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = children.remove(index);
                    if !status.success() && failed.is_none() {
                        tracing::error!(rank, %status, "rank failed");
                        failed = Some((rank, status, Instant::now()));
                    }
                }
                None => index += 1,
            }
        }
        if failed.is_some_and(|(_, _, at)| at.elapsed() > GRACE) {
            stop(&mut children);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(failed.map_or_else(success, |(_, status, _)| status))
}

fn success() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(0)
}

fn stop(children: &mut Vec<(usize, Child)>) {
    for (rank, child) in children.iter_mut() {
        tracing::warn!(rank, "stopping rank");
        let _ = child.kill();
        let _ = child.wait();
    }
    children.clear();
}

/// Copies the run directory `run` into `mirror` (an empty directory): what a rank other than 0
/// starts from. Copies, not links: the rank's stages append to and truncate their own files.
pub fn mirror(run: &Path, mirror: &Path) -> Result<(), RunDirError> {
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunDirError::Write { path, source }
    };
    for entry in std::fs::read_dir(run).map_err(error(run))? {
        let entry = entry.map_err(error(run))?;
        let (from, to) = (entry.path(), mirror.join(entry.file_name()));
        if entry.file_name() == super::LOCK_FILE {
            continue;
        }
        if entry.file_type().map_err(error(&from))?.is_dir() {
            std::fs::create_dir(&to).map_err(error(&to))?;
            self::mirror(&from, &to)?;
        } else {
            std::fs::copy(&from, &to).map_err(error(&to))?;
        }
    }
    Ok(())
}
