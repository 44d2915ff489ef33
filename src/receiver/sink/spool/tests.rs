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

/// The tag of each event, in order.
fn tags(events: &[CloudEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.ty.rsplit('.').next().unwrap().to_owned())
        .collect()
}

fn read(spool: &Spool) -> Option<Group> {
    spool.0.read_group(usize::MAX, u64::MAX).unwrap()
}

/// Delivers (reads and commits) one group, returning the tags of its events.
fn drain_group(spool: &Spool, max_events: usize) -> Option<Vec<String>> {
    let g = spool.0.read_group(max_events, u64::MAX).unwrap()?;
    spool.0.commit(g.end, g.records, g.bytes).unwrap();
    Some(tags(&g.events))
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
        spool.0.append(&record(tag, 3)).unwrap();
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
        spool.0.append(&record(tag, 3)).unwrap();
    }
    spool.0.append(&record("big", 10)).unwrap();
    spool.0.append(&record("e", 1)).unwrap();
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

    // The byte bound: one record's frame is just over 1 KiB here.
    let frame = segment::encode(&record("f", 3)).len() as u64;
    for _ in 0..3 {
        spool.0.append(&record("f", 3)).unwrap();
    }
    let g = spool
        .0
        .read_group(usize::MAX, 2 * frame + 1)
        .unwrap()
        .unwrap();
    assert_eq!((g.records, g.bytes), (2, 2 * frame));
}

#[test]
fn a_group_not_committed_before_a_crash_is_read_again() {
    let dir = temp("redeliver");
    let metrics = Arc::new(Metrics::new());
    let spool = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
    for tag in ["a", "b"] {
        spool.0.append(&record(tag, 2)).unwrap();
    }
    let first = read(&spool).unwrap();
    // The sink took it; the process dies before the commit.
    drop(first);
    drop(spool);
    let spool = Spool::open(&dir, 1 << 20, metrics.clone()).unwrap();
    assert_eq!(metrics.spool_depth_records.get(), 2);
    let again = read(&spool).unwrap();
    assert_eq!(tags(&again.events), ["a", "a", "b", "b"]);
    spool
        .0
        .commit(again.end, again.records, again.bytes)
        .unwrap();
    drop(again);
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
                    spool.0.append(&record(&format!("t{t}x{k}"), 1)).unwrap();
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
fn the_forwarder_reads_only_what_is_durable() {
    let dir = temp("watermark");
    let spool = Spool::open(&dir, 1 << 20, Arc::new(Metrics::new())).unwrap();
    spool.0.append(&record("a", 1)).unwrap();
    // A frame written but not yet synced, as between an appender's write and its leader's
    // fsync.
    {
        let mut st = spool.0.lock();
        let frame = segment::encode(&record("b", 1));
        let w = st.writer.as_mut().unwrap();
        (&*w.file).write_all(&frame).unwrap();
        w.written += frame.len() as u64;
        w.records += 1;
        let seq = w.seq;
        st.segments.get_mut(&seq).unwrap().bytes += frame.len() as u64;
    }
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["a"]);
    assert!(read(&spool).is_none(), "b is not durable yet");
    // The next append's sync covers b too.
    spool.0.append(&record("c", 1)).unwrap();
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["b", "c"]);
}

#[test]
fn resumes_after_reopen_and_deletes_drained_segments() {
    let dir = temp("resume");
    let metrics = Arc::new(Metrics::new());
    // Segments roll at a quarter of the bound: two records each here.
    let frame = segment::encode(&record("t1", 1)).len() as u64;
    let open = || Spool::open(&dir, 8 * frame, metrics.clone()).unwrap();
    let spool = open();
    for tag in ["t1", "t2", "t3"] {
        spool.0.append(&record(tag, 1)).unwrap();
    }
    assert_eq!(drain_group(&spool, 1).unwrap(), ["t1"]);
    drop(spool);

    let spool = open();
    assert_eq!(metrics.spool_depth_records.get(), 2);
    spool.0.append(&record("t4", 1)).unwrap();
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
    spool.0.append(&record("t5", 1)).unwrap();
    assert_eq!(drain_group(&spool, 5000).unwrap(), ["t5"]);
    assert!(drain_group(&spool, 5000).is_none());
    assert_eq!(
        segments(&dir),
        0,
        "the open segment goes once it is full and drained"
    );
    spool.0.append(&record("t6", 1)).unwrap();
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
    let frame = segment::encode(&payload).len() as u64;
    let spool = Spool::open(&dir, frame + frame / 2, Arc::new(Metrics::new())).unwrap();
    spool.0.append(&payload).unwrap();
    assert!(matches!(spool.0.append(&payload), Err(SpoolError::Full)));
    assert!(drain_group(&spool, 5000).is_some());
    assert!(drain_group(&spool, 5000).is_none());
    spool.0.append(&payload).unwrap();
}
