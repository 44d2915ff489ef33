//! The synchronous verification probe of callback create (`docs/ens-protocol.md` §3.1, §4): an
//! unsigned
//! `POST {callbackId, verificationKey}` that must answer exactly 200 within `--probe-timeout`,
//! and the `--resolve` host map that lets `https://` URLs reach a local plain-HTTP receiver.

use std::time::Duration;

use serde::Serialize;

use super::Shared;
use super::faults::Faults;
use super::state::CallbackRec;
use crate::ens::error::PROBE_FAILURE;

/// Why a probe failed, in the words of ENS's .NET status names.
#[derive(Debug)]
pub(super) struct ProbeFailure {
    status: &'static str,
    detail: String,
}

impl ProbeFailure {
    /// `Status: detail`, for the delivery log.
    pub(super) fn describe(&self) -> String {
        format!("{}: {}", self.status, self.detail)
    }

    /// ENS's reason string (§3.1).
    pub(super) fn message(&self, cb: &CallbackRec) -> String {
        format!(
            "{PROBE_FAILURE}: CallbackId is {}. Could not verify callback url `'{}'`. Please test \
             that the url is reachable with a https POST call and returns a 200 http status code. \
             To retry please delete the callback and create it again. Status: {}. {}",
            cb.id, cb.url, self.status, self.detail
        )
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProbeBody<'a> {
    callback_id: &'a str,
    verification_key: &'a str,
}

/// Where `https://host/path` really goes: `http://<--resolve address>/path`.
pub(super) fn target(shared: &Shared, url: &str) -> Result<String, ProbeFailure> {
    let parsed = url::Url::parse(url).map_err(|e| ProbeFailure {
        status: "UnknownError",
        detail: format!("Invalid URI: {e}"),
    })?;
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let addr = shared
        .config
        .resolve
        .iter()
        .find(|(h, _)| *h == host)
        .map(|(_, a)| *a)
        .ok_or_else(|| ProbeFailure {
            status: "NameResolutionFailure",
            detail: format!("The remote name could not be resolved: '{host}'"),
        })?;
    Ok(format!("http://{addr}{}", parsed.path()))
}

/// Sends the probe; `Ok` only for HTTP 200 within the timeout.
pub(super) async fn probe(shared: &Shared, cb: &CallbackRec) -> Result<(), ProbeFailure> {
    let target = target(shared, &cb.url)?;
    let timeout = shared.config.probe_timeout;
    if Faults::take(&mut shared.faults().drop_probes) {
        tokio::time::sleep(timeout.min(Duration::from_millis(50))).await;
        return Err(timed_out());
    }
    let body = ProbeBody {
        callback_id: &cb.id,
        verification_key: cb.verification_key.as_deref().unwrap_or_default(),
    };
    let sent = shared
        .http
        .post(target)
        .json(&body)
        .timeout(timeout)
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().as_u16() == 200 => Ok(()),
        Ok(resp) => Err(ProbeFailure {
            status: "ProtocolError",
            detail: format!(
                "The remote server returned an error: ({}) {}.",
                resp.status().as_u16(),
                resp.status().canonical_reason().unwrap_or("Unknown")
            ),
        }),
        Err(e) if e.is_timeout() => Err(timed_out()),
        Err(e) => Err(ProbeFailure {
            status: "ConnectFailure",
            detail: format!("Unable to connect to the remote server: {e}"),
        }),
    }
}

fn timed_out() -> ProbeFailure {
    ProbeFailure {
        status: "Timeout",
        detail: "The operation has timed out.".into(),
    }
}
