//! `--ack`: the acknowledgement time of one batch (1, 100, 1000 events) against a sink that
//! answers after an injected latency (0, 5, 20, 50 ms), for each hand-off mode: binary (one POST
//! per event), batched (one POST per batch) and the spool (fsync, forwarded batched). Batches are
//! sent one at a time, so each time is one batch's own hand-off; the first batch of each
//! receiver and latency is counted too (the in-flight limit starts low and adapts). Target: every
//! mode at most 500 ms at batch 1000 and 50 ms (issue 24). Tables, JSON and a plot into `--out`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming as HyperBody;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use super::support::plot::{Axis, Series, line_chart};
use super::support::{Mode, Opts, Proc, Table, dec, write};
use super::{Body, KEY, PATH, connect, event, post};

/// The hand-offs measured.
const MODES: [(&str, &[&str]); 3] = [
    ("binary", &["--sink-mode", "binary"]),
    ("batched", &["--sink-mode", "batched"]),
    ("spool", &["--sink-mode", "batched", "--spool-dir", "SPOOL"]),
];

/// One (mode, batch, latency) cell.
#[derive(Clone, Debug, serde::Serialize)]
struct Cell {
    mode: &'static str,
    batch: usize,
    latency_ms: u64,
    /// Acknowledgement times, milliseconds, in the order sent.
    ack_ms: Vec<f64>,
    /// Answers other than 200 (the budget ran out, or the sink failed).
    not_acknowledged: usize,
}

impl Cell {
    fn median(&self) -> f64 {
        let mut v = self.ack_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.ack_ms.iter().copied().fold(f64::NAN, f64::max)
    }
}

