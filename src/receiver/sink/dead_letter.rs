//! Dead letters: events a sink refused for good, kept on disk so they neither block the events
//! behind them nor vanish (docs/receiver.md, "Dead letters").
//!
//! An HTTP sink refuses for good with a 4xx other than those that say "later": 408 (timeout),
//! 421 (misdirected: another connection), 423 (locked), 425 (too early) and 429 (too many
//! requests); a 413 is for good only for a single event (a group is split first). A broker
//! refuses for good a record larger than it takes, or one its topic refuses ([`Refusal`]). Each
//! dead letter is one file in `--dead-letter-dir`, `<event id>-<route digest>.json`, holding who
//! refused it and how, when, and the CloudEvent; it is written to a temporary name, fsync'd,
//! linked to its name (never replacing a letter of the same event and route: ENS's retry of a
//! batch whose answer was lost keeps nothing twice) and the directory fsync'd, so a letter is
//! whole or absent. Only once that returned is the event counted as handed off. The directory is
//! bounded (`--dead-letter-max-bytes`, counted again when reached, so replayed letters make room);
//! when full, a refused event is an ordinary failure again
//! (503 to ENS, or the spool retries), which the metric and a log line say.
//! `ens-operator dead-letters list|replay` reads the directory.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::receiver::canonical::hex_digest;
use crate::receiver::event::CloudEvent;
use crate::receiver::metrics::{Metrics, ReasonLabel};

/// Suffix of a dead letter's file.
const SUFFIX: &str = ".json";
/// Prefix of a letter being written (never read).
const TEMP_PREFIX: &str = ".tmp-";

/// Whether the HTTP sink's `status` refuses an event for good (see the module doc).
pub fn refused_for_good(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 421 | 423 | 425 | 429)
}

/// Who refused an event for good, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Refusal {
    /// A broker refused the event's record or message.
    #[serde(rename_all = "camelCase")]
    Broker {
        /// Which broker.
        broker: Broker,
        /// The topic or subject it was for.
        destination: String,
        /// Why, as the batch outcome metric says it (`kafka_too_large`, ...).
        reason: String,
        /// Whether it was too large (for the dead-letter metric).
        #[serde(default)]
        too_large: bool,
    },
    /// The HTTP sink answered this status.
    Http {
        /// The sink's HTTP status.
        status: u16,
    },
}

/// The brokers a receiver hands events to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Broker {
    /// Apache Kafka.
    Kafka,
    /// NATS JetStream.
    JetStream,
}

impl Refusal {
    /// The `reason` label of `ens_receiver_dead_letters_total`.
    fn metric_reason(&self) -> &'static str {
        match self {
            Self::Http { status: 413 }
            | Self::Broker {
                too_large: true, ..
            } => "too_large",
            _ => "refused",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { status } => write!(f, "status={status}"),
            Self::Broker {
                broker,
                destination,
                reason,
                ..
            } => {
                let broker = match broker {
                    Broker::Kafka => "kafka",
                    Broker::JetStream => "jetstream",
                };
                write!(f, "{broker}={destination} reason={reason}")
            }
        }
    }
}

/// One dead letter as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Letter {
    /// Who refused it and how (`status` for an HTTP sink, as letters have always had).
    #[serde(flatten)]
    pub refusal: Refusal,
    /// When the sink refused it (RFC 3339).
    pub refused_at: String,
    /// The event, as it would have been delivered.
    pub event: CloudEvent,
}

/// Why a dead letter could not be kept or read.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The directory holds `--dead-letter-max-bytes` already.
    #[error("dead-letter directory is full")]
    Full,
    /// Disk I/O failed.
    #[error("dead letter I/O on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A letter does not parse (hand-edited or foreign file).
    #[error("{path} is not a dead letter: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The blocking task writing the letter died.
    #[error("dead letter task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DeadLetterError + '_ {
    move |source| DeadLetterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The dead-letter directory of a running receiver.
#[derive(Clone)]
pub struct DeadLetters(Arc<Inner>);

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DeadLetters").field(&self.0.dir).finish()
    }
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    room: Mutex<Room>,
    /// Makes each temporary name unique within the process.
    seq: AtomicU64,
    metrics: Arc<Metrics>,
}

