//! The verification probe (`docs/ens-protocol.md` §4): recognising `{callbackId, verificationKey}`
//! and handing it to whoever calls `ens-verify`.
//!
//! The probe is answered 200 only after the hand-off succeeded, so a lost key shows up as a
//! failed ENS create instead of a silently unverifiable callback. The hand-off is bounded by
//! [`HANDOFF_TIMEOUT`] (ENS waits 30 s); it normally takes milliseconds. Standalone, the probe is
//! printed to stdout as one JSON line and, with `--probe-dir`, written to
//! `<dir>/<callbackId>.json` (fsync'd). In a cluster it is server-side applied to the Secret
//! `<route secret>-probe` that the controller reads (docs/design.md §3 step 4).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::receiver::cluster::ProbeWriter;

/// Longest a probe answer waits for its hand-off before answering 503.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

/// A captured probe. `Debug` hides the verification key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The ENS `callbackId` being verified.
    #[serde(rename = "callbackId")]
    pub callback_id: String,
    /// The single-use key to pass to `ens-verify`. Never log it.
    #[serde(rename = "verificationKey")]
    pub verification_key: String,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("callback_id", &self.callback_id)
            .field("verification_key", &"***")
            .finish()
    }
}

impl Probe {
    /// The probe in `body`, if the body is a JSON object with string `callbackId` and
    /// `verificationKey` (extra fields allowed). Arrays and anything else are not probes.
    pub fn parse(body: &[u8]) -> Option<Self> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(body).ok()
    }
}

/// What a person reads from stdout or the probe file (standalone).
#[derive(Serialize)]
struct Printed<'a> {
    path: &'a str,
    #[serde(flatten)]
    probe: &'a Probe,
}

/// Why a probe could not be handed off.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Writing stdout or the probe file failed.
    #[error("cannot record the probe: {0}")]
    Io(#[source] std::io::Error),
    /// The API server refused the probe Secret.
    #[error("cannot write the probe Secret: {0}")]
    Kube(#[source] kube::Error),
    /// The route has no Secret to name the probe Secret after.
    #[error("route has no route Secret")]
    NoSecret,
    /// The hand-off took longer than [`HANDOFF_TIMEOUT`].
    #[error("probe hand-off timed out")]
    Timeout,
    /// The blocking writer died.
    #[error("probe writer failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Where probes go.
#[derive(Clone)]
pub enum ProbeSink {
    /// Print to stdout, and write into a directory when given.
    Standalone {
        /// `--probe-dir`.
        dir: Option<PathBuf>,
    },
    /// Apply the `-probe` Secret in the receiver's namespace.
    Cluster(Box<ProbeWriter>),
}

impl ProbeSink {
    /// Hands `probe`, received on route `path` (route Secret `secret`), off; bounded in time.
    pub async fn hand_off(
        &self,
        path: &str,
        secret: Option<&crate::receiver::routes::SecretRef>,
        probe: &Probe,
    ) -> Result<(), ProbeError> {
        let work = async {
            match self {
                Self::Standalone { dir } => {
                    let line = serde_json::to_string(&Printed { path, probe })
                        .map_err(|e| ProbeError::Io(e.into()))?;
                    let dir = dir.clone();
                    let id = probe.callback_id.clone();
                    tokio::task::spawn_blocking(move || write_standalone(&line, dir, &id))
                        .await
                        .map_err(ProbeError::Task)?
                        .map_err(ProbeError::Io)
                }
                Self::Cluster(writer) => {
                    let secret = secret.ok_or(ProbeError::NoSecret)?;
                    writer.write(secret, probe).await.map_err(ProbeError::Kube)
                }
            }
        };
        tokio::time::timeout(HANDOFF_TIMEOUT, work)
            .await
            .map_err(|_| ProbeError::Timeout)?
    }
}

fn write_standalone(line: &str, dir: Option<PathBuf>, callback_id: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = dir {
        std::fs::create_dir_all(&dir)?;
        let name: String = callback_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let tmp = dir.join(format!(".{name}.json.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{name}.json")))?;
        std::fs::File::open(&dir)?.sync_all()?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_probe_objects_only() {
        let p = Probe::parse(br#" {"callbackId":"cb","verificationKey":"vk","extra":1}"#).unwrap();
        assert_eq!(p.callback_id, "cb");
        assert!(Probe::parse(br#"[{"callbackId":"cb","verificationKey":"vk"}]"#).is_none());
        assert!(Probe::parse(br#"{"callbackId":"cb"}"#).is_none());
        assert!(Probe::parse(br#"{"callbackId":1,"verificationKey":"vk"}"#).is_none());
        assert!(!format!("{p:?}").contains("vk"));
    }
}
