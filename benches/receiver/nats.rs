//! The bench's `nats-server` (`ENS_BENCH_NATS_SERVER`, which scripts/bench.sh sets to the one
//! scripts/build-tools.sh builds): on 127.0.0.1, a random port, a file store in the work
//! directory, and a stream `ENS` taking `ens.>`, bounded in bytes (oldest dropped) so a long
//! run cannot fill the disk. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use async_nats::jetstream::{self, stream};

/// Bytes the stream keeps (older messages are dropped to stay under it).
const STREAM_MAX_BYTES: i64 = 2 << 30;

pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
}

impl NatsServer {
    pub async fn start(work: &Path) -> Self {
        let bin = std::env::var_os("ENS_BENCH_NATS_SERVER").expect(
            "the JetStream target needs ENS_BENCH_NATS_SERVER (scripts/bench.sh sets it after \
             scripts/build-tools.sh nats), or leave jetstream out of --targets",
        );
        let dir = work.join("nats");
        std::fs::create_dir_all(&dir).expect("nats dir");
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:-1\"\njetstream {{ store_dir: {:?} }}\n",
                dir.join("store").display().to_string()
            ),
        )
        .expect("nats.conf");
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut port = None;
        for line in lines.by_ref() {
            let line = line.expect("nats-server log");
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                port = rest
                    .trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok());
            }
            if line.contains("Server is ready") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let url = format!("nats://127.0.0.1:{}", port.expect("nats-server's port"));
        let js = jetstream::new(async_nats::connect(&url).await.expect("bench NATS client"));
        js.create_stream(stream::Config {
            name: "ENS".into(),
            subjects: vec!["ens.>".into()],
            storage: stream::StorageType::File,
            max_bytes: STREAM_MAX_BYTES,
            ..Default::default()
        })
        .await
        .expect("create the stream");
        Self { child, url }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