/// What the bound counts.
#[derive(Default)]
struct Room {
    /// Bytes of the letters on disk (as last counted, plus those written since).
    on_disk: u64,
    /// Bytes of letters being written.
    writing: u64,
}

impl DeadLetters {
    /// Opens (creating) `dir`, bounded to `max_bytes` of letters; counts what is there already.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DeadLetterError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // Letters a crash left half-written were never counted as handed off.
        for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let on_disk = dir_bytes(dir)?;
        metrics.dead_letter_bytes.set(on_disk as i64);
        Ok(Self(Arc::new(Inner {
            dir: dir.to_owned(),
            max_bytes,
            room: Mutex::new(Room {
                on_disk,
                writing: 0,
            }),
            seq: AtomicU64::new(0),
            metrics,
        })))
    }

    /// Keeps `event`, which a sink refused as `refusal` says, durably; `Ok` once it is on disk.
    pub async fn keep(&self, event: &CloudEvent, refusal: Refusal) -> Result<(), DeadLetterError> {
        let reason = refusal.metric_reason();
        let shown = refusal.to_string();
        let letter = Letter {
            refusal,
            refused_at: jiff::Timestamp::now().to_string(),
            event: event.clone(),
        };
        let inner = self.0.clone();
        let result = tokio::task::spawn_blocking(move || inner.write(&letter))
            .await
            .map_err(DeadLetterError::Task)
            .and_then(|r| r);
        match &result {
            Ok(()) => {
                self.0
                    .metrics
                    .dead_letters
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                tracing::warn!(
                    route = %event.source,
                    id = %event.id,
                    refusal = %shown,
                    "the sink refused an event for good: kept as a dead letter"
                );
            }
            Err(e) => tracing::error!(
                route = %event.source,
                id = %event.id,
                refusal = %shown,
                error = %e,
                "the sink refused an event for good, and it cannot be kept as a dead letter"
            ),
        }
        result
    }
}

impl Inner {
    fn write(&self, letter: &Letter) -> Result<(), DeadLetterError> {
        let name = file_name(&letter.event);
        if self.dir.join(&name).exists() {
            // Kept already (ENS's retry of a batch whose answer was lost): even when full.
            return Ok(());
        }
        let body = serde_json::to_vec_pretty(letter).expect("a letter serializes");
        let len = body.len() as u64;
        {
            let mut room = self.room();
            if room.on_disk + room.writing + len > self.max_bytes {
                // Letters may have been replayed (removed) since: count again before refusing.
                room.on_disk = dir_bytes(&self.dir)?;
                self.metrics.dead_letter_bytes.set(room.on_disk as i64);
                if room.on_disk + room.writing + len > self.max_bytes {
                    return Err(DeadLetterError::Full);
                }
            }
            room.writing += len;
        }
        let written = self.write_file(&name, &body);
        let mut room = self.room();
        room.writing -= len;
        if let Ok(true) = written {
            room.on_disk += len;
            self.metrics.dead_letter_bytes.set(room.on_disk as i64);
        }
        written.map(|_| ())
    }

    fn room(&self) -> MutexGuard<'_, Room> {
        self.room.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the letter `body` as `name` unless that is there already; `true` when it wrote.
    fn write_file(&self, name: &str, body: &[u8]) -> Result<bool, DeadLetterError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!("{TEMP_PREFIX}{seq}-{name}"));
        let path = self.dir.join(name);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_err(&temp))?;
        file.write_all(body).map_err(io_err(&temp))?;
        file.sync_all().map_err(io_err(&temp))?;
        // A link, unlike a rename, never replaces: the first letter of an event stays.
        let linked = match fs::hard_link(&temp, &path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(io_err(&path)(e));
            }
        };
        fs::remove_file(&temp).map_err(io_err(&temp))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(linked)
    }
}

/// The file name of `event`'s letter: one per event and route.
fn file_name(event: &CloudEvent) -> String {
    let route = hex_digest(event.source.as_bytes());
    format!("{}-{}{SUFFIX}", event.id, &route[..16])
}

/// The letters in `dir`, oldest first, as (file, letter).
pub fn read_all(dir: &Path) -> Result<Vec<(PathBuf, Letter)>, DeadLetterError> {
    let mut letters = letter_files(dir)?
        .into_iter()
        .map(|(path, _)| {
            let text = fs::read(&path).map_err(io_err(&path))?;
            let letter: Letter =
                serde_json::from_slice(&text).map_err(|source| DeadLetterError::Parse {
                    path: path.clone(),
                    source,
                })?;
            Ok((path, letter))
        })
        .collect::<Result<Vec<_>, _>>()?;
    letters.sort_by_cached_key(|(path, l)| {
        (l.refused_at.parse::<jiff::Timestamp>().ok(), path.clone())
    });
    Ok(letters)
}

