//! ENS events as CloudEvents: parsing a notification batch tolerantly
//! (`docs/ens-protocol.md` §5.3, §9.2) and giving each event a deterministic id, type, source and
//! time.
//!
//! Pure: no I/O.
//!
//! The id is the hex SHA-256 of the event's canonical JSON ([`crate::receiver::canonical`]), not
//! of its raw bytes: ENS may re-send an event in another batch or with different formatting, and
//! the canonical form makes those copies share one id, so the receiver and anyone downstream can
//! drop them. The event itself is forwarded byte for byte as received.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::receiver::canonical::event_id;
use crate::receiver::canonical::{Node, Text, hex_digest, write_fields};

/// Prefix of every CloudEvent `type`: `<prefix>.<eventCategoryType>`.
pub const TYPE_PREFIX: &str = "com.salesforce.marketingcloud.ens";
/// The `type` suffix for events that carry neither `eventCategoryType` nor `EventType`.
pub const UNKNOWN_TYPE: &str = "Unknown";

/// One ENS event as a CloudEvent (structured JSON form, spec 1.0). `data` is the event's raw JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `"1.0"`.
    pub specversion: String,
    /// Hex SHA-256 of the event's canonical JSON.
    pub id: String,
    /// `com.salesforce.marketingcloud.ens.<eventCategoryType>`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The callback route (URL path) the event arrived on.
    pub source: String,
    /// RFC 3339 time from `timestampUTC` (epoch milliseconds), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The event exactly as ENS sent it.
    pub data: Box<RawValue>,
}

/// Why a body is not a notification batch.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("body is not JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// JSON, but not an array.
    #[error("a notification batch must be a JSON array")]
    NotArray,
    /// An element of the array is not an object.
    #[error("event {0} is not a JSON object")]
    NotObject(usize),
}

/// Parses a notification batch into CloudEvents for `source`. Unknown fields and event types pass.
pub fn parse_batch(body: &[u8], source: &str) -> Result<Vec<CloudEvent>, ParseError> {
    // One validating pass splits the array into raw elements (borrowed); each element is then
    // parsed once into a borrowed tree for its attributes and canonical id, and copied once as
    // the CloudEvent's data.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => ParseError::NotArray,
                Err(e) => ParseError::Json(e),
            },
        );
    }
    let raws: Vec<&RawValue> = serde_json::from_slice(body).map_err(ParseError::Json)?;
    let mut canonical = Vec::new();
    raws.into_iter()
        .enumerate()
        .map(|(i, raw)| {
            if !raw.get().starts_with('{') {
                return Err(ParseError::NotObject(i));
            }
            match serde_json::from_str::<Node>(raw.get()).map_err(ParseError::Json)? {
                Node::Object(fields) => Ok(to_cloud_event(&fields, raw, source, &mut canonical)),
                _ => Err(ParseError::NotObject(i)),
            }
        })
        .collect()
}

