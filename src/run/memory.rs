//! Peak memory per stage: the process's peak resident set size (RSS) while a stage ran, recorded
//! as a figure of its `summary.json` entry and named in its `stage finished` log line.
//!
//! Linux keeps the process's peak RSS as `VmHWM` in `/proc/self/status`; writing `5` to
//! `/proc/self/clear_refs` resets it to the current RSS (proc(5), Linux ≥ 4.0). A stage resets it
//! when it starts, so its figure is its own peak, not an earlier stage's. Where the reset fails
//! (no permission, no procfs), the figure is the process's peak since it started and carries
//! another name, and the log says so once.
//!
//! CUDA memory is not measured: tch 0.26 exposes no CUDA allocator statistics (libtorch's
//! `c10::cuda::CUDACachingAllocator` is reachable only through C++), so a stage on a GPU records
//! its host RSS only, and the log says so once.

use std::sync::Once;

/// A stage's own peak RSS in MiB (the peak was reset when the stage started).
pub const PEAK_RSS: &str = "memory/peak_rss_mib";
/// The process's RSS in MiB when the stage started (before it loaded anything): the peak less this
/// is what the stage itself added.
pub const START_RSS: &str = "memory/start_rss_mib";
/// The process's peak RSS since it started, in MiB: written instead of [`PEAK_RSS`] where the peak
/// could not be reset at the stage's start (it may be an earlier stage's, or the setup's).
pub const PROCESS_PEAK_RSS: &str = "memory/process_peak_rss_mib";

const STATUS: &str = "/proc/self/status";
const CLEAR_REFS: &str = "/proc/self/clear_refs";
/// `clear_refs` value that resets the peak RSS to the current RSS.
const RESET_PEAK_RSS: &str = "5";

static RESET_FAILED: Once = Once::new();
static CUDA_UNMEASURED: Once = Once::new();

/// A peak RSS, and whether it is the stage's own or the process's since it started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakRss {
    pub bytes: u64,
    /// Whether the peak was reset when the stage started.
    pub own: bool,
}

impl PeakRss {
    pub fn mib(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0)
    }

    /// The summary figure this peak is written as.
    pub fn figure(&self) -> &'static str {
        if self.own {
            PEAK_RSS
        } else {
            PROCESS_PEAK_RSS
        }
    }
}

/// Measures the peak RSS of one stage, from [`StagePeak::start`] to [`StagePeak::peak`].
#[derive(Debug)]
pub struct StagePeak {
    reset: bool,
    /// The RSS when the stage started, in bytes.
    start_bytes: Option<u64>,
}

impl StagePeak {
    /// Resets the process's peak RSS to its current RSS; where that fails, logs once that the
    /// figures are the process's peak instead.
    pub fn start() -> StagePeak {
        StagePeak::after_reset(reset_peak_rss())
    }

    /// Measures from a reset that succeeded or failed.
    fn after_reset(reset: std::io::Result<()>) -> StagePeak {
        let start_bytes = std::fs::read_to_string(STATUS).ok().as_deref().and_then(|status| status_bytes(status, "VmRSS:"));
        match reset {
            Ok(()) => StagePeak { reset: true, start_bytes },
            Err(error) => {
                RESET_FAILED.call_once(|| {
                    tracing::warn!(
                        "the peak resident set size cannot be reset when a stage starts (writing {RESET_PEAK_RSS} to {CLEAR_REFS}: {error}): stages record `{PROCESS_PEAK_RSS}`, the process's peak since it started, which may be an earlier stage's"
                    )
                });
                StagePeak { reset: false, start_bytes }
            }
        }
    }

    /// The RSS when the stage started, in MiB, where the platform reports it.
    pub fn start_mib(&self) -> Option<f64> {
        self.start_bytes.map(|bytes| bytes as f64 / (1024.0 * 1024.0))
    }

    /// The peak RSS since [`StagePeak::start`] (or, where the reset failed, since the process
    /// started); `None` where the platform reports none.
    pub fn peak(&self) -> Option<PeakRss> {
        if let Some(bytes) = std::fs::read_to_string(STATUS).ok().as_deref().and_then(vm_hwm_bytes) {
            return Some(PeakRss { bytes, own: self.reset });
        }
        // No procfs: the kernel's own record of the process's peak, never reset.
        rusage_peak_bytes().map(|bytes| PeakRss { bytes, own: false })
    }
}

