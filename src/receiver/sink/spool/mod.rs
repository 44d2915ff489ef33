//! The durable spool (docs/design.md §4): accepted batches are appended to segment files and
//! fsync'd before ENS gets its 200; a forwarder ([`forward`]) drains them to the HTTP sink.
//!
//! Appends commit in groups: an appender writes its frame under the state lock, then waits until
//! the frame is durable. One sync loop at a time, on a blocking thread started by the appender
//! that found none running, runs `fdatasync` with the lock released while written frames are
//! left unsynced; each call covers every frame written before it, so concurrent appends share
//! fsyncs and neither appenders nor the forwarder wait behind a disk flush. Appenders wait for
//! their turn to write and for the sync that covers them asynchronously (a `watch` of the
//! durable watermark), holding no thread: a parked blocking thread each made every waiting
//! appender a mimalloc thread heap (BENCHMARKS.md, finding 7). An append returns (and the batch
//! gets its 200) only once a sync that started after its write succeeded.
//! The durable length of the open segment is its `readable` watermark: the forwarder never reads
//! past it, so it never delivers a record whose append could still fail.
//!
//! Layout of `--spool-dir`: `<seq>.seg` segment files (see [`segment`]) and `offset`, the
//! position of the first record not yet delivered (see [`cursor`]), written after each delivered
//! group and synced in the background. After a restart delivery resumes there: acknowledged
//! records are never lost, and delivered ones are not sent again, except the group in flight at
//! the crash (after a power loss: also those delivered since the cursor's last sync); their
//! CloudEvent ids let the sink drop the copies. A segment is deleted only after a synced cursor
//! points past it. A restart never appends to an old segment, so torn tails exist
//! only at the end of old segments; they fail their checksum and are skipped, never delivered.
//! Drained segments are deleted; the open one once it is full. The bound (`--spool-max-bytes`)
//! is on segment bytes on disk, delivered records of the open segment included (a quarter of
//! the bound at most, the size at which segments roll); an append that would pass it fails with
//! [`SpoolError::Full`] (the request gets 503). One process per directory.

mod cursor;
mod forward;
mod group;
mod segment;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};

use self::cursor::{Cursor, Pos};
pub use self::forward::Forwarding;
use self::group::Group;
use self::segment::{Read, Reader};
use crate::receiver::event::CloudEvent;
use crate::receiver::metrics::Metrics;
use crate::receiver::sink::cloudevents::{self, HttpSink, SinkMode};

