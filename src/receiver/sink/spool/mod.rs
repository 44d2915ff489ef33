//! The durable spool (design §4): accepted batches are appended to segment files and fsync'd
//! before ENS gets its 200; a forwarder drains them to the HTTP sink with retries.
//!
//! Layout of `--spool-dir`: `<seq>.seg` segment files (see [`segment`]) and `offset`,
//! the position (`<seq> <byte>`) of the first record not yet delivered, replaced atomically
//! (write, fsync, rename, fsync dir) after every delivery. After a restart delivery resumes at
//! that position: acknowledged records are never lost, delivered ones are not sent again, except
//! the one record in flight at the crash (its CloudEvent ids let the sink drop the copy).
//! A restart never appends to an old segment, so torn tails exist only at the end of old
//! segments; they fail their checksum and are skipped, never delivered. Fully drained segments
//! are deleted. The bound (`--spool-max-bytes`) is on segment bytes on disk; an append that
//! would pass it fails with [`SpoolError::Full`] (the request gets 503). One process per dir.

mod segment;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use self::segment::Read;
use crate::receiver::event::CloudEvent;
use crate::receiver::metrics::Metrics;
use crate::receiver::sink::cloudevents::{self, HttpSink};

const OFFSET_FILE: &str = "offset";
const OFFSET_TMP: &str = "offset.tmp";
const LOCK_FILE: &str = "lock";
/// First and largest pause between delivery attempts of one record.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Why the spool refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Accepting the batch would pass `--spool-max-bytes`.
    #[error("spool is full")]
    Full,
    /// Another process holds the spool directory.
    #[error("spool directory {0} is in use by another receiver")]
    Locked(PathBuf),
    /// Disk I/O failed.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The events could not be encoded.
    #[error("cannot encode events: {0}")]
    Encode(#[source] serde_json::Error),
    /// The blocking task running the I/O died.
    #[error("spool task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A position in the spool: segment and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    seq: u64,
    at: u64,
}

struct State {
    /// Segment → bytes durably written (for the open segment: up to the last fsync).
    segments: BTreeMap<u64, u64>,
    /// The segment being appended to.
    writer: Option<(u64, File)>,
    next_seq: u64,
    /// First record not yet delivered.
    read: Pos,
    depth_records: i64,
    depth_bytes: i64,
}

impl State {
    fn disk_bytes(&self) -> u64 {
        self.segments.values().sum()
    }
}

struct Inner {
    dir: PathBuf,
    /// Held for the life of the spool: the exclusive lock on `<dir>/lock`.
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    appended: Notify,
    metrics: Arc<Metrics>,
}

/// A durable, bounded spool. Cheap to clone.
#[derive(Clone)]
pub struct Spool(Arc<Inner>);

