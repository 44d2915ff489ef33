//! The spool's disk logic, without the sink: group commit, the durable watermark, groups and
//! their single commit, the bound, restarts.

use super::*;
use crate::receiver::event::parse_batch;

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

/// A record payload as `Spool::append` writes it: `n` events tagged `tag`.
fn record(tag: &str, n: usize) -> Vec<u8> {
    let body = format!(
        "[{}]",
        (0..n)
            .map(|i| format!(r#"{{"eventCategoryType":"T.{tag}","mid":{i}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    cloudevents::encode_batch(&parse_batch(body.as_bytes(), "/spool").unwrap()).unwrap()
}

/// Appends `payload` and returns once it is durable, as `Spool::append` does, on this thread.
fn append(spool: &Spool, payload: &[u8]) -> Result<(), SpoolError> {
    let frame = spool.0.write(payload)?;
    while let Commit::Pending { mut synced, lead } = spool.0.settle(frame)? {
        if lead {
            spool.0.sync_loop();
        } else {
            let until = synced.wait_for(|s| s.decides(frame));
            let _ = futures::executor::block_on(until);
        }
    }
    Ok(())
}

/// The tag of each event, in order, decoding a batched group's body.
fn tags(events: group::Outgoing) -> Vec<String> {
    let events = match events {
        group::Outgoing::Binary(events) => events,
        group::Outgoing::Batched(body) => serde_json::from_slice(&body.into_bytes()).unwrap(),
    };
    events
        .iter()
        .map(|e| e.ty.rsplit('.').next().unwrap().to_owned())
        .collect()
}

/// The next group at the committed position, as the forwarder reads it once settled.
fn group(spool: &Spool, mode: SinkMode, max_events: usize, max_bytes: u64) -> Option<Group> {
    let from = spool.0.lock().read;
    match spool
        .0
        .read_group(mode, from, true, (max_events, max_bytes))
        .unwrap()
    {
        Next::Group(g) => Some(g),
        Next::Idle => None,
        Next::Behind => panic!("settled, so never behind"),
    }
}

fn read(spool: &Spool) -> Option<Group> {
    group(spool, SinkMode::Binary, usize::MAX, u64::MAX)
}

/// Delivers (reads and commits) one group, returning the tags of its events.
fn drain_group(spool: &Spool, max_events: usize) -> Option<Vec<String>> {
    drain_as(spool, SinkMode::Binary, max_events)
}

fn drain_as(spool: &Spool, mode: SinkMode, max_events: usize) -> Option<Vec<String>> {
    let g = group(spool, mode, max_events, u64::MAX)?;
    spool.0.commit(g.end, g.records, g.bytes).unwrap();
    Some(tags(g.events))
}

fn commits(spool: &Spool) -> u64 {
    spool.0.cursor().generation()
}

#[test]
fn many_records_are_one_group_and_one_commit() {
    let dir = temp("group");
    let metrics = Arc::new(Metrics::new());
    let spool = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
    for tag in ["a", "b", "c", "d"] {
        append(&spool, &record(tag, 3)).unwrap();
    }
    assert_eq!(metrics.spool_depth_records.get(), 4);
    let before = commits(&spool);
    let got = drain_group(&spool, 5000).unwrap();
    assert_eq!(
        got,
        ["a", "a", "a", "b", "b", "b", "c", "c", "c", "d", "d", "d"]
    );
    assert_eq!(commits(&spool), before + 1, "one cursor commit per group");
    assert_eq!(metrics.spool_depth_records.get(), 0);
    assert_eq!(metrics.spool_depth_bytes.get(), 0);
    assert!(read(&spool).is_none());
}

#[test]
fn groups_are_bounded_but_hold_at_least_one_record() {
    let dir = temp("bounded");
    let spool = Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())).unwrap();
    for tag in ["a", "b", "c"] {
        append(&spool, &record(tag, 3)).unwrap();
    }
    append(&spool, &record("big", 10)).unwrap();
    append(&spool, &record("e", 1)).unwrap();
    assert_eq!(
        drain_group(&spool, 7).unwrap(),
        ["a", "a", "a", "b", "b", "b"]
    );
    assert_eq!(drain_group(&spool, 7).unwrap(), ["c", "c", "c"]);
    assert_eq!(
        drain_group(&spool, 7).unwrap(),
        ["big"; 10],
        "larger than the bound"
    );
    assert_eq!(drain_group(&spool, 7).unwrap(), ["e"]);
    assert!(drain_group(&spool, 7).is_none());

    // The byte bound.
    let frame = segment::HEADER_LEN + record("f", 3).len() as u64;
    for _ in 0..3 {
        append(&spool, &record("f", 3)).unwrap();
    }
    let g = group(&spool, SinkMode::Batched, usize::MAX, 2 * frame + 1).unwrap();
    assert_eq!((g.records, g.bytes), (2, 2 * frame));
}

#[test]
fn a_group_not_committed_before_a_crash_is_read_again() {
    let dir = temp("redeliver");
    let metrics = Arc::new(Metrics::new());
    let spool = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
    for tag in ["a", "b"] {
        append(&spool, &record(tag, 2)).unwrap();
    }
    let first = read(&spool).unwrap();
    // The sink took it; the process dies before the commit.
    drop(first);
    drop(spool);
    let spool = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
    assert_eq!(metrics.spool_depth_records.get(), 2);
    let again = read(&spool).unwrap();
    spool
        .0
        .commit(again.end, again.records, again.bytes)
        .unwrap();
    assert_eq!(tags(again.events), ["a", "a", "b", "b"]);
    drop(spool);
    let spool = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
    assert_eq!(metrics.spool_depth_records.get(), 0);
    assert!(read(&spool).is_none(), "committed: never sent again");
}

#[test]
fn concurrent_appends_are_all_durable_whole_and_in_order() {
    let dir = temp("concurrent");
    let metrics = Arc::new(Metrics::new());
    let spool = Spool::open(&dir, 1 << 30, metrics.clone()).unwrap();
    let (threads, each) = (8, 40);
    std::thread::scope(|s| {
        for t in 0..threads {
            let spool = spool.clone();
            s.spawn(move || {
                for k in 0..each {
                    append(&spool, &record(&format!("t{t}x{k}"), 1)).unwrap();
                }
            });
        }
    });
    assert_eq!(metrics.spool_depth_records.get(), threads * each);
    let mut got = Vec::new();
    while let Some(tags) = drain_group(&spool, 50) {
        got.extend(tags);
    }
    assert_eq!(got.len(), (threads * each) as usize);
    for t in 0..threads {
        let mine: Vec<&String> = got
            .iter()
            .filter(|g| g.starts_with(&format!("t{t}x")))
            .collect();
        let expected: Vec<String> = (0..each).map(|k| format!("t{t}x{k}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "thread {t}");
    }
    assert_eq!(metrics.spool_depth_records.get(), 0);
}

#[test]
fn appends_wait_for_the_sync_loop_and_one_sync_covers_them() {
    let dir = temp("pending");
    let spool = Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())).unwrap();
    append(&spool, &record("a", 1)).unwrap();
    // A sync loop is running: these wait for it.
    spool.0.lock().syncing = true;
    let pending = |tag| {
        let frame = spool.0.write(&record(tag, 1)).unwrap();
        match spool.0.settle(frame).unwrap() {
            Commit::Pending { synced, lead } => (frame, synced, lead),
            Commit::Durable => panic!("{tag}: durable before a sync"),
        }
    };
    let (b, mut b_synced, b_leads) = pending("b");
    let (c, _, c_leads) = pending("c");
    assert!(!b_leads && !c_leads && b.end < c.end);
    assert!(
        read(&spool).is_some_and(|g| g.records == 1),
        "b and c not durable"
    );
    // That loop stops short of them (as after a failed sync); c settles again and leads the
    // next one, whose one sync covers b too.
    spool.0.lock().syncing = false;
    let Commit::Pending { lead: true, .. } = spool.0.settle(c).unwrap() else {
        panic!("c must lead")
    };
    spool.0.sync_loop();
    assert!(b_synced.has_changed().unwrap());
    let seen = *b_synced.borrow_and_update();
    assert!(seen.durable.covers(b) && !seen.running);
    assert!(!spool.0.lock().syncing);
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["a", "b", "c"]);
}

