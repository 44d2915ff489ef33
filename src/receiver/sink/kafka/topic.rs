//! The topic each event is produced to: `--kafka-topic`, a template with the placeholders
//! `{route}` and `{type}` (docs/receiver.md, "Kafka hand-off").
//!
//! `{route}` is the route's path with its `/`-separated segments joined by `.`
//! (`/ens/tenant-a` → `ens.tenant-a`); `{type}` is the event's category type, the CloudEvent type
//! without its `com.salesforce.marketingcloud.ens.` prefix (`EngagementEvents.EmailOpen`).
//! Characters a topic name may not hold (anything but ASCII letters, digits, `.`, `_` and `-`)
//! become `_`, and an empty segment becomes `_`, so every event has a valid topic. A rendered
//! name longer than Kafka's 249 characters is refused by the broker for that event only.

use crate::receiver::sink::template::{Naming, Template};

/// Kafka's longest topic name.
const MAX_LEN: usize = 249;

/// Kafka topics: ASCII letters, digits, `.`, `_` and `-`; at most 249; not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kafka;

impl Naming for Kafka {
    const FLAG: &'static str = "--kafka-topic";
    const RULE: &'static str =
        "Kafka topic (ASCII letters, digits, '.', '_', '-'; at most 249; not . or ..)";

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    }

    fn valid(topic: &str) -> bool {
        topic.chars().all(Self::allowed)
            && topic.len() <= MAX_LEN
            && !matches!(topic, "" | "." | "..")
    }
}

/// A parsed `--kafka-topic`.
pub type TopicTemplate = Template<Kafka>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::sink::template::TemplateError;

    const TY: &str = "com.salesforce.marketingcloud.ens.EngagementEvents.EmailOpen";

    #[test]
    fn placeholders_render_valid_names() {
        let t = TopicTemplate::parse("ens.{route}").unwrap();
        assert_eq!(t.render("/ens/tenant-a", TY), "ens.ens.tenant-a");
        assert_eq!(t.render("/", TY), "ens._");
        assert_eq!(t.render("/a b/c:d/\u{e9}", TY), "ens.a_b.c_d._");
        let t = TopicTemplate::parse("events-{type}").unwrap();
        assert_eq!(t.render("/hooks", TY), "events-EngagementEvents.EmailOpen");
        assert_eq!(t.render("/hooks", "Odd Type"), "events-Odd_Type");
        assert_eq!(
            TopicTemplate::parse("fixed_topic")
                .unwrap()
                .render("/x", TY),
            "fixed_topic"
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(matches!(
            TopicTemplate::parse("ens.{tenant}"),
            Err(TemplateError::Unknown { name, .. }) if name == "tenant"
        ));
        assert!(matches!(
            TopicTemplate::parse("ens.{route"),
            Err(TemplateError::Unclosed { .. })
        ));
        let long = "x".repeat(250);
        for bad in [
            "ens/{route}",
            "a b",
            "",
            ".",
            "..",
            "caf\u{e9}",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    TopicTemplate::parse(bad),
                    Err(TemplateError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }
}
