//! A real Apache Kafka broker for the Kafka hand-off tests and bench: one KRaft node (broker and
//! controller in one JVM) run with the machine's `java` from the jars scripts/build-tools.sh
//! fetches from Maven Central (cached by version), listening on 127.0.0.1 only, its log
//! directory in the directory it is given (removed on drop), and stopped by PID (SIGKILL,
//! reaped) on `kill` and on drop. Topics are not created automatically: tests create them with the admin client.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

/// A fixed cluster id (any 16 bytes, base64url): every broker here is a cluster of its own.
const CLUSTER_ID: &str = "ZW5zLW9wZXJhdG9yLWthZg";

/// The broker's jar directory: `ENS_TEST_KAFKA_LIBS`, else where scripts/build-tools.sh puts the
/// version scripts/lib.sh names.
pub fn kafka_libs() -> PathBuf {
    if let Some(p) = std::env::var_os("ENS_TEST_KAFKA_LIBS") {
        return p.into();
    }
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib.sh"))
        .expect("scripts/lib.sh");
    let version = lib
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION=${KAFKA_VERSION:-"))
        .and_then(|rest| rest.strip_suffix('}'))
        .expect("KAFKA_VERSION in scripts/lib.sh");
    let cache = std::env::var("ENS_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/ens-operator",
            std::env::var("HOME").expect("HOME")
        )
    });
    let libs = PathBuf::from(format!("{cache}/kafka-{version}/libs"));
    assert!(
        libs.join(format!("kafka_2.13-{version}.jar")).is_file(),
        "{} is missing: run scripts/build-tools.sh kafka",
        libs.display()
    );
    libs
}

/// A free TCP port on 127.0.0.1 (released at once; the broker binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One single-node KRaft cluster.
pub struct KafkaBroker {
    child: Option<Child>,
    dir: PathBuf,
    /// `127.0.0.1:PORT` of the client listener (kept across restarts), for `bootstrap.servers`.
    pub bootstrap: String,
}

impl KafkaBroker {
    /// Formats a fresh log directory under `dir` and starts the broker on free ports.
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("broker dir");
        let (port, controller) = (free_port(), free_port());
        let props = dir.join("server.properties");
        std::fs::write(
            &props,
            format!(
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 controller.listener.names=CONTROLLER\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                 log.dirs={}\n\
                 auto.create.topics.enable=false\n\
                 num.partitions=1\n\
                 offsets.topic.replication.factor=1\n\
                 offsets.topic.num.partitions=1\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n",
                dir.join("data").display()
            ),
        )
        .expect("server.properties");
        std::fs::write(
            dir.join("log4j2.properties"),
            "appender.out.type=Console\nappender.out.name=out\n\
             appender.out.layout.type=PatternLayout\nappender.out.layout.pattern=%p %c %m%n\n\
             rootLogger.level=warn\nrootLogger.appenderRef.out.ref=out\n\
             logger.started.name=kafka.server.KafkaRaftServer\nlogger.started.level=info\n",
        )
        .expect("log4j2.properties");
        let out = java(dir)
            .args(["kafka.tools.StorageTool", "format", "--ignore-formatted"])
            .args(["--cluster-id", CLUSTER_ID, "--config"])
            .arg(&props)
            .stdin(Stdio::null())
            .output()
            .expect("run kafka-storage format");
        assert!(
            out.status.success(),
            "kafka-storage format failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut broker = Self {
            child: None,
            dir: dir.to_owned(),
            bootstrap: format!("127.0.0.1:{port}"),
        };
        broker.launch();
        broker
    }

    /// Starts the JVM and waits for `Kafka Server started`.
    fn launch(&mut self) {
        let mut child = java(&self.dir)
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the Kafka broker (java)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Keeps draining once the reader is gone, so the broker never blocks on a pipe.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("Kafka Server started") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the Kafka broker did not start: {}", seen.join("\n"));
                }
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill the Kafka broker");
            c.wait().expect("reap the Kafka broker");
        }
    }

    /// Starts it again on the same ports and log directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.launch();
    }

    /// Creates `topic` (one partition) with `configs`, retrying while the broker is still
    /// joining its own cluster.
    pub async fn create_topic(&self, topic: &str, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
            for (k, v) in configs {
                new = new.set(k, v);
            }
            let result = admin
                .create_topics(
                    [&new],
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                )
                .await
                .expect("create_topics")
                .remove(0);
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return,
                Err((_, code)) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot create topic {topic}: {code}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `java -cp LIBS/* …` with a small heap, logging as `dir/log4j2.properties` says.
fn java(dir: &Path) -> Command {
    let java = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|j| j.is_file())
        .unwrap_or_else(|| "java".into());
    let mut cmd = Command::new(java);
    cmd.args([
        "-Xms128m",
        "-Xmx768m",
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
    ])
    .arg(format!(
        "-Dlog4j2.configurationFile={}",
        dir.join("log4j2.properties").display()
    ))
    .arg("-cp")
    .arg(format!("{}/*", kafka_libs().display()));
    cmd
}
