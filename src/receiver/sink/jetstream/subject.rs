//! The subject each event is published on: `--nats-subject`, a template with the placeholders
//! `{route}` and `{type}` (docs/receiver.md, "JetStream hand-off").
//!
//! `{route}` is the route's path with its `/`-separated segments as subject tokens
//! (`/ens/tenant-a` → `ens.tenant-a`); `{type}` is the event's category type, the CloudEvent type
//! without its `com.salesforce.marketingcloud.ens.` prefix (`EngagementEvents.EmailOpen`, two
//! tokens). Characters a subject token may not hold (whitespace, `.` within a path segment, the
//! wildcards `*` and `>`) become `_`, and an empty token becomes `_`, so every event has a valid
//! subject and a route maps to one subject prefix.

use std::fmt::Write as _;

use crate::receiver::event::TYPE_PREFIX;

/// A parsed `--nats-subject`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Route,
    Type,
}

/// Why a `--nats-subject` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A `{name}` that is not a placeholder.
    #[error(
        "--nats-subject {template:?}: unknown placeholder {{{name}}} (known: {{route}}, {{type}})"
    )]
    Unknown {
        /// The template as given.
        template: String,
        /// The placeholder's name.
        name: String,
    },
    /// A `{` without its `}`.
    #[error("--nats-subject {0:?}: a '{{' is not closed")]
    Unclosed(String),
    /// The literal parts do not make a valid subject (empty tokens, whitespace, wildcards).
    #[error(
        "--nats-subject {0:?}: not a valid NATS subject (dot-separated non-empty tokens, no whitespace, no * or >)"
    )]
    Invalid(String),
}

impl SubjectTemplate {
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
        // Placeholders always render valid tokens, so a sample shows whether the literals do.
        if !valid(&parsed.render("/r", "t")) {
            return Err(TemplateError::Invalid(template.to_owned()));
        }
        Ok(parsed)
    }

    /// The subject of an event of CloudEvent type `ty` that arrived on `route`.
    pub fn render(&self, route: &str, ty: &str) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Route => push_tokens(&mut out, route.trim_matches('/').split('/')),
                Part::Type => {
                    let short = ty
                        .strip_prefix(TYPE_PREFIX)
                        .and_then(|t| t.strip_prefix('.'))
                        .unwrap_or(ty);
                    push_tokens(&mut out, short.split('.'));
                }
            }
        }
        out
    }
}

/// Appends `tokens` joined by `.`, each made a valid token.
fn push_tokens<'a>(out: &mut String, tokens: impl Iterator<Item = &'a str>) {
    for (i, token) in tokens.enumerate() {
        if i > 0 {
            out.push('.');
        }
        if token.is_empty() {
            out.push('_');
        }
        for c in token.chars() {
            let bad = c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>');
            let _ = out.write_char(if bad { '_' } else { c });
        }
    }
}

/// Whether `subject` is a valid subject to publish on.
fn valid(subject: &str) -> bool {
    subject.split('.').all(|t| {
        !t.is_empty()
            && t != "*"
            && t != ">"
            && !t.chars().any(|c| c.is_whitespace() || c.is_control())
    }) && !subject.contains(['*', '>'])
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(valid(&t.render("//x//", "a..b")));
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
            Err(TemplateError::Unclosed(_))
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
                matches!(SubjectTemplate::parse(bad), Err(TemplateError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