/// A sink that drains each request and answers 202 after the current latency.
async fn delayed_sink(listener: TcpListener, latency_ms: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let latency = latency_ms.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<HyperBody>| {
                let latency = latency.clone();
                async move {
                    let _ = req.into_body().collect().await?;
                    let ms = latency.load(Ordering::Relaxed);
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .status(StatusCode::ACCEPTED)
                            .body(Full::new(Bytes::new()))
                            .expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn body(batch: usize, serial: &mut u64) -> Body {
    let key = ens_operator::ens::signing::SignatureKey::new(KEY);
    let mut s = String::with_capacity(batch * 640);
    s.push('[');
    for i in 0..batch {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&event(*serial));
        *serial += 1;
    }
    s.push(']');
    let sig = ens_operator::ens::signing::sign(
        &key,
        ens_operator::ens::signing::KeyMode::Decoded,
        s.as_bytes(),
    )
    .expect("sign");
    Body {
        header: hyper::header::HeaderValue::from_str(&sig).expect("header"),
        sig,
        bytes: Bytes::from(s),
        events: batch,
    }
}

/// Runs the `--ack` benchmark.
pub fn run(opts: &Opts, work: &Path, key_file: &Path) {
    let short = opts.mode == Mode::Short;
    let batches = opts.list("batches", &[1usize, 100, 1000]);
    let latencies = opts.list("latencies", &[0u64, 5, 20, 50]);
    let repeats: usize = opts.value("repeats", if short { 3 } else { 9 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let latency = Arc::new(AtomicU64::new(0));
    let sink_url = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        tokio::spawn(delayed_sink(listener, latency.clone()));
        url
    });
    let mut cells = Vec::new();
    let mut serial = 10_000_000_000u64;
    for (mode, flags) in MODES {
        for &ms in &latencies {
            latency.store(ms, Ordering::Relaxed);
            // A fresh receiver per latency: its first batch meets the in-flight limit's start.
            let spool = work.join(format!("ack-spool-{mode}-{ms}"));
            let mut args: Vec<String> = [
                "receiver",
                "--listen",
                "127.0.0.1:0",
                "--route",
                &format!("{PATH}={}", key_file.display()),
                "--sink",
                &sink_url,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(flags.iter().map(|f| {
                if *f == "SPOOL" {
                    spool.display().to_string()
                } else {
                    f.to_string()
                }
            }));
            let log = work.join(format!("ack-{mode}-{ms}.log"));
            let rx = Proc::ens_operator("receiver", &args, &[], &log, true);
            let addr = rx
                .url
                .trim_start_matches("http://")
                .parse()
                .expect("receiver address");
            for &batch in &batches {
                let bodies: Vec<Body> = (0..repeats).map(|_| body(batch, &mut serial)).collect();
                let cell = rt.block_on(async {
                    let mut sender = connect(addr).await;
                    let mut cell = Cell {
                        mode,
                        batch,
                        latency_ms: ms,
                        ack_ms: Vec::new(),
                        not_acknowledged: 0,
                    };
                    for b in &bodies {
                        let t = Instant::now();
                        let ok = post(&mut sender, "receiver", b).await.is_ok();
                        cell.ack_ms.push(t.elapsed().as_secs_f64() * 1e3);
                        if !ok {
                            cell.not_acknowledged += 1;
                            sender = connect(addr).await;
                        }
                    }
                    cell
                });
                eprintln!(
                    "ack {mode:8} batch {batch:5} sink {ms:3} ms: median {:.1} ms, max {:.1} ms, {} not acknowledged",
                    cell.median(),
                    cell.max(),
                    cell.not_acknowledged
                );
                cells.push(cell);
            }
            drop(rx);
            let _ = std::fs::remove_dir_all(&spool);
        }
    }
    report(&opts.out, &cells, &latencies, &batches, repeats);
}

fn report(out: &Path, cells: &[Cell], latencies: &[u64], batches: &[usize], repeats: usize) {
    let mut md = format!(
        "## Acknowledgement time against sink latency\n\n\
         One signed batch at a time, {repeats} per cell, a fresh receiver per mode and latency \
         (defaults: `--sink-max-in-flight 256`, `--ack-budget-ms 1500`). Median ms (max ms); \
         `n/a` counts answers other than 200.\n\n"
    );
    let mut header = vec!["mode".to_owned(), "batch".to_owned()];
    header.extend(latencies.iter().map(|l| format!("sink {l} ms")));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header);
    for (mode, _) in MODES {
        for &batch in batches {
            let mut row = vec![mode.to_owned(), batch.to_string()];
            for &l in latencies {
                let cell = cells
                    .iter()
                    .find(|c| c.mode == mode && c.batch == batch && c.latency_ms == l);
                row.push(cell.map_or("-".into(), |c| {
                    let mut s = format!("{} ({})", dec(c.median(), 1), dec(c.max(), 1));
                    if c.not_acknowledged > 0 {
                        s.push_str(&format!(", {} n/a", c.not_acknowledged));
                    }
                    s
                }));
            }
            table.row(row);
        }
    }
    md.push_str(&table.markdown());
    let worst = cells
        .iter()
        .filter(|c| c.batch == 1000 && c.latency_ms == 50)
        .map(|c| (c.mode, c.max()))
        .collect::<Vec<_>>();
    if !worst.is_empty() {
        md.push_str("\nAt batch 1000 and 50 ms (target ≤ 500 ms): ");
        let parts: Vec<String> = worst
            .iter()
            .map(|(m, v)| format!("{m} max {} ms", dec(*v, 1)))
            .collect();
        md.push_str(&parts.join(", "));
        md.push_str(".\n");
    }
    println!("\n{md}");
    write(out, "receiver_ack.md", &md);
    write(
        out,
        "receiver_ack.json",
        &serde_json::to_string_pretty(&json!({ "repeats": repeats, "cells": cells }))
            .expect("json"),
    );
    let mut series = Vec::new();
    for (i, (mode, _)) in MODES.iter().enumerate() {
        for &batch in batches.iter().filter(|&&b| b >= 100) {
            let points: Vec<(f64, f64)> = latencies
                .iter()
                .filter_map(|&l| {
                    cells
                        .iter()
                        .find(|c| c.mode == *mode && c.batch == batch && c.latency_ms == l)
                        .map(|c| (l as f64, c.median()))
                })
                .collect();
            let colour = i * 2 + usize::from(batch == 1000);
            series.push(Series::new(format!("{mode}, batch {batch}"), points).colour(colour));
        }
    }
    line_chart(
        &out.join("receiver_ack.svg"),
        "Acknowledgement time against sink latency (median)",
        &Axis::linear("sink latency, ms"),
        &Axis::linear("acknowledgement, ms"),
        &series,
    );
}
