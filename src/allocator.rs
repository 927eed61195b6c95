//! glibc's allocator settings for a long-running `remedy serve`. glibc
//! gives each thread that allocates under contention an arena of its own
//! (up to eight per core) and keeps each arena at its threads' high-water
//! mark; with SQLite's connection threads that is megabytes held for ever
//! (README, Performance, Soak). The settings are environment variables read
//! when the process starts, and `mallopt` needs `unsafe`, which this crate
//! forbids, so `serve` starts itself again once with them set.

use std::ffi::OsString;

/// The settings, as glibc's documentation names them: two arenas, and
/// free memory above 128 KiB given back to the system instead of kept.
pub const SETTINGS: [(&str, &str); 3] = [
    ("MALLOC_ARENA_MAX", "2"),
    ("MALLOC_TRIM_THRESHOLD_", "131072"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
];

/// What to do about the allocator's settings, given the environment's
/// `MALLOC_ARENA_MAX`: none set means start again with [`SETTINGS`]; any
/// value (an operator's, or the one set by the first start) is kept.
#[must_use]
pub fn needs_restart(arena_max: Option<&OsString>) -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu")) && arena_max.is_none()
}

/// Replaces this process with itself, same arguments, with [`SETTINGS`] in
/// its environment, when [`needs_restart`] says so. Returns only when
/// nothing was to be done or the new start failed (the reason is printed
/// and the process goes on with glibc's defaults).
pub fn restart_with_settings() {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if !needs_restart(std::env::var_os("MALLOC_ARENA_MAX").as_ref()) {
            return;
        }
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| OsString::from("remedy"));
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(error) => {
                eprintln!("remedy: glibc's allocator settings not applied: {error}");
                return;
            }
        };
        let error = std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .envs(SETTINGS)
            .exec();
        eprintln!("remedy: glibc's allocator settings not applied: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_arena_setting_is_kept() {
        assert!(!needs_restart(Some(&OsString::from("8"))));
    }
}
