//! The topic each event is produced to: `--kafka-topic`, a template with the placeholders
//! `{route}` and `{type}` (docs/receiver.md, "Kafka hand-off").
//!
//! `{route}` is the route's path with its `/`-separated segments joined by `.`
//! (`/ens/tenant-a` → `ens.tenant-a`); `{type}` is the event's category type, the CloudEvent type
//! without its `com.salesforce.marketingcloud.ens.` prefix (`EngagementEvents.EmailOpen`).
//! Characters a topic name may not hold (anything but ASCII letters, digits, `.`, `_` and `-`)
//! become `_`, and an empty segment becomes `_`, so every event has a valid topic. A rendered
//! name longer than Kafka's 249 characters is refused by the broker for that event only.

use crate::receiver::event::TYPE_PREFIX;

/// Kafka's longest topic name.
const MAX_LEN: usize = 249;

/// A parsed `--kafka-topic`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Route,
    Type,
}

/// Why a `--kafka-topic` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A `{name}` that is not a placeholder.
    #[error(
        "--kafka-topic {template:?}: unknown placeholder {{{name}}} (known: {{route}}, {{type}})"
    )]
    Unknown {
        /// The template as given.
        template: String,
        /// The placeholder's name.
        name: String,
    },
    /// A `{` without its `}`.
    #[error("--kafka-topic {0:?}: a '{{' is not closed")]
    Unclosed(String),
    /// The literal parts hold characters a topic may not, or the template is empty or too long.
    #[error(
        "--kafka-topic {0:?}: not a valid Kafka topic (ASCII letters, digits, '.', '_', '-'; at most 249; not . or ..)"
    )]
    Invalid(String),
}

impl TopicTemplate {
    /// Parses `template`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(template.to_owned()))?;
            parts.push(match &after[..close] {
                "route" => Part::Route,
                "type" => Part::Type,
                name => {
                    return Err(TemplateError::Unknown {
                        template: template.to_owned(),
                        name: name.to_owned(),
                    });
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        let parsed = Self { parts };
        // Placeholders always render valid characters, so a sample shows whether the literals do.
        let sample = parsed.render("/r", "t");
        if !sample.chars().all(allowed)
            || sample.len() > MAX_LEN
            || matches!(&*sample, "" | "." | "..")
        {
            return Err(TemplateError::Invalid(template.to_owned()));
        }
        Ok(parsed)
    }

    /// The topic of an event of CloudEvent type `ty` that arrived on `route`.
    pub fn render(&self, route: &str, ty: &str) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Route => push_segments(&mut out, route.trim_matches('/').split('/')),
                Part::Type => {
                    let short = ty
                        .strip_prefix(TYPE_PREFIX)
                        .and_then(|t| t.strip_prefix('.'))
                        .unwrap_or(ty);
                    push_segments(&mut out, std::iter::once(short));
                }
            }
        }
        out
    }
}

/// A character a topic name may hold.
fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Appends `segments` joined by `.`, each made of allowed characters.
fn push_segments<'a>(out: &mut String, segments: impl Iterator<Item = &'a str>) {
    for (i, segment) in segments.enumerate() {
        if i > 0 {
            out.push('.');
        }
        if segment.is_empty() {
            out.push('_');
        }
        out.extend(segment.chars().map(|c| if allowed(c) { c } else { '_' }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Err(TemplateError::Unclosed(_))
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
                matches!(TopicTemplate::parse(bad), Err(TemplateError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
