//! Running the build's commands: each step writes everything its commands
//! print to one log file under `target/redox/logs/`, and a failing command
//! is reported with the tail of that log and its path.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// How many lines of a failed step's log are shown.
const TAIL_LINES: usize = 40;

/// The log of one build step.
#[derive(Debug)]
pub struct StepLog {
    path: PathBuf,
    verbose: bool,
}

impl StepLog {
    /// Starts (truncates) the log of `step` in `dir`. With `verbose`, the
    /// commands' output also goes to the terminal instead of only the file.
    pub fn create(dir: &Path, step: &str, verbose: bool) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{step}.log"));
        File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, verbose })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self) -> Result<File> {
        OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))
    }

    /// Writes a note into the log.
    pub fn note(&self, text: &str) -> Result<()> {
        writeln!(self.append()?, "{text}")?;
        Ok(())
    }

    /// Runs `cmd` to completion; its output goes to the log. Fails with
    /// the log's tail unless it exits 0.
    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        let line = describe(cmd);
        self.note(&format!("$ {line}"))?;
        let status = if self.verbose {
            eprintln!("$ {line}");
            cmd.stdin(Stdio::null()).status()
        } else {
            let out = self.append()?;
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .status()
        }
        .with_context(|| format!("starting {line}"))?;
        if !status.success() {
            bail!(
                "command failed ({status}): {line}\n{}\n(full log: {})",
                tail(&self.path, TAIL_LINES),
                self.path.display()
            );
        }
        Ok(())
    }

    /// Runs `cmd` and returns its standard output; standard error goes to
    /// the log. Fails like [`StepLog::run`].
    pub fn output(&self, cmd: &mut Command) -> Result<String> {
        let line = describe(cmd);
        self.note(&format!("$ {line}"))?;
        let out = cmd
            .stdin(Stdio::null())
            .stderr(self.append()?)
            .output()
            .with_context(|| format!("starting {line}"))?;
        if !out.status.success() {
            bail!(
                "command failed ({}): {line}\n{}\n(full log: {})",
                out.status,
                tail(&self.path, TAIL_LINES),
                self.path.display()
            );
        }
        String::from_utf8(out.stdout).with_context(|| format!("output of {line} is not UTF-8"))
    }
}

/// The last `n` lines of a text file (empty if it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    let text = text.unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A command as a person would type it: the variables it sets (but `PATH`,
/// which is long and only puts the toolchain first), the program, the
/// arguments, shell-quoted where needed; `(cd DIR && …)` when it runs
/// elsewhere.
pub fn describe(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), shell_quote(v))))
        .collect();
    words.push(shell_quote(cmd.get_program()));
    words.extend(cmd.get_args().map(shell_quote));
    let line = words.join(" ");
    match cmd.get_current_dir() {
        Some(dir) => format!("(cd {} && {line})", shell_quote(dir.as_os_str())),
        None => line,
    }
}

/// Quotes `word` for a POSIX shell when it has anything but plain
/// characters.
pub fn shell_quote(word: impl AsRef<OsStr>) -> String {
    let word = word.as_ref().to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_alone() {
        assert_eq!(shell_quote("-device"), "-device");
        assert_eq!(
            shell_quote("bochs-display,vgamem=64M"),
            "bochs-display,vgamem=64M"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn describe_shows_env_dir_and_args() {
        let mut cmd = Command::new("cargo");
        cmd.current_dir("/tmp/x y")
            .env("RUSTFLAGS", "--cfg a")
            .args(["build", "--release"]);
        assert_eq!(
            describe(&cmd),
            "(cd '/tmp/x y' && RUSTFLAGS='--cfg a' cargo build --release)"
        );
    }

    #[test]
    fn a_failing_command_reports_the_log_tail() {
        let dir = std::env::temp_dir().join(format!("pddgpu-steplog-{}", std::process::id()));
        let log = StepLog::create(&dir, "demo", false).unwrap();
        log.run(Command::new("sh").args(["-c", "echo fine"]))
            .unwrap();
        assert_eq!(
            log.output(Command::new("sh").args(["-c", "echo out; echo err >&2"]))
                .unwrap(),
            "out\n"
        );
        let err = log
            .run(Command::new("sh").args(["-c", "echo the-reason >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("the-reason"), "{err}");
        assert!(err.contains("demo.log"), "{err}");
        let text = fs::read_to_string(log.path()).unwrap();
        assert!(text.contains("$ sh -c 'echo fine'") && text.contains("fine\n"));
        assert!(text.contains("err\n"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