/// Bytes of the letters in `dir`.
fn dir_bytes(dir: &Path) -> Result<u64, DeadLetterError> {
    let mut bytes = 0;
    for (path, _) in letter_files(dir)? {
        // A letter replayed (removed) meanwhile takes no room.
        match fs::metadata(&path) {
            Ok(m) => bytes += m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(bytes)
}

/// Removes the letter at `path` (replayed), durably.
pub fn remove(path: &Path) -> Result<(), DeadLetterError> {
    fs::remove_file(path).map_err(io_err(path))?;
    match path.parent() {
        Some(dir) => File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir)),
        None => Ok(()),
    }
}

/// The letter files of `dir` with their names.
fn letter_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, DeadLetterError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(SUFFIX) && !name.starts_with(TEMP_PREFIX) {
            files.push((entry.path(), name));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_but_timeout_and_too_many_requests_are_for_good() {
        for s in [400, 401, 403, 404, 409, 413, 415, 422, 499] {
            assert!(refused_for_good(s), "{s}");
        }
        for s in [200, 302, 399, 408, 421, 423, 425, 429, 500, 502, 503, 504] {
            assert!(!refused_for_good(s), "{s}");
        }
    }

    #[test]
    fn letters_of_either_kind_read_back_and_old_ones_still_read() {
        let event = crate::receiver::event::parse_batch(br#"[{"mid":1}]"#, "/ens/a")
            .unwrap()
            .remove(0);
        for refusal in [
            Refusal::Http { status: 422 },
            Refusal::Broker {
                broker: Broker::Kafka,
                destination: "ens.a".into(),
                reason: "kafka_too_large".into(),
                too_large: true,
            },
        ] {
            let letter = Letter {
                refusal: refusal.clone(),
                refused_at: "2026-12-03T00:00:00Z".into(),
                event: event.clone(),
            };
            let text = serde_json::to_string(&letter).unwrap();
            let back: Letter = serde_json::from_str(&text).unwrap();
            assert_eq!(back.refusal, refusal, "{text}");
        }
        // As letters were written before brokers had them.
        let old = serde_json::json!({
            "status": 400,
            "refusedAt": "2026-12-01T00:00:00Z",
            "event": serde_json::to_value(&event).unwrap(),
        });
        let back: Letter = serde_json::from_value(old).unwrap();
        assert_eq!(back.refusal, Refusal::Http { status: 400 });
        assert_eq!(back.refusal.to_string(), "status=400");
    }

    #[tokio::test]
    async fn a_letter_is_kept_whole_read_back_and_the_bound_refuses_more() {
        let dir = std::env::temp_dir().join(format!("ens-dl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let metrics = Arc::new(Metrics::new());
        let events =
            crate::receiver::event::parse_batch(br#"[{"mid":1},{"mid":2}]"#, "/ens/a").unwrap();
        let letters = DeadLetters::open(&dir, 1 << 20, metrics.clone()).unwrap();
        letters
            .keep(&events[0], Refusal::Http { status: 400 })
            .await
            .unwrap();
        let read = read_all(&dir).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].1.refusal, Refusal::Http { status: 400 });
        // The same event again (ENS's retry of a batch whose answer was lost): still one.
        letters
            .keep(&events[0], Refusal::Http { status: 400 })
            .await
            .unwrap();
        assert_eq!(read_all(&dir).unwrap().len(), 1);
        assert_eq!(read[0].1.event.id, events[0].id);
        assert_eq!(read[0].1.event.data.get(), events[0].data.get());

        // Reopened, the bound counts what is there: one more letter does not fit.
        let size = fs::metadata(&read[0].0).unwrap().len();
        let small = DeadLetters::open(&dir, size + size / 2, metrics).unwrap();
        assert!(matches!(
            small.keep(&events[1], Refusal::Http { status: 400 }).await,
            Err(DeadLetterError::Full)
        ));
        assert_eq!(read_all(&dir).unwrap().len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