impl Spool {
    /// Opens (or creates) the spool in `dir` and recovers its position and depth.
    pub fn open(dir: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if let Some(seq) = entry.file_name().to_str().and_then(segment::parse_name) {
                let len = entry.metadata().map_err(io_err(&entry.path()))?.len();
                segments.insert(seq, len);
            }
        }
        let first = segments.keys().next().copied().unwrap_or(0);
        let read = read_offset(dir)?.unwrap_or(Pos { seq: first, at: 0 });
        for seq in segments
            .keys()
            .copied()
            .filter(|s| *s < read.seq)
            .collect::<Vec<_>>()
        {
            let p = segment::path(dir, seq);
            fs::remove_file(&p).map_err(io_err(&p))?;
            segments.remove(&seq);
        }
        let next_seq = segments
            .keys()
            .next_back()
            .map_or(read.seq, |s| (s + 1).max(read.seq));
        let state = State {
            segments,
            writer: None,
            next_seq,
            read,
            depth_records: 0,
            depth_bytes: 0,
        };
        let spool = Self(Arc::new(Inner {
            dir: dir.to_owned(),
            _lock: lock,
            max_bytes,
            segment_bytes: (max_bytes / 4).clamp(64 * 1024, 64 * 1024 * 1024),
            state: Mutex::new(state),
            appended: Notify::new(),
            metrics,
        }));
        spool.0.recount()?;
        Ok(spool)
    }

    /// Appends one batch and fsyncs it. Returns once it is durable.
    pub async fn append(&self, events: &[CloudEvent]) -> Result<(), SpoolError> {
        let payload = cloudevents::encode_batch(events).map_err(SpoolError::Encode)?;
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || inner.append(&payload))
            .await
            .map_err(SpoolError::Task)??;
        self.0.appended.notify_one();
        Ok(())
    }

    /// Drains the spool to `sink` until `stop` turns true. Each record is retried with backoff
    /// until the sink takes it; progress is committed durably after each delivery.
    pub async fn forward(self, sink: HttpSink, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let inner = self.0.clone();
            let next = match tokio::task::spawn_blocking(move || inner.next_record()).await {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read spool");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool reader failed");
                    None
                }
            };
            let Some((payload, end)) = next else {
                tokio::select! {
                    _ = self.0.appended.notified() => {}
                    _ = stop.changed() => {}
                    // Also re-check now and then, in case a read failed transiently.
                    _ = tokio::time::sleep(BACKOFF.1) => {}
                }
                continue;
            };
            match serde_json::from_slice::<Vec<CloudEvent>>(&payload) {
                Ok(events) => {
                    if !self.deliver(&sink, &events, &mut stop).await {
                        return;
                    }
                }
                Err(e) => {
                    // Checksummed but not ours to parse: nothing can ever deliver it.
                    tracing::error!(error = %e, "skipping unreadable spool record");
                    self.0.metrics.spool_corrupt_records.inc();
                }
            }
            let inner = self.0.clone();
            let len = payload.len() as u64 + segment::HEADER_LEN;
            match tokio::task::spawn_blocking(move || inner.commit(end, len)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot commit spool offset"),
                Err(e) => tracing::error!(error = %e, "spool commit failed"),
            }
        }
    }

    /// Retries until delivered (`true`) or asked to stop (`false`).
    async fn deliver(
        &self,
        sink: &HttpSink,
        events: &[CloudEvent],
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut pause = BACKOFF.0;
        loop {
            match sink.deliver(events).await {
                Ok(()) => return true,
                Err(e) => {
                    self.0.metrics.sink_error(e.kind());
                    tracing::warn!(error = %e, retry_in = ?pause, "spooled batch not delivered");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return false,
            }
            pause = (pause * 2).min(BACKOFF.1);
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every field is updated after
        // its I/O succeeded), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, payload: &[u8]) -> Result<(), SpoolError> {
        let frame = segment::encode(payload);
        let len = frame.len() as u64;
        let mut st = self.lock();
        if st.disk_bytes() + len > self.max_bytes {
            return Err(SpoolError::Full);
        }
        let roll = match &st.writer {
            None => true,
            Some((seq, _)) => st.segments.get(seq).copied().unwrap_or(0) >= self.segment_bytes,
        };
        if roll {
            let seq = st.next_seq;
            let p = segment::path(&self.dir, seq);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&p)
                .map_err(io_err(&p))?;
            sync_dir(&self.dir)?;
            st.writer = Some((seq, file));
            st.segments.insert(seq, 0);
            st.next_seq = seq + 1;
        }
        let Some((seq, file)) = st.writer.as_mut() else {
            return Err(SpoolError::Full);
        };
        let seq = *seq;
        let p = segment::path(&self.dir, seq);
        if let Err(e) = file.write_all(&frame).and_then(|()| file.sync_data()) {
            // The segment may now end in a partial frame: stop appending to it (readers skip
            // the tail by checksum) and count what is on disk.
            let on_disk = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            st.writer = None;
            st.segments.insert(seq, on_disk);
            return Err(io_err(&p)(e));
        }
        *st.segments.entry(seq).or_insert(0) += len;
        st.depth_records += 1;
        st.depth_bytes += len as i64;
        self.publish(&st);
        Ok(())
    }

    /// The next undelivered record and the position after it. Skips corrupt tails.
    fn next_record(&self) -> Result<Option<(Vec<u8>, Pos)>, SpoolError> {
        loop {
            let (pos, limit) = {
                let st = self.lock();
                let Some((&seq, &limit)) = st.segments.range(st.read.seq..).next() else {
                    return Ok(None);
                };
                let at = if seq == st.read.seq { st.read.at } else { 0 };
                (Pos { seq, at }, limit)
            };
            let p = segment::path(&self.dir, pos.seq);
            let mut file = File::open(&p).map_err(io_err(&p))?;
            match segment::read_at(&mut file, pos.at, limit).map_err(io_err(&p))? {
                Read::Record { payload, next } => {
                    return Ok(Some((
                        payload,
                        Pos {
                            seq: pos.seq,
                            at: next,
                        },
                    )));
                }
                Read::End => {
                    if !self.finish_segment(pos.seq, true)? {
                        return Ok(None);
                    }
                }
                Read::Corrupt => {
                    tracing::warn!(
                        segment = pos.seq,
                        at = pos.at,
                        "skipping torn or damaged spool tail"
                    );
                    self.metrics.spool_corrupt_records.inc();
                    self.finish_segment(pos.seq, false)?;
                }
            }
        }
    }

    /// Moves past segment `seq` and deletes it; `true` if it did. With `at_end`, the segment
    /// being appended to is finished only when it is non-empty and fully delivered (the next
    /// append then opens a new one); without, it is closed regardless (damaged).
    fn finish_segment(&self, seq: u64, at_end: bool) -> Result<bool, SpoolError> {
        let mut st = self.lock();
        if st.writer.as_ref().is_some_and(|(s, _)| *s == seq) {
            let len = st.segments.get(&seq).copied().unwrap_or(0);
            if at_end && (len == 0 || st.read != (Pos { seq, at: len })) {
                return Ok(false);
            }
            st.writer = None;
        }
        let next = Pos {
            seq: seq + 1,
            at: 0,
        };
        write_offset(&self.dir, next)?;
        st.read = next;
        st.segments.remove(&seq);
        let p = segment::path(&self.dir, seq);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Records durably that everything before `end` is delivered.
    fn commit(&self, end: Pos, len: u64) -> Result<(), SpoolError> {
        write_offset(&self.dir, end)?;
        let mut st = self.lock();
        st.read = end;
        st.depth_records = (st.depth_records - 1).max(0);
        st.depth_bytes = (st.depth_bytes - len as i64).max(0);
        self.publish(&st);
        Ok(())
    }

    /// Counts undelivered records from the read position (at startup).
    fn recount(&self) -> Result<(), SpoolError> {
        let mut st = self.lock();
        let (mut records, mut bytes) = (0i64, 0i64);
        for (&seq, &limit) in st.segments.range(st.read.seq..) {
            let p = segment::path(&self.dir, seq);
            let mut file = File::open(&p).map_err(io_err(&p))?;
            let mut at = if seq == st.read.seq { st.read.at } else { 0 };
            while let Read::Record { next, .. } =
                segment::read_at(&mut file, at, limit).map_err(io_err(&p))?
            {
                records += 1;
                bytes += (next - at) as i64;
                at = next;
            }
        }
        st.depth_records = records;
        st.depth_bytes = bytes;
        self.publish(&st);
        Ok(())
    }

    fn publish(&self, st: &State) {
        self.metrics.spool_depth_records.set(st.depth_records);
        self.metrics.spool_depth_bytes.set(st.depth_bytes);
    }
}

fn read_offset(dir: &Path) -> Result<Option<Pos>, SpoolError> {
    let p = dir.join(OFFSET_FILE);
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&p)(e)),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(seq)), Some(Ok(at))) => Ok(Some(Pos { seq, at })),
        _ => Err(io_err(&p)(io::Error::new(
            io::ErrorKind::InvalidData,
            "offset file is not `<segment> <byte>`",
        ))),
    }
}