fn to_cloud_event(
    fields: &[(Text<'_>, Node<'_>)],
    raw: &RawValue,
    source: &str,
    canonical: &mut Vec<u8>,
) -> CloudEvent {
    let field = |key: &str| {
        fields
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &fields[i].1)
    };
    let category = ["eventCategoryType", "EventType"]
        .iter()
        .find_map(|k| match field(k) {
            Some(Node::String(s)) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or(UNKNOWN_TYPE);
    let time = ["timestampUTC", "TimeStamp"]
        .iter()
        .find_map(|k| field(k).and_then(Node::epoch_millis))
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.to_string());
    canonical.clear();
    canonical.reserve(raw.get().len());
    write_fields(fields, canonical);
    CloudEvent {
        specversion: "1.0".to_owned(),
        id: hex_digest(canonical),
        ty: format!("{TYPE_PREFIX}.{category}"),
        source: source.to_owned(),
        time,
        datacontenttype: "application/json".to_owned(),
        data: raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"[{"eventCategoryType":"TransactionalSendEvents.EmailSent","timestampUTC":1600698608530,"mid":1447640,"eid":1447640,"info":{"status":"Sent"}},
      { "EventType": "EngagementEvents.OttDelivered", "MID": "1476456", "EID": "1476266", "TimeStamp": 1712000000000 },
      {"surprise":true}]"#;

    #[test]
    fn maps_types_times_and_keeps_raw_data() {
        let events = parse_batch(BODY.as_bytes(), "/ens/a").unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0].ty,
            "com.salesforce.marketingcloud.ens.TransactionalSendEvents.EmailSent"
        );
        assert_eq!(events[0].time.as_deref(), Some("2020-09-21T14:30:08.53Z"));
        assert_eq!(events[0].source, "/ens/a");
        assert_eq!(
            events[1].ty,
            "com.salesforce.marketingcloud.ens.EngagementEvents.OttDelivered"
        );
        assert!(events[1].time.is_some());
        assert_eq!(events[2].ty, "com.salesforce.marketingcloud.ens.Unknown");
        assert_eq!(events[2].time, None);
        assert!(events[1].data.get().starts_with("{ \"EventType\""));
    }

    #[test]
    fn ids_survive_reformatting_but_not_changes() {
        let a = parse_batch(br#"[{"b":1,"a":{"y":"\u0041","x":[1,2]}}]"#, "/r").unwrap();
        let b = parse_batch(
            b"[ {\"a\": {\"x\": [1, 2], \"y\": \"A\"}, \"b\": 1} ]",
            "/r",
        )
        .unwrap();
        let c = parse_batch(br#"[{"b":2,"a":{"y":"A","x":[1,2]}}]"#, "/r").unwrap();
        assert_eq!(a[0].id, b[0].id);
        assert_ne!(a[0].id, c[0].id);
        assert_eq!(a[0].id.len(), 64);
    }

    #[test]
    fn rejects_what_is_not_a_batch() {
        assert!(matches!(parse_batch(b"{", "/r"), Err(ParseError::Json(_))));
        assert!(matches!(
            parse_batch(b"{\"a\":1}", "/r"),
            Err(ParseError::NotArray)
        ));
        assert!(matches!(
            parse_batch(b"[{},1]", "/r"),
            Err(ParseError::NotObject(1))
        ));
        assert!(parse_batch(b"[]", "/r").unwrap().is_empty());
    }

    /// Ids are a contract with downstream dedupe: these were computed before the parse and
    /// canonical writer were optimised, and must never change.
    #[test]
    fn ids_and_cloud_events_are_pinned() {
        let body = br#"[{"eventCategoryType":"EngagementEvents.EmailClick","timestampUTC":1591407815000,"info":{"contentLink":"https://portal.example.com/x\u003d1\u0026y","location":{"latitude":"39.0438","city":"ASHBURN"},"tags":[1,-2.5,1e300,true,null,"\"q\"\\\n\u00e9"]},"mid":1476456,"z\u00e9":{},"a":[]},{"EventType":"EngagementEvents.OttDelivered","MID":"1476456","TimeStamp":1712000000000,"big":18446744073709551615,"neg":-9223372036854775808,"f":0.1}]"#;
        let events = parse_batch(body, "/r").unwrap();
        let json: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        assert_eq!(
            json[0],
            r#"{"specversion":"1.0","id":"243588f9d2f7f0e64c6c0eb635731632621b532e135165a8a9beeed6f6957f67","type":"com.salesforce.marketingcloud.ens.EngagementEvents.EmailClick","source":"/r","time":"2020-06-06T01:43:35Z","datacontenttype":"application/json","data":{"eventCategoryType":"EngagementEvents.EmailClick","timestampUTC":1591407815000,"info":{"contentLink":"https://portal.example.com/x\u003d1\u0026y","location":{"latitude":"39.0438","city":"ASHBURN"},"tags":[1,-2.5,1e300,true,null,"\"q\"\\\n\u00e9"]},"mid":1476456,"z\u00e9":{},"a":[]}}"#
        );
        assert_eq!(
            json[1],
            r#"{"specversion":"1.0","id":"ef0f82ed1db47f172f41736b98968a524d1e1332c01242e27248c7ced1ab7239","type":"com.salesforce.marketingcloud.ens.EngagementEvents.OttDelivered","source":"/r","time":"2024-04-01T19:33:20Z","datacontenttype":"application/json","data":{"EventType":"EngagementEvents.OttDelivered","MID":"1476456","TimeStamp":1712000000000,"big":18446744073709551615,"neg":-9223372036854775808,"f":0.1}}"#
        );
    }
}
