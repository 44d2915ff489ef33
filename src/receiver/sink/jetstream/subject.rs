//! The subject each event is published on: `--nats-subject`, a template with the placeholders
//! `{route}` and `{type}` (docs/receiver.md, "JetStream hand-off").
//!
//! `{route}` is the route's path with its `/`-separated segments as subject tokens
//! (`/ens/tenant-a` → `ens.tenant-a`); `{type}` is the event's category type, the CloudEvent type
//! without its `com.salesforce.marketingcloud.ens.` prefix (`EngagementEvents.EmailOpen`, two
//! tokens). Characters a subject token may not hold (whitespace, `.` within a path segment, the
//! wildcards `*` and `>`) become `_`, and an empty token becomes `_`, so every event has a valid
//! subject and a route maps to one subject prefix.

use crate::receiver::sink::template::{Naming, Template};

/// NATS subjects: dot-separated non-empty tokens, no whitespace, no wildcards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nats;

impl Naming for Nats {
    const FLAG: &'static str = "--nats-subject";
    const RULE: &'static str =
        "NATS subject (dot-separated non-empty tokens, no whitespace, no * or >)";

    fn allowed(c: char) -> bool {
        !(c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
    }

    fn valid(subject: &str) -> bool {
        subject.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
        }) && !subject.contains(['*', '>'])
    }
}

/// A parsed `--nats-subject`.
pub type SubjectTemplate = Template<Nats>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::sink::template::TemplateError;

    const TY: &str = "com.salesforce.marketingcloud.ens.EngagementEvents.EmailOpen";

    #[test]
    fn placeholders_render_valid_tokens() {
        let t = SubjectTemplate::parse("ens.{route}").unwrap();
        assert_eq!(t.render("/ens/tenant-a", TY), "ens.ens.tenant-a");
        assert_eq!(t.render("/", TY), "ens._");
        assert_eq!(t.render("/a b/c.d/*/>", TY), "ens.a_b.c_d._._");
        let t = SubjectTemplate::parse("events.{type}.{route}").unwrap();
        assert_eq!(
            t.render("/hooks", TY),
            "events.EngagementEvents.EmailOpen.hooks"
        );
        assert_eq!(t.render("/hooks", "Other"), "events.Other.hooks");
        assert!(Nats::valid(&t.render("//x//", "a..b")));
        assert_eq!(
            SubjectTemplate::parse("fixed").unwrap().render("/x", TY),
            "fixed"
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(matches!(
            SubjectTemplate::parse("ens.{tenant}"),
            Err(TemplateError::Unknown { name, .. }) if name == "tenant"
        ));
        assert!(matches!(
            SubjectTemplate::parse("ens.{route"),
            Err(TemplateError::Unclosed { .. })
        ));
        for bad in [
            "ens..{route}",
            "ens.*",
            "ens.>",
            "a b.{route}",
            ".{route}",
            "",
        ] {
            assert!(
                matches!(
                    SubjectTemplate::parse(bad),
                    Err(TemplateError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }
}