/// ENS hanging up drops the handler, and with it an append future that may have just been
/// chosen to start the sync loop: the loop must start anyway, or every later append waits for
/// a loop that never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_dropped_midway_leaves_later_appends_unblocked() {
    use futures::FutureExt;
    let dir = temp("dropped");
    let spool = Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())).unwrap();
    let batch = |tag: &str| {
        parse_batch(
            format!(r#"[{{"eventCategoryType":"T.{tag}"}}]"#).as_bytes(),
            "/spool",
        )
        .unwrap()
    };
    let mut dropped = 0;
    for i in 0..20 {
        // Polled once (its write starts on a blocking thread), then dropped; on an idle machine
        // with a fast disk the write and its sync may even be done by the first poll.
        if spool
            .append(&batch(&format!("gone{i}")))
            .now_or_never()
            .is_none()
        {
            dropped += 1;
        }
        let kept = batch(&format!("kept{i}"));
        tokio::time::timeout(std::time::Duration::from_secs(10), spool.append(&kept))
            .await
            .unwrap_or_else(|_| panic!("append {i} waited for a sync loop that never started"))
            .unwrap();
    }
    assert!(dropped >= 5, "only {dropped} appends were dropped midway");
}

/// The loop syncs with the lock released; meanwhile an appender may roll the segment and the
/// closing sync fail. The loop's own Ok then proves nothing (Linux reports a write error to one
/// fsync of the file only): the appends it would have covered fail instead of being acknowledged.
#[test]
fn a_sync_that_succeeds_after_its_segment_was_lost_acknowledges_nothing() {
    let dir = temp("lost-meanwhile");
    let spool = Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())).unwrap();
    let frame = spool.0.write(&record("a", 1)).unwrap();
    let Commit::Pending { synced, lead: true } = spool.0.settle(frame).unwrap() else {
        panic!("the first append leads")
    };
    // What the loop takes before it unlocks to sync.
    let records = spool.0.lock().writer.as_ref().unwrap().records;
    // Meanwhile the segment is rolled and its closing sync fails.
    {
        let mut st = spool.0.lock();
        st.lost.insert(frame.seq);
        st.writer = None;
    }
    // Then the loop's sync returns Ok.
    spool
        .0
        .after_sync(&mut spool.0.lock(), frame, records, Ok(()));
    assert!(!synced.borrow().durable.covers(frame));
    assert!(matches!(
        spool.0.settle(frame),
        Err(SpoolError::NotDurable(_))
    ));
}