const LOCK_FILE: &str = "lock";
/// Segments roll at a quarter of the bound, and at this size at most.
const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Why the spool refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Accepting the batch would pass `--spool-max-bytes`.
    #[error("spool is full")]
    Full,
    /// The receiver is shutting down: the spool takes no more batches.
    #[error("spool is closed (shutting down)")]
    Closed,
    /// The batch encodes to more than one record may hold (a reader takes a longer one for
    /// damage).
    #[error("batch encodes to {0} bytes, more than a spool record holds")]
    TooLarge(u64),
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
    /// A write or fsync shared with this append failed, so its record may not be on disk.
    #[error("spool segment {0} could not be made durable")]
    NotDurable(PathBuf),
    /// The events could not be encoded.
    #[error("cannot encode events: {0}")]
    Encode(#[source] serde_json::Error),
    /// The blocking task running the I/O died.
    #[error("spool task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The forwarder's thread or its runtime could not be started.
    #[error("cannot start the spool forwarder: {0}")]
    Start(#[source] io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One segment file.
struct Seg {
    /// Bytes on disk (what the bound counts).
    bytes: u64,
    /// Bytes the forwarder may read: whole frames known to be durable.
    readable: u64,
}

/// The segment being appended to.
struct Writer {
    seq: u64,
    file: Arc<File>,
    /// End of the last whole frame written.
    written: u64,
    /// Frames written, and how many of them are durable (counted in the depth gauges).
    records: u64,
    synced_records: u64,
}

struct State {
    segments: BTreeMap<u64, Seg>,
    writer: Option<Writer>,
    next_seq: u64,
    /// First record not yet delivered (as committed to the cursor).
    read: Pos,
    /// The sync loop is running (it syncs without the lock).
    syncing: bool,
    /// Segments whose unsynced tail was lost to a failed write or fsync: appends waiting for it
    /// fail rather than be acknowledged.
    lost: BTreeSet<u64>,
    depth_records: i64,
    depth_bytes: i64,
}

impl State {
    fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// The open segment `seq` is durable up to `at` bytes, `records` frames.
    fn mark_durable(&mut self, seq: u64, at: u64, records: u64) {
        let Some(w) = self.writer.as_mut().filter(|w| w.seq == seq) else {
            return;
        };
        let Some(seg) = self.segments.get_mut(&seq) else {
            return;
        };
        if at > seg.readable {
            self.depth_bytes += (at - seg.readable) as i64;
            self.depth_records += records.saturating_sub(w.synced_records) as i64;
            seg.readable = at;
            w.synced_records = records;
        }
    }

    /// Stops appending to the open segment, first making what was written to it durable (or
    /// marking it lost, failing the appends that wait for it).
    fn close_writer(&mut self) {
        let Some(w) = &self.writer else {
            return;
        };
        let (seq, written, records) = (w.seq, w.written, w.records);
        if self
            .segments
            .get(&seq)
            .is_some_and(|s| s.readable < written)
        {
            match w.file.sync_data() {
                Ok(()) => self.mark_durable(seq, written, records),
                Err(e) => {
                    tracing::error!(segment = seq, error = %e, "cannot sync spool segment");
                    self.lost.insert(seq);
                }
            }
        }
        self.writer = None;
    }
}

/// Where a frame ends: segment `seq`, `end` bytes in.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Frame {
    seq: u64,
    end: u64,
}

/// Where the syncs stand, as the appenders waiting for one see it.
#[derive(Clone, Copy, Debug, Default)]
struct Synced {
    /// The open segment's durable watermark after the last successful sync.
    durable: Frame,
    /// The sync loop is running.
    running: bool,
}

/// Where an appended frame stands.
enum Commit {
    /// Durable: the batch may be acknowledged.
    Durable,
    /// Not yet: wait on `synced` until it [decides](Synced::decides) the frame, then settle
    /// again unless it covers it. `lead`: no loop was running, so this appender starts one
    /// ([`Inner::settle_leading`]).
    Pending {
        synced: watch::Receiver<Synced>,
        lead: bool,
    },
}

/// What the forwarder finds at a read position.
enum Next {
    /// Records to deliver.
    Group(Group),
    /// Nothing durable to read there yet.
    Idle,
    /// The segment ends there, but the group before it is not committed yet.
    Behind,
}

struct Inner {
    dir: PathBuf,
    /// Held for the life of the spool: the exclusive lock on `<dir>/lock`.
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Sent by the sync loop after each sync (also a failed one) and when it stops.
    synced: watch::Sender<Synced>,
    /// Taken after `state` when both are needed, never the other way round.
    cursor: Mutex<Cursor>,
    appended: Notify,
    /// Taken (asynchronously) for a frame's write, so appenders queue for the state lock
    /// without holding a thread.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Appends under way (see [`Spool::close`]).
    appending: watch::Sender<usize>,
    /// Set by [`Spool::close`]: appends are refused.
    closed: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Counts an append under way while it lives.
struct Appending<'a>(&'a Inner);

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.0.appending.send_modify(|n| *n -= 1);
    }
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
                let bytes = entry.metadata().map_err(io_err(&entry.path()))?.len();
                segments.insert(
                    seq,
                    Seg {
                        bytes,
                        readable: bytes,
                    },
                );
            }
        }
        let first = segments.keys().next().copied().unwrap_or(0);
        let cursor = Cursor::open(dir, Pos { seq: first, at: 0 }).map_err(io_err(dir))?;
        let read = cursor.pos();
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
            syncing: false,
            lost: BTreeSet::new(),
            depth_records: 0,
            depth_bytes: 0,
        };
        let spool = Self(Arc::new(Inner {
            dir: dir.to_owned(),
            _lock: lock,
            max_bytes,
            segment_bytes: (max_bytes / 4).clamp(1, MAX_SEGMENT_BYTES),
            state: Mutex::new(state),
            synced: watch::Sender::new(Synced::default()),
            cursor: Mutex::new(cursor),
            appended: Notify::new(),
            writing: Arc::default(),
            appending: watch::Sender::new(0),
            closed: AtomicBool::new(false),
            metrics,
        }));
        spool.0.recount()?;
        Ok(spool)
    }

    /// Refuses appends from now on ([`SpoolError::Closed`]) and waits until those under way
    /// have ended: after it, the spool holds everything it will ever acknowledge.
    pub async fn close(&self) {
        self.0.closed.store(true, Ordering::SeqCst);
        let _ = self.0.appending.subscribe().wait_for(|n| *n == 0).await;
    }

    /// Appends one batch. Returns once it is durable.
    pub async fn append(&self, events: &[CloudEvent]) -> Result<(), SpoolError> {
        self.0.appending.send_modify(|n| *n += 1);
        let _appending = Appending(&self.0);
        if self.0.closed.load(Ordering::SeqCst) {
            return Err(SpoolError::Closed);
        }
        let payload = cloudevents::encode_batch(events).map_err(SpoolError::Encode)?;
        let inner = self.0.clone();
        let turn = self.0.writing.clone().lock_owned().await;
        let (frame, mut commit) = blocking(move || {
            let frame = inner.write(&payload);
            drop(turn);
            let frame = frame?;
            Ok((frame, inner.settle_leading(frame)?))
        })
        .await?;
        while let Commit::Pending { mut synced, .. } = commit {
            // The sender lives as long as the spool.
            let _ = synced.wait_for(|s| s.decides(frame)).await;
            if synced.borrow().durable.covers(frame) {
                break;
            }
            let inner = self.0.clone();
            commit = blocking(move || inner.settle_leading(frame)).await?;
        }
        self.0.appended.notify_one();
        Ok(())
    }

    /// Starts draining the spool to `sink` on a thread of its own (see [`forward`]), as `state`
    /// says; the returned future ends once the forwarder has stopped.
    pub fn forward(
        self,
        sink: HttpSink,
        state: watch::Receiver<Forwarding>,
    ) -> Result<impl Future<Output = ()>, SpoolError> {
        forward::start(self, sink, state)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(SpoolError::Task)?
}

