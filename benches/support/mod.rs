//! Shared by the benchmarks (`benches/receiver.rs`, `benches/controller.rs`): command-line
//! options, child processes of our own (spawned, measured through `/proc`, killed by PID),
//! latency statistics, Markdown tables and SVG line charts.
//!
//! Benchmarks, not tests: nothing here asserts a time. They fail loudly only when the thing
//! measured did not work (a request refused, an object never Ready).
#![allow(dead_code)]

pub mod plot;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `--short` (a few minutes, for CI and development) or `--full` (the numbers in BENCHMARKS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Short,
    Full,
}

/// Options common to both benchmarks.
#[derive(Clone, Debug)]
pub struct Opts {
    pub mode: Mode,
    /// Where results (JSON, Markdown, SVG, logs) go.
    pub out: PathBuf,
    /// The remaining `--name value` pairs, for the benchmark to read.
    pub rest: Vec<(String, String)>,
}

impl Opts {
    /// Parses `std::env::args`. `cargo bench` adds `--bench`; it is ignored.
    pub fn parse(name: &str) -> Self {
        let mut mode = Mode::Short;
        let mut out = None;
        let mut rest = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--bench" => {}
                "--short" => mode = Mode::Short,
                "--full" => mode = Mode::Full,
                "--out" => out = args.next().map(PathBuf::from),
                "-h" | "--help" => {
                    eprintln!(
                        "usage: cargo bench --bench {name} -- [--short|--full] [--out DIR] [--OPTION VALUE...]\n\
                         see scripts/bench.sh and BENCHMARKS.md"
                    );
                    std::process::exit(0);
                }
                flag if flag.starts_with("--") => {
                    let value = args
                        .next()
                        .unwrap_or_else(|| panic!("{flag} needs a value"));
                    rest.push((flag.trim_start_matches("--").to_owned(), value));
                }
                other => panic!("unexpected argument {other:?} (try --help)"),
            }
        }
        let out = out.unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
            target.join("ens-bench").join(match mode {
                Mode::Short => "short",
                Mode::Full => "full",
            })
        });
        std::fs::create_dir_all(&out).expect("create the output directory");
        Self { mode, out, rest }
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.rest
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A comma-separated list option, or `default`.
    pub fn list<T>(&self, name: &str, default: &[T]) -> Vec<T>
    where
        T: std::str::FromStr + Clone,
        T::Err: std::fmt::Debug,
    {
        match self.get(name) {
            Some(v) => v
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .unwrap_or_else(|e| panic!("--{name}: {e:?}"))
                })
                .collect(),
            None => default.to_vec(),
        }
    }

    /// A single option, or `default`.
    pub fn value<T: std::str::FromStr>(&self, name: &str, default: T) -> T
    where
        T::Err: std::fmt::Debug,
    {
        self.get(name)
            .map(|v| v.parse().unwrap_or_else(|e| panic!("--{name}: {e:?}")))
            .unwrap_or(default)
    }

    /// A duration option (`humantime`: `10s`, `1m`), or `default`.
    pub fn duration(&self, name: &str, default: Duration) -> Duration {
        self.get(name)
            .map(|v| humantime::parse_duration(v).unwrap_or_else(|e| panic!("--{name}: {e}")))
            .unwrap_or(default)
    }
}

/// A child process of ours: killed (SIGKILL) and reaped on drop, by its own PID only.
pub struct Proc {
    child: Child,
    /// The `listening on URL` it printed (servers), without a trailing slash.
    pub url: String,
    /// What it is, for messages.
    pub name: String,
}

impl Proc {
    /// Spawns `cmd` with stdout piped and stderr appended to `log`; with `wait_listen`, waits
    /// up to 60 s for its `listening on URL` line.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, wait_listen: bool) -> Self {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the log file");
        cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    // Keep draining so the child never blocks on a full pipe.
                    continue;
                }
            }
        });
        let url = if wait_listen {
            let first = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!(
                        "{name} printed no `listening on` line; see {}",
                        log.display()
                    )
                });
            first
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("{name}: unexpected first line {first:?}"))
                .trim_end_matches('/')
                .to_owned()
        } else {
            String::new()
        };
        Self {
            child,
            url,
            name: name.to_owned(),
        }
    }

    /// `ens-operator ARGS` (the binary Cargo built for this benchmark, release profile); with
    /// `wait_listen`, waits for its `listening on` line.
    pub fn ens_operator(
        name: &str,
        args: &[String],
        envs: &[(&str, &str)],
        log: &Path,
        wait_listen: bool,
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ens-operator"));
        cmd.args(args)
            .env_remove("K_SINK")
            .env_remove("POD_NAMESPACE")
            .env_remove("RUST_LOG");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::spawn(name, cmd, log, wait_listen)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) used so far.
    pub fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/{}/stat", self.pid()))
    }

    /// Resident and peak resident memory now.
    pub fn mem(&self) -> Mem {
        mem_of(&format!("/proc/{}/status", self.pid()))
    }

    /// Panics (with the log's tail) if the process has exited.
    pub fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                tail(log, 30)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// utime + stime from a `/proc/.../stat` file.
pub fn cpu_of(stat_path: &str) -> Duration {
    let text = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    let ticks = f.iter().sum::<u64>();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

/// CPU time of this process so far.
pub fn own_cpu() -> Duration {
    cpu_of("/proc/self/stat")
}

/// Memory of a process, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Mem {
    /// VmRSS, MiB.
    pub rss_mib: f64,
    /// VmHWM (peak RSS), MiB.
    pub hwm_mib: f64,
}

pub fn mem_of(status_path: &str) -> Mem {
    let text = std::fs::read_to_string(status_path).unwrap_or_default();
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Mem {
        rss_mib: kib("VmRSS:") / 1024.0,
        hwm_mib: kib("VmHWM:") / 1024.0,
    }
}

/// Latency samples in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Latencies(pub Vec<u32>);

/// Latency summary, milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// The `q` quantile (0..=1) in milliseconds; sorts in place.
    pub fn quantile(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0[i] as f64 / 1000.0
    }

    pub fn summary(&mut self) -> LatencySummary {
        LatencySummary {
            p50_ms: self.quantile(0.50),
            p90_ms: self.quantile(0.90),
            p99_ms: self.quantile(0.99),
            p999_ms: self.quantile(0.999),
            max_ms: self.quantile(1.0),
        }
    }
}

/// A Markdown table built row by row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "table row width");
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        s.push_str(&line(&self.header));
        let sep: Vec<String> = self
            .header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---".into() } else { "---:".into() })
            .collect();
        s.push_str(&line(&sep));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }
}

/// A number with thousands separators and no decimals (`12 345`).
pub fn int(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A number with `d` decimals.
pub fn dec(v: f64, d: usize) -> String {
    format!("{v:.d$}")
}

/// A ratio as `1.23×`.
pub fn ratio(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}×")
    } else {
        format!("{v:.2}×")
    }
}

/// A short description of this machine and run, for the reports.
pub fn machine_note() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(String::new(), |kib| {
            format!(", {:.0} GiB RAM", kib / 1024.0 / 1024.0)
        });
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    let mut s = String::new();
    let _ = write!(
        s,
        "{cpu}, {cores} cores{mem}; load average at start {load}; {}",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC")
    );
    s
}

/// Writes `text` to `out/name` and says so.
pub fn write(out: &Path, name: &str, text: &str) -> PathBuf {
    let p = out.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    eprintln!("wrote {}", p.display());
    p
}

/// Polls `cond` every `every` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// The value of a Prometheus sample line (`name{labels} value`) in exposition text, 0 if absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}