/// A segment whose creation failed halfway (its directory sync, after the file was made) must
/// not make every later append trip over the file it left.
#[test]
fn a_failed_segment_creation_does_not_block_later_appends() {
    let dir = temp("stray");
    let spool = Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())).unwrap();
    let next = spool.0.lock().next_seq;
    fs::write(segment::path(&dir, next), b"").unwrap();
    assert!(append(&spool, &record("a", 1)).is_err());
    append(&spool, &record("b", 1)).unwrap();
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["b"]);
}

/// A record longer than a reader accepts would be acknowledged, then skipped as damaged.
#[test]
fn a_batch_longer_than_a_record_holds_is_refused_not_written() {
    let dir = temp("too-large");
    let spool = Spool::open(&dir, u64::MAX / 4, Arc::new(Metrics::new())).unwrap();
    // Zeroed pages are only mapped, not touched.
    let payload = vec![0u8; segment::MAX_PAYLOAD as usize + 1];
    assert!(matches!(
        spool.0.write(&payload),
        Err(SpoolError::TooLarge(_))
    ));
    append(&spool, &record("a", 1)).unwrap();
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["a"]);
}

#[test]
fn waiting_ends_when_covered_when_the_loop_stops_or_moves_to_a_later_segment() {
    let frame = Frame { seq: 3, end: 100 };
    let at = |seq, end, running| Synced {
        durable: Frame { seq, end },
        running,
    };
    assert!(!at(3, 99, true).decides(frame));
    assert!(
        !at(2, 500, true).decides(frame),
        "an earlier segment's sync"
    );
    assert!(at(3, 100, true).decides(frame));
    assert!(
        at(3, 99, false).decides(frame),
        "stopped short: settle again"
    );
    assert!(at(4, 0, true).decides(frame), "rolled: settle again");
}

#[test]
fn the_forwarder_reads_only_what_is_durable() {
    let dir = temp("watermark");
    let spool = Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())).unwrap();
    append(&spool, &record("a", 1)).unwrap();
    // A frame written but not yet synced, as between an appender's write and its leader's
    // fsync.
    {
        let mut st = spool.0.lock();
        let w = st.writer.as_mut().unwrap();
        let frame = segment::append(&w.file, &record("b", 1)).unwrap();
        w.written += frame;
        w.records += 1;
        let seq = w.seq;
        st.segments.get_mut(&seq).unwrap().bytes += frame;
    }
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["a"]);
    assert!(read(&spool).is_none(), "b is not durable yet");
    // The next append's sync covers b too.
    append(&spool, &record("c", 1)).unwrap();
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["b", "c"]);
}

