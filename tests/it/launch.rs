//! The one way the tests start the `ens-operator` binary. [`Launch`] is the command line, with a
//! clean environment (no cluster unless given one, logs at `warn` unless `ENS_TEST_LOG` says
//! otherwise); [`Proc`] is the running child, killed (SIGKILL, by its PID) and reaped on drop.
//! A server prints `listening on URL` first: [`Launch::listening`] waits for that line and,
//! when it does not come, fails with the process's state and the end of its stderr. The rest of
//! stdout stays readable ([`Proc::stdout`]). Stderr (the logs) goes to the test's output (shown
//! when it fails, or with `--nocapture`), or to a file ([`Launch::log_to`]).

use std::{
    collections::VecDeque,
    ffi::OsString,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How long a server gets to print its address: start-up on a busy machine, never a measure.
const LISTEN: Duration = Duration::from_secs(60);
/// How many of the last stderr lines a start-up failure shows.
const TAIL: usize = 40;

/// `ens-operator ARGS`, not started yet.
pub struct Launch {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log: Option<PathBuf>,
}

impl Launch {
    /// The binary with `args`.
    pub fn new<S: Into<OsString>>(args: impl IntoIterator<Item = S>) -> Self {
        let log = std::env::var("ENS_TEST_LOG").unwrap_or_else(|_| "warn".into());
        Self {
            program: env!("CARGO_BIN_EXE_ens-operator").into(),
            args: args.into_iter().map(Into::into).collect(),
            envs: vec![("RUST_LOG".into(), log.into())],
            log: None,
        }
    }

    /// Runs the binary through `link`, a symlink to it whose name picks the role (`kubectl-ens`).
    pub fn via(mut self, link: impl Into<PathBuf>) -> Self {
        self.program = link.into();
        self
    }

    /// More arguments.
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable (the last one set wins).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Talks to the API server `kubeconfig` names.
    pub fn kubeconfig(self, kubeconfig: &Path) -> Self {
        self.env("KUBECONFIG", kubeconfig)
    }

    /// Talks to the shared test control plane, as its admin.
    pub fn cluster(self) -> Self {
        self.kubeconfig(&crate::common::control_plane().kubeconfig)
    }

    /// Appends stderr (the logs) to `path` instead of the test's output.
    pub fn log_to(mut self, path: &Path) -> Self {
        self.log = Some(path.to_owned());
        self
    }

    /// Starts the process; every stdout line goes to [`Proc::stdout`].
    pub fn spawn(self) -> Proc {
        let name = self
            .program
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let what = format!(
            "{name} {}",
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_remove("KUBECONFIG")
            .env_remove("K_SINK")
            .env_remove("POD_NAMESPACE")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        match &self.log {
            Some(path) => cmd.stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display())),
            ),
            None => cmd.stderr(Stdio::piped()),
        };
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = match (self.log, child.stderr.take()) {
            (Some(path), _) => Stderr::File(path),
            (None, Some(pipe)) => Stderr::forward(pipe),
            (None, None) => unreachable!("stderr is piped"),
        };
        Proc {
            child,
            url: String::new(),
            stdout,
            stderr,
            what,
        }
    }

    /// Starts a server and waits for its `listening on URL` line: [`Proc::url`] is that URL.
    pub fn listening(self) -> Proc {
        let mut proc = self.spawn();
        let first = match proc.stdout.recv_timeout(LISTEN) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                proc.fail(&format!("printed no `listening on` line within {LISTEN:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                proc.fail("closed its stdout before a `listening on` line")
            }
        };
        match first.strip_prefix("listening on ") {
            Some(url) => proc.url = url.trim_end_matches('/').to_owned(),
            None => proc.fail(&format!("printed {first:?} first, not `listening on URL`")),
        }
        proc
    }
}

/// The lines of `pipe`, read on a thread of their own until it closes (always drained, so the
/// child never blocks on a full pipe).
fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Where a child's stderr goes.
enum Stderr {
    /// Into the test's output, the last [`TAIL`] lines kept; the thread ends when the child does.
    Forwarded(Arc<Mutex<VecDeque<String>>>, Option<JoinHandle<()>>),
    /// Appended to this file.
    File(PathBuf),
}

impl Stderr {
    fn forward(pipe: impl Read + Send + 'static) -> Self {
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
        let kept = tail.clone();
        // `eprintln!` on a thread spawned by the test goes to that test's captured output.
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut kept = kept.lock().unwrap();
                if kept.len() == TAIL {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Self::Forwarded(tail, Some(thread))
    }

    /// The last lines, all of them once the child has exited.
    fn tail(&mut self, exited: bool) -> String {
        match self {
            Self::Forwarded(tail, thread) => {
                if exited && let Some(t) = thread.take() {
                    let _ = t.join();
                }
                tail.lock()
                    .unwrap()
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Self::File(path) => {
                let text = std::fs::read_to_string(&*path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(TAIL)..].join("\n")
            }
        }
    }
}

/// A running `ens-operator`, ours: killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Child,
    /// The `listening on` URL without a trailing `/`, for a server started with
    /// [`Launch::listening`]; empty otherwise.
    pub url: String,
    /// The stdout lines (after the `listening on` line).
    pub stdout: mpsc::Receiver<String>,
    stderr: Stderr,
    what: String,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (what the kubelet sends), without waiting.
    pub fn send_term(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(ok.success(), "kill -TERM {}", self.pid());
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Proc::wait_exit`], blocking the thread (outside a runtime).
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL now (a crash), and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails the test: what the process is doing and the end of its stderr.
    fn fail(&mut self, what_went_wrong: &str) -> ! {
        // A closed stdout means it is exiting: give it a moment to say how.
        let status = self.wait_exit_blocking(Duration::from_secs(5));
        let state = match status {
            Some(s) => format!("exited ({s})"),
            None => "still running".to_owned(),
        };
        let tail = self.stderr.tail(status.is_some());
        panic!(
            "{} {what_went_wrong}; {state}\n--- the end of its stderr:\n{tail}",
            self.what
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
