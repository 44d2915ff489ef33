//! The destination template of the broker hand-offs (`--nats-subject`, `--kafka-topic`): literal
//! text with the placeholders `{route}` and `{type}` (docs/receiver.md).
//!
//! `{route}` is the route's path with its `/`-separated segments joined by `.`
//! (`/ens/tenant-a` → `ens.tenant-a`); `{type}` is the event's category type, the CloudEvent type
//! without its `com.salesforce.marketingcloud.ens.` prefix (`EngagementEvents.EmailOpen`).
//! Characters the broker does not allow in a name part become `_`, and an empty part becomes
//! `_`, so every event has a valid destination. Which characters those are is the broker's
//! [`Naming`].

use std::marker::PhantomData;

use crate::receiver::event::TYPE_PREFIX;

/// How a broker spells a destination.
pub trait Naming {
    /// The flag the template comes from, for messages.
    const FLAG: &'static str;
    /// What a valid destination looks like, for messages.
    const RULE: &'static str;
    /// Whether a rendered part (a path segment, a type token) may hold `c`.
    fn allowed(c: char) -> bool;
    /// Whether `name` is a valid destination.
    fn valid(name: &str) -> bool;
}

/// A parsed destination template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template<N> {
    parts: Vec<Part>,
    naming: PhantomData<N>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Route,
    Type,
}

/// Why a template is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A `{name}` that is not a placeholder.
    #[error("{flag} {template:?}: unknown placeholder {{{name}}} (known: {{route}}, {{type}})")]
    Unknown {
        /// The flag.
        flag: &'static str,
        /// The template as given.
        template: String,
        /// The placeholder's name.
        name: String,
    },
    /// A `{` without its `}`.
    #[error("{flag} {template:?}: a '{{' is not closed")]
    Unclosed {
        /// The flag.
        flag: &'static str,
        /// The template as given.
        template: String,
    },
    /// The literal parts do not make a valid destination.
    #[error("{flag} {template:?}: not a valid {rule}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// The template as given.
        template: String,
        /// What a valid one looks like.
        rule: &'static str,
    },
}

impl<N: Naming> Template<N> {
    /// Parses `template`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| TemplateError::Unclosed {
                flag: N::FLAG,
                template: template.to_owned(),
            })?;
            parts.push(match &after[..close] {
                "route" => Part::Route,
                "type" => Part::Type,
                name => {
                    return Err(TemplateError::Unknown {
                        flag: N::FLAG,
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
        let parsed = Self {
            parts,
            naming: PhantomData,
        };
        // Placeholders always render allowed parts, so a sample shows whether the literals do.
        if !N::valid(&parsed.render("/r", "t")) {
            return Err(TemplateError::Invalid {
                flag: N::FLAG,
                template: template.to_owned(),
                rule: N::RULE,
            });
        }
        Ok(parsed)
    }

    /// The destination of an event of CloudEvent type `ty` that arrived on `route`.
    pub fn render(&self, route: &str, ty: &str) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Route => push_parts::<N>(&mut out, route.trim_matches('/').split('/')),
                Part::Type => {
                    let short = ty
                        .strip_prefix(TYPE_PREFIX)
                        .and_then(|t| t.strip_prefix('.'))
                        .unwrap_or(ty);
                    push_parts::<N>(&mut out, short.split('.'));
                }
            }
        }
        out
    }
}

/// Appends `parts` joined by `.`, each of allowed characters and never empty.
fn push_parts<'a, N: Naming>(out: &mut String, parts: impl Iterator<Item = &'a str>) {
    for (i, part) in parts.enumerate() {
        if i > 0 {
            out.push('.');
        }
        if part.is_empty() {
            out.push('_');
        }
        out.extend(part.chars().map(|c| if N::allowed(c) { c } else { '_' }));
    }
}