#[test]
fn resumes_after_reopen_and_deletes_drained_segments() {
    let dir = temp("resume");
    let metrics = Arc::new(Metrics::new());
    // Segments roll at a quarter of the bound: two records each here.
    let frame = segment::HEADER_LEN + record("t1", 1).len() as u64;
    let open = || Spool::open(&dir, 8 * frame, metrics.clone()).unwrap();
    let spool = open();
    for tag in ["t1", "t2", "t3"] {
        append(&spool, &record(tag, 1)).unwrap();
    }
    assert_eq!(drain_group(&spool, 1).unwrap(), ["t1"]);
    drop(spool);

    let spool = open();
    assert_eq!(metrics.spool_depth_records.get(), 2);
    append(&spool, &record("t4", 1)).unwrap();
    assert_eq!(
        segments(&dir),
        3,
        "a reopened spool appends to a new segment"
    );
    let mut rest = Vec::new();
    while let Some(tags) = drain_group(&spool, 5000) {
        rest.extend(tags);
    }
    assert_eq!(rest, ["t2", "t3", "t4"]);
    assert_eq!(metrics.spool_depth_records.get(), 0);
    assert_eq!(
        segments(&dir),
        1,
        "drained segments are deleted, but the open one"
    );
    append(&spool, &record("t5", 1)).unwrap();
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["t5"]);
    assert!(drain_group(&spool, 5000).is_none());
    assert_eq!(
        segments(&dir),
        0,
        "the open segment goes once it is full and drained"
    );
    append(&spool, &record("t6", 1)).unwrap();
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["t6"]);
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
    let payload = record("x", 1);
    let frame = segment::HEADER_LEN + payload.len() as u64;
    let spool = Spool::open(&dir, frame + frame / 2, Arc::new(Metrics::new())).unwrap();
    append(&spool, &payload).unwrap();
    assert!(matches!(append(&spool, &payload), Err(SpoolError::Full)));
    assert!(drain_group(&spool, 5000).is_some());
    assert!(drain_group(&spool, 5000).is_none());
    append(&spool, &payload).unwrap();
}

#[test]
fn an_unreadable_record_is_skipped_inside_its_group_and_counted_once() {
    let dir = temp("unreadable");
    let metrics = Arc::new(Metrics::new());
    let spool = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
    for mode in [SinkMode::Binary, SinkMode::Batched] {
        append(&spool, &record("a", 1)).unwrap();
        append(&spool, b"checksummed, but not a JSON array").unwrap();
        append(&spool, &record("b", 1)).unwrap();
        let before = metrics.spool_corrupt_records.get();
        let g = group(&spool, mode, 5000, u64::MAX).unwrap();
        assert_eq!(g.records, 3, "{mode:?}");
        spool.0.commit(g.end, g.records, g.bytes).unwrap();
        assert_eq!(tags(g.events), ["a", "b"], "{mode:?}");
        assert_eq!(metrics.spool_corrupt_records.get(), before + 1, "{mode:?}");
        assert_eq!(metrics.spool_depth_records.get(), 0);
    }
}

#[test]
fn reading_ahead_waits_for_commits_before_leaving_a_segment() {
    let dir = temp("ahead");
    let frame = segment::HEADER_LEN + record("t1", 1).len() as u64;
    // Segments roll at a quarter of the bound: two records each here.
    let spool = Spool::open(&dir, 8 * frame, Arc::new(Metrics::new())).unwrap();
    for tag in ["t1", "t2", "t3"] {
        append(&spool, &record(tag, 1)).unwrap();
    }
    let limits = (1, u64::MAX);
    let ahead = |from: Pos, settled: bool| match spool
        .0
        .read_group(SinkMode::Binary, from, settled, limits)
        .unwrap()
    {
        Next::Group(g) => Ok(g),
        Next::Idle => Err("idle"),
        Next::Behind => Err("behind"),
    };
    let committed = spool.0.lock().read;
    let first = ahead(committed, true).unwrap();
    // While the first group is in flight, the next one in the same segment can be read.
    let second = ahead(first.end, false).unwrap();
    assert_eq!(tags(ahead(first.end, false).unwrap().events), ["t2"]);
    // Past the segment's end is t3, but moving there commits the cursor past t1 and t2.
    assert_eq!(ahead(second.end, false).err(), Some("behind"));
    spool
        .0
        .commit(first.end, first.records, first.bytes)
        .unwrap();
    spool
        .0
        .commit(second.end, second.records, second.bytes)
        .unwrap();
    let third = ahead(second.end, true).unwrap();
    assert_eq!(tags(third.events), ["t3"]);
    assert_eq!(segments(&dir), 1, "the drained segment is deleted");
}
