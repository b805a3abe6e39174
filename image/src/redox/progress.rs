//! The build's steps on the terminal: one line per step with the time
//! since the tool started, `cached` when the step's stamp matched, and how
//! long the step took when it ran; a live indicator while a step runs on a
//! terminal (`pddgpu_ipc::progress`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pddgpu_ipc::progress::{self as shared, Mode, Reporter};

use super::cache::{Key, Stamp};
use super::command::StepLog;

pub use shared::seconds;

/// Runs and reports the build's steps, timed from one start.
#[derive(Debug)]
pub struct Progress {
    reporter: Reporter,
    stamps: PathBuf,
    logs: PathBuf,
    verbose: bool,
}

/// What a cached step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// Its stamp matched and its outputs exist: nothing was run.
    Cached,
    /// It was built, taking this long.
    Built(Duration),
}

impl Progress {
    /// Starts the clock. Stamps are kept in `stamps`, step logs in `logs`.
    /// With `verbose` the commands' output goes to the terminal too, so
    /// there is no live indicator to tear.
    pub fn new(stamps: PathBuf, logs: PathBuf, verbose: bool) -> Self {
        Self::labelled("redox", stamps, logs, verbose)
    }

    /// Like [`Progress::new`], for lines starting `<label>:` instead of
    /// `redox:` (the seL4 build prints `sel4:`).
    pub fn labelled(label: &'static str, stamps: PathBuf, logs: PathBuf, verbose: bool) -> Self {
        let reporter = if verbose {
            Reporter::to_writer(label, Mode::Lines, Box::new(std::io::stderr()))
        } else {
            Reporter::stderr(label)
        };
        Self::with_reporter(reporter.stamped(), stamps, logs, verbose)
    }

    /// [`new`](Self::new), reporting through `reporter`.
    pub fn with_reporter(
        reporter: Reporter,
        stamps: PathBuf,
        logs: PathBuf,
        verbose: bool,
    ) -> Self {
        Self {
            reporter,
            stamps,
            logs,
            verbose,
        }
    }

    /// The reporter the steps go through (for steps of its own, such as
    /// the boots).
    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Prints one line: `redox: [  12.3 s] <text>` (or its label).
    pub fn say(&self, text: impl AsRef<str>) {
        self.reporter.say(text);
    }

    /// Runs a step that is not cached (checks, the boot), timing it.
    pub fn plain<T>(&self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let step = self.reporter.begin(name, format!("{name} ..."));
        let value = f().with_context(|| format!("step `{name}`"))?;
        step.finish(format!("{name}: done in {}", seconds(step.elapsed())));
        Ok(value)
    }

    /// Runs the cached step `name`: skipped when its stamp holds `key` and
    /// every one of `outputs` exists; otherwise `build` runs with the step's
    /// log and the stamp is written on success. Returns the key (for the
    /// keys of the steps that use this one's outputs) and what happened.
    pub fn cached(
        &self,
        name: &str,
        key: &Key,
        outputs: &[PathBuf],
        build: impl FnOnce(&StepLog) -> Result<()>,
    ) -> Result<(String, Ran)> {
        let key = key.finish();
        let stamp = Stamp::new(&self.stamps, name);
        if stamp.is_current(&key, outputs) {
            self.say(format!("{name}: cached"));
            return Ok((key, Ran::Cached));
        }
        stamp.clear()?;
        let log = StepLog::create(&self.logs, name, self.verbose)?;
        let step = self.reporter.begin(
            name,
            format!("{name}: building (log {})", log.path().display()),
        );
        build(&log).with_context(|| format!("step `{name}`"))?;
        if let Some(missing) = outputs.iter().find(|p| !p.exists()) {
            anyhow::bail!(
                "step `{name}` finished but did not produce {}",
                missing.display()
            );
        }
        stamp.write(&key)?;
        let took = step.elapsed();
        step.finish(format!("{name}: built in {}", seconds(took)));
        Ok((key, Ran::Built(took)))
    }

    /// Time since the tool started.
    pub fn elapsed(&self) -> Duration {
        self.reporter.elapsed()
    }
}

/// `redox: [  12.3 s] text`.
pub fn line(since_start: Duration, text: &str) -> String {
    shared::stamped_line("redox", since_start, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_elapsed_time() {
        assert_eq!(
            line(Duration::from_millis(12_345), "kernel: cached"),
            "redox: [   12.3 s] kernel: cached"
        );
        assert_eq!(seconds(Duration::from_millis(40_650)), "40.6 s");
    }

    #[test]
    fn a_step_runs_once_then_is_cached_until_its_key_changes() {
        let dir = std::env::temp_dir().join(format!("pddgpu-progress-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let progress = Progress::new(dir.join("stamps"), dir.join("logs"), false);
        let out = dir.join("out.bin");
        let mut runs = 0;
        let step = |flag: &str, runs: &mut u32| {
            let mut key = Key::new("demo");
            key.text("flag", flag);
            progress
                .cached("demo", &key, std::slice::from_ref(&out), |_log| {
                    *runs += 1;
                    std::fs::write(&out, flag)?;
                    Ok(())
                })
                .unwrap()
                .1
        };
        assert!(matches!(step("a", &mut runs), Ran::Built(_)));
        assert_eq!(step("a", &mut runs), Ran::Cached);
        assert!(matches!(step("b", &mut runs), Ran::Built(_)));
        std::fs::remove_file(&out).unwrap();
        assert!(matches!(step("b", &mut runs), Ran::Built(_)), "output gone");
        assert_eq!(runs, 3);

        // A step that fails leaves no stamp behind, and one that forgets
        // its output is an error.
        let mut key = Key::new("broken");
        key.text("flag", "x");
        let missing = dir.join("never-written");
        assert!(progress
            .cached("broken", &key, std::slice::from_ref(&missing), |_| Ok(()))
            .is_err());
        assert!(progress
            .cached("broken", &key, &[missing], |_| anyhow::bail!("no"))
            .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