/// Writes `5` to `/proc/self/clear_refs`: the peak RSS becomes the current RSS.
pub fn reset_peak_rss() -> std::io::Result<()> {
    std::fs::write(CLEAR_REFS, RESET_PEAK_RSS)
}

/// The process's peak RSS in bytes, as `/proc/self/status` or `getrusage` report it.
pub fn process_peak_rss_bytes() -> Option<u64> {
    std::fs::read_to_string(STATUS).ok().as_deref().and_then(vm_hwm_bytes).or_else(rusage_peak_bytes)
}

/// `VmHWM` of a `/proc/<pid>/status` text, in bytes (the file gives kB, that is KiB).
fn vm_hwm_bytes(status: &str) -> Option<u64> {
    status_bytes(status, "VmHWM:")
}

/// A `/proc/<pid>/status` line's size (`VmHWM:`, `VmRSS:`) in bytes.
fn status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix(field))?;
    let mut parts = line.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(value * 1024)
}

/// `getrusage`'s `ru_maxrss`: KiB on Linux, bytes on macOS.
fn rusage_peak_bytes() -> Option<u64> {
    // SAFETY: `rusage` is plain data, valid all zeros, and getrusage only writes into it.
    let (status, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut usage), usage)
    };
    if status != 0 || usage.ru_maxrss <= 0 {
        return None;
    }
    let unit = if cfg!(target_os = "macos") { 1 } else { 1024 };
    Some(usage.ru_maxrss as u64 * unit)
}

/// Logs once per process that a stage ran on a GPU whose memory is not measured.
pub fn note_unmeasured_cuda(stage: &str, devices: &[tch::Device]) {
    if devices.iter().any(|device| device.is_cuda()) {
        CUDA_UNMEASURED.call_once(|| {
            tracing::info!(
                stage,
                "CUDA memory is not measured: tch 0.26 exposes no CUDA allocator statistics (max allocated per device), so the peak memory figures count host memory (RSS) only"
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\trlhf\nVmPeak:\t 2000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t  100000 kB\n";
        assert_eq!(vm_hwm_bytes(status), Some(123456 * 1024));
        assert_eq!(vm_hwm_bytes("Name:\trlhf\n"), None);
        assert_eq!(vm_hwm_bytes("VmHWM:\t 12 MB\n"), None, "an unknown unit is no figure");
    }

    #[test]
    fn figures_are_named_by_what_they_measure() {
        let own = PeakRss { bytes: 3 << 20, own: true };
        assert_eq!((own.figure(), own.mib()), (PEAK_RSS, 3.0));
        assert_eq!(PeakRss { bytes: 1 << 19, own: false }.figure(), PROCESS_PEAK_RSS);
    }

    #[test]
    fn a_failed_reset_gives_the_process_peak_under_its_own_name() {
        let stage = StagePeak::after_reset(Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)));
        let peak = stage.peak().expect("a peak RSS");
        assert!(!peak.own && peak.bytes > 0, "{peak:?}");
        assert_eq!(peak.figure(), PROCESS_PEAK_RSS);
        // Without procfs: getrusage's record, in bytes.
        assert!(rusage_peak_bytes().is_some_and(|bytes| bytes > 1 << 20), "{:?}", rusage_peak_bytes());
    }

    /// A stage's peak leaves out what the process held at its peak before the stage started.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_reset_peak_leaves_out_an_earlier_peak() {
        const BALLAST: usize = 256 << 20;
        let ballast = std::hint::black_box(vec![1u8; BALLAST]);
        let with_ballast = process_peak_rss_bytes().unwrap();
        drop(ballast);
        let stage = StagePeak::start();
        let peak = stage.peak().unwrap();
        assert!(peak.own, "the peak could not be reset");
        assert!(
            peak.bytes + (BALLAST as u64) / 2 < with_ballast,
            "peak after the reset {} MiB, with the ballast {} MiB",
            peak.bytes >> 20,
            with_ballast >> 20
        );
        // A later allocation shows in the stage's peak.
        let grown = std::hint::black_box(vec![1u8; BALLAST]);
        assert!(stage.peak().unwrap().bytes >= peak.bytes + (BALLAST as u64) / 2);
        drop(grown);
    }
}
