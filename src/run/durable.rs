//! Files and directories that a crash never leaves half-written. A file is written under a
//! temporary name, flushed to disk and renamed into place. A directory (a resume state, a
//! checkpoint) is written whole under `<dir>.partial/`, its files flushed, its completion marked
//! by one file written last, and then swapped in by two renames — `<dir>` → `<dir>.old`,
//! `<dir>.partial` → `<dir>` — before the old one is removed. Whatever instant a crash hits, one
//! complete directory exists under one of the three names, and [`recover_dir`] puts the newest
//! complete one back in place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::RunDirError;

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Where a directory's next version is written.
pub fn partial_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".partial")
}

fn old_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".old")
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Write { path: path.to_path_buf(), source }
}

/// Flushes a file (or a directory's entries) to the disk.
pub fn sync(path: &Path) -> Result<(), RunDirError> {
    File::open(path).and_then(|file| file.sync_all()).map_err(write_error(path))
}

/// Writes `contents` to `path` through a temporary file, flushed before it is renamed into place.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<(), RunDirError> {
    let partial = sibling(path, ".partial");
    let mut file = File::create(&partial).map_err(write_error(&partial))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(write_error(&partial))?;
    std::fs::rename(&partial, path).map_err(write_error(path))
}

fn remove_dir(dir: &Path) -> Result<(), RunDirError> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(RunDirError::Write { path: dir.to_path_buf(), source: error }),
        _ => Ok(()),
    }
}

/// Replaces directory `dir` as a whole. `write` fills an empty `<dir>.partial/`, flushing each
/// file ([`write_file`], or [`sync`] after writing) and writing the file that marks the directory
/// complete last. `hook` is called with the name of each point passed (`swapped-out`,
/// `swapped-in`), for tests that stop the process there.
pub fn replace_dir<E: From<RunDirError>>(dir: &Path, write: impl FnOnce(&Path) -> Result<(), E>, hook: &dyn Fn(&str)) -> Result<(), E> {
    let (partial, old) = (partial_dir(dir), old_dir(dir));
    remove_dir(&partial)?;
    std::fs::create_dir_all(&partial).map_err(write_error(&partial))?;
    write(&partial)?;
    sync(&partial)?;
    // A bare relative name's parent is "" (the working directory).
    let parent = dir.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if dir.exists() {
        remove_dir(&old)?;
        std::fs::rename(dir, &old).map_err(write_error(dir))?;
        hook("swapped-out");
    }
    std::fs::rename(&partial, dir).map_err(write_error(dir))?;
    sync(parent)?;
    hook("swapped-in");
    remove_dir(&old)?;
    Ok(())
}

/// After a crash: makes `dir` the newest complete version of itself (complete = holds `marker`)
/// and removes the others; `false` when none is complete.
pub fn recover_dir(dir: &Path, marker: &str) -> Result<bool, RunDirError> {
    let (partial, old) = (partial_dir(dir), old_dir(dir));
    let complete = |candidate: &Path| candidate.join(marker).is_file();
    // The newest first: `.partial` is only ever the last save attempt, and `.old` was set aside
    // by the same save that was putting `.partial` in place.
    let newest = if complete(&partial) {
        Some(&partial)
    } else if !complete(dir) && complete(&old) {
        Some(&old)
    } else {
        None
    };
    if let Some(newest) = newest {
        remove_dir(dir)?;
        std::fs::rename(newest, dir).map_err(write_error(dir))?;
    }
    remove_dir(&partial)?;
    remove_dir(&old)?;
    Ok(complete(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_version(dir: &Path, version: &str) -> Result<(), RunDirError> {
        write_file(&dir.join("data"), version.as_bytes())?;
        write_file(&dir.join("done"), b"")
    }

    fn read(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("data")).unwrap()
    }

    #[test]
    fn a_crash_at_any_point_of_a_replacement_recovers_a_complete_version() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        replace_dir(&dir, |d| write_version(d, "v1"), &|_| {}).unwrap();
        assert_eq!(read(&dir), "v1");
        assert!(!partial_dir(&dir).exists() && !old_dir(&dir).exists());

        // Crashed while writing v2 (no marker yet): v1 stays.
        std::fs::create_dir_all(partial_dir(&dir)).unwrap();
        std::fs::write(partial_dir(&dir).join("data"), "v2 half").unwrap();
        assert!(recover_dir(&dir, "done").unwrap());
        assert_eq!(read(&dir), "v1");
        assert!(!partial_dir(&dir).exists());

        // Crashed after v2 was complete, before the swap: v2, the newest complete one, wins.
        std::fs::create_dir_all(partial_dir(&dir)).unwrap();
        write_version(&partial_dir(&dir), "v2").unwrap();
        assert!(recover_dir(&dir, "done").unwrap());
        assert_eq!(read(&dir), "v2");
        replace_dir(&dir, |d| write_version(d, "v1"), &|_| {}).unwrap();

        // Crashed between the two renames: no `state`, a complete v2 and the old v1 set aside.
        std::fs::create_dir_all(partial_dir(&dir)).unwrap();
        write_version(&partial_dir(&dir), "v2").unwrap();
        std::fs::rename(&dir, old_dir(&dir)).unwrap();
        assert!(recover_dir(&dir, "done").unwrap());
        assert_eq!(read(&dir), "v2");
        assert!(!old_dir(&dir).exists() && !partial_dir(&dir).exists());

        // Crashed after the swap, before the old one was removed.
        std::fs::create_dir_all(old_dir(&dir)).unwrap();
        write_version(&old_dir(&dir), "v1").unwrap();
        assert!(recover_dir(&dir, "done").unwrap());
        assert_eq!(read(&dir), "v2");

        // Nothing complete anywhere.
        let empty = root.path().join("never");
        assert!(!recover_dir(&empty, "done").unwrap());
    }
}