fn write_offset(dir: &Path, pos: Pos) -> Result<(), SpoolError> {
    let tmp = dir.join(OFFSET_TMP);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(format!("{} {}\n", pos.seq, pos.at).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    let dst = dir.join(OFFSET_FILE);
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ens-spool-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    fn segments(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                segment::parse_name(name.to_str().unwrap()).is_some()
            })
            .count()
    }

    /// Delivers (reads and commits) one record, returning its payload.
    fn drain_one(spool: &Spool) -> Option<Vec<u8>> {
        let (payload, end) = spool.0.next_record().unwrap()?;
        let len = payload.len() as u64 + segment::HEADER_LEN;
        spool.0.commit(end, len).unwrap();
        Some(payload)
    }

    #[test]
    fn resumes_after_reopen_and_deletes_drained_segments() {
        let dir = temp("resume");
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
        for p in [&b"one"[..], b"two", b"three"] {
            spool.0.append(p).unwrap();
        }
        assert_eq!(drain_one(&spool).as_deref(), Some(&b"one"[..]));
        drop(spool);

        let spool = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
        assert_eq!(metrics.spool_depth_records.get(), 2);
        spool.0.append(b"four").unwrap();
        assert_eq!(
            segments(&dir),
            2,
            "a reopened spool appends to a new segment"
        );
        let mut rest = Vec::new();
        while let Some(p) = drain_one(&spool) {
            rest.push(p);
        }
        assert_eq!(rest, [&b"two"[..], b"three", b"four"]);
        assert_eq!(metrics.spool_depth_records.get(), 0);
        assert_eq!(segments(&dir), 0, "drained segments are deleted");
        spool.0.append(b"five").unwrap();
        assert_eq!(drain_one(&spool).as_deref(), Some(&b"five"[..]));
    }

    #[test]
    fn one_spool_per_directory() {
        let dir = temp("lock");
        let first = Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())).unwrap();
        assert!(matches!(
            Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())),
            Err(SpoolError::Locked(_))
        ));
        drop(first);
        assert!(Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())).is_ok());
    }

    #[test]
    fn refuses_beyond_the_bound() {
        let dir = temp("bound");
        let spool = Spool::open(&dir, 100, Arc::new(Metrics::new())).unwrap();
        spool.0.append(&[b'x'; 60]).unwrap();
        assert!(matches!(spool.0.append(&[b'y'; 60]), Err(SpoolError::Full)));
        assert!(drain_one(&spool).is_some());
        assert!(drain_one(&spool).is_none());
        spool.0.append(&[b'y'; 60]).unwrap();
    }
}