impl Frame {
    /// Whether a sync that reached `self` made `frame` durable.
    fn covers(self, frame: Frame) -> bool {
        self.seq == frame.seq && self.end >= frame.end
    }
}

impl Synced {
    /// Whether an appender waiting for `frame` can stop waiting: a sync covered it, or the
    /// loop stopped (short of it, after a failed sync), or the loop moved on to a later
    /// segment (rolling synced or lost the frame's segment under the lock). Then it settles
    /// again, unless covered.
    fn decides(self, frame: Frame) -> bool {
        self.durable.covers(frame) || !self.running || self.durable.seq > frame.seq
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every field is updated after
        // its I/O succeeded), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cursor(&self) -> MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `payload` as a frame of the open segment, not yet durable.
    fn write(&self, payload: &[u8]) -> Result<Frame, SpoolError> {
        if payload.len() as u64 > segment::MAX_PAYLOAD {
            return Err(SpoolError::TooLarge(payload.len() as u64));
        }
        let len = segment::HEADER_LEN + payload.len() as u64;
        let mut st = self.lock();
        if st.disk_bytes() + len > self.max_bytes {
            return Err(SpoolError::Full);
        }
        let w = self.writer(&mut st)?;
        let (seq, file) = (w.seq, w.file.clone());
        if let Err(e) = segment::append(&file, payload) {
            // The segment may now end in a partial frame: stop appending to it (the forwarder
            // reads whole durable frames only) and count what is on disk.
            let p = segment::path(&self.dir, seq);
            if let (Ok(m), Some(seg)) = (fs::metadata(&p), st.segments.get_mut(&seq)) {
                seg.bytes = m.len();
            }
            st.close_writer();
            self.publish(&st);
            return Err(io_err(&p)(e));
        }
        let end = {
            let w = st.writer.as_mut().ok_or(SpoolError::Full)?;
            w.written += len;
            w.records += 1;
            w.written
        };
        if let Some(seg) = st.segments.get_mut(&seq) {
            seg.bytes += len;
        }
        Ok(Frame { seq, end })
    }

    /// The open segment, rolling to a new one when there is none or it is full.
    fn writer<'a>(&self, st: &'a mut State) -> Result<&'a Writer, SpoolError> {
        if st
            .writer
            .as_ref()
            .is_some_and(|w| w.written >= self.segment_bytes)
        {
            st.close_writer();
            self.publish(st);
        }
        if st.writer.is_none() {
            let seq = st.next_seq;
            // Used up even if this attempt fails: the next one must not trip over a file this
            // one left (`create_new`).
            st.next_seq = seq + 1;
            let p = segment::path(&self.dir, seq);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&p)
                .map_err(io_err(&p))?;
            // The new name must be durable before any record in it is acknowledged.
            if let Err(e) = sync_dir(&self.dir) {
                // Empty: a restart would find it and drop it as drained anyway.
                let _ = fs::remove_file(&p);
                return Err(e);
            }
            st.segments.insert(
                seq,
                Seg {
                    bytes: 0,
                    readable: 0,
                },
            );
            st.writer = Some(Writer {
                seq,
                file: Arc::new(file),
                written: 0,
                records: 0,
                synced_records: 0,
            });
        }
        st.writer.as_ref().ok_or(SpoolError::Full)
    }

    /// Whether `frame` is durable, and if not what to wait for.
    fn settle(&self, frame: Frame) -> Result<Commit, SpoolError> {
        let mut st = self.lock();
        let seq = frame.seq;
        if st
            .segments
            .get(&seq)
            .is_some_and(|s| s.readable >= frame.end)
        {
            return Ok(Commit::Durable);
        }
        if st.lost.contains(&seq) {
            return Err(SpoolError::NotDurable(segment::path(&self.dir, seq)));
        }
        if st.writer.as_ref().is_none_or(|w| w.seq != seq) {
            // Closed after a successful sync (else it would be lost), then delivered and deleted.
            return Ok(Commit::Durable);
        }
        let lead = !st.syncing;
        if lead {
            st.syncing = true;
            self.synced.send_modify(|s| s.running = true);
        }
        // Subscribed under the lock, so the loop cannot stop unseen before this waits.
        let synced = self.synced.subscribe();
        Ok(Commit::Pending { synced, lead })
    }

    /// [`settle`](Self::settle), starting the sync loop on a blocking thread of its own when this
    /// appender leads. Run on the appender's blocking thread, never in its future: that future
    /// is dropped when ENS hangs up, and a loop it was to start would never run, leaving every
    /// later append waiting for it.
    fn settle_leading(self: &Arc<Self>, frame: Frame) -> Result<Commit, SpoolError> {
        let commit = self.settle(frame)?;
        if let Commit::Pending { lead: true, .. } = commit {
            let inner = self.clone();
            tokio::task::spawn_blocking(move || inner.sync_loop());
        }
        Ok(commit)
    }

    /// Syncs the open segment until no written frame is left unsynced, publishing each
    /// watermark; run by the appender that found no loop running.
    fn sync_loop(&self) {
        let mut st = self.lock();
        loop {
            let unsynced = st.writer.as_ref().filter(|w| {
                st.segments
                    .get(&w.seq)
                    .is_some_and(|s| s.readable < w.written)
            });
            let Some(w) = unsynced else {
                st.syncing = false;
                self.synced.send_modify(|s| s.running = false);
                return;
            };
            let (seq, file, at, records) = (w.seq, w.file.clone(), w.written, w.records);
            drop(st);
            let result = file.sync_data();
            st = self.lock();
            self.after_sync(&mut st, Frame { seq, end: at }, records, result);
        }
    }

    /// Records the outcome of the loop's sync of the open segment up to `upto` (`records`
    /// records), taken with the lock released, and tells the waiting appenders.
    fn after_sync(&self, st: &mut State, upto: Frame, records: u64, result: io::Result<()>) {
        let seq = upto.seq;
        match result {
            // Meanwhile an appender may have rolled the segment, and the closing sync failed:
            // the error is reported to one fsync of the file only, so this Ok proves nothing.
            Ok(()) if st.lost.contains(&seq) => {
                self.synced.send_modify(|_| {});
            }
            Ok(()) => {
                st.mark_durable(seq, upto.end, records);
                self.synced.send_modify(|s| s.durable = upto);
                self.publish(st);
            }
            Err(e) => {
                // After a failed fsync the kernel may have dropped the dirty pages: nothing
                // written to this segment and not yet durable can be acknowledged.
                tracing::error!(segment = seq, error = %e, "cannot sync spool segment");
                st.lost.insert(seq);
                if st.writer.as_ref().is_some_and(|w| w.seq == seq) {
                    st.writer = None;
                }
                self.synced.send_modify(|_| {});
            }
        }
    }

    /// Reads the group at `from` (the committed position, or the end of a group in flight):
    /// whole durable records, in order, from one segment, up to `max_events` events or
    /// `max_bytes` bytes (at least one record, however large), in the form `mode` sends.
    /// Finishes drained segments and skips corrupt tails on the way, but only when `settled`
    /// (every group before `from` is committed): that moves the cursor past them.
    fn read_group(
        &self,
        mode: SinkMode,
        from: Pos,
        settled: bool,
        limits: (usize, u64),
    ) -> Result<Next, SpoolError> {
        let (max_events, max_bytes) = limits;
        loop {
            let (start, limit) = {
                let st = self.lock();
                let Some((&seq, seg)) = st.segments.range(from.seq.max(st.read.seq)..).next()
                else {
                    return Ok(Next::Idle);
                };
                let at = match seq {
                    s if s == from.seq => from.at,
                    s if s == st.read.seq => st.read.at,
                    _ => 0,
                };
                (Pos { seq, at }, seg.readable)
            };
            let p = segment::path(&self.dir, start.seq);
            let mut reader = Reader::open(&p, start.at, limit).map_err(io_err(&p))?;
            let mut group = Group::new(mode, start);
            loop {
                if group.is_full(max_events, max_bytes) {
                    return Ok(Next::Group(group));
                }
                let read = reader.next().map_err(io_err(&p))?;
                if group.records == 0 && !settled && !matches!(read, Read::Record { .. }) {
                    return Ok(Next::Behind);
                }
                match read {
                    Read::Record { payload, next } => {
                        match group.add(&payload, next, max_events, max_bytes) {
                            Ok(true) => {}
                            // It starts the next group.
                            Ok(false) => return Ok(Next::Group(group)),
                            Err(e) => {
                                // Checksummed but not ours to parse: nothing can ever deliver
                                // it, so it joins the group without events.
                                tracing::error!(error = %e, "skipping unreadable spool record");
                                self.metrics.spool_corrupt_records.inc();
                            }
                        }
                    }
                    Read::End | Read::Corrupt if group.records > 0 => {
                        // Deliver what was read first; the segment's end is handled next time.
                        return Ok(Next::Group(group));
                    }
                    Read::End => {
                        if !self.finish_segment(start.seq, true)? {
                            return Ok(Next::Idle);
                        }
                        break;
                    }
                    Read::Corrupt => {
                        tracing::warn!(
                            segment = start.seq,
                            at = start.at,
                            "skipping torn or damaged spool tail"
                        );
                        self.metrics.spool_corrupt_records.inc();
                        self.finish_segment(start.seq, false)?;
                        break;
                    }
                }
            }
        }
    }

    /// Moves past segment `seq` and deletes it; `true` if it did. With `at_end` (everything up to
    /// its durable end is delivered) the open segment is finished only when it is full and
    /// everything written to it is delivered: appending to it costs less than creating a new
    /// one for each record. Without, it is closed regardless (damaged).
    fn finish_segment(&self, seq: u64, at_end: bool) -> Result<bool, SpoolError> {
        let mut st = self.lock();
        if let Some(w) = st.writer.as_ref().filter(|w| w.seq == seq) {
            let drained = st.read == (Pos { seq, at: w.written });
            if at_end && !(drained && w.written >= self.segment_bytes) {
                return Ok(false);
            }
            st.close_writer();
            self.publish(&st);
        }
        let next = Pos {
            seq: seq + 1,
            at: 0,
        };
        // Durably past the segment before its file goes, so a restart never points into a
        // deleted segment whose number a new one could reuse.
        let mut cursor = self.cursor();
        cursor.commit(next).map_err(|e| io_err(cursor.path())(e))?;
        drop(cursor);
        st.read = next;
        st.segments.remove(&seq);
        let p = segment::path(&self.dir, seq);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Records that everything before `end` is delivered: one cursor write for the whole group,
    /// which a killed process cannot lose; [`Inner::sync_cursor`] makes it survive the machine.
    fn commit(&self, end: Pos, records: u64, bytes: u64) -> Result<(), SpoolError> {
        {
            let mut cursor = self.cursor();
            cursor.write(end).map_err(|e| io_err(cursor.path())(e))?;
        }
        let mut st = self.lock();
        st.read = end;
        st.depth_records = (st.depth_records - records as i64).max(0);
        st.depth_bytes = (st.depth_bytes - bytes as i64).max(0);
        self.publish(&st);
        Ok(())
    }

    /// Makes every cursor write so far durable, without holding the cursor meanwhile.
    fn sync_cursor(&self) -> Result<(), SpoolError> {
        let (file, path) = {
            let cursor = self.cursor();
            (cursor.file(), cursor.path().to_owned())
        };
        file.sync_data().map_err(io_err(&path))
    }

    /// Counts undelivered records from the read position (at startup).
    fn recount(&self) -> Result<(), SpoolError> {
        let mut st = self.lock();
        let (mut records, mut bytes) = (0i64, 0i64);
        for (&seq, seg) in st.segments.range(st.read.seq..) {
            let p = segment::path(&self.dir, seq);
            let mut at = if seq == st.read.seq { st.read.at } else { 0 };
            let mut reader = Reader::open(&p, at, seg.readable).map_err(io_err(&p))?;
            while let Read::Record { next, .. } = reader.next().map_err(io_err(&p))? {
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

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests;
