//! Canonical JSON of an event, the input of its CloudEvent id: object keys sorted bytewise (the
//! last of duplicate keys wins), no whitespace, strings and numbers exactly as serde_json writes
//! them. Independent of serde_json's map-ordering features.
//!
//! Two implementations of one definition: [`event_id`] over a [`serde_json::Value`] (the
//! reference) and [`Node`], a tree that borrows every string without escapes from the body, which
//! the receiver uses on its hot path (a `Value` allocates every key and string). Tests hold the
//! two to the same bytes.
//!
//! Pure: no I/O.

use std::fmt;

use serde::Serialize;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A JSON value borrowed from its source where possible. Objects are kept sorted by key, without
/// duplicates, so the tree is already in canonical order.
#[derive(Debug)]
pub enum Node<'a> {
    /// Fields sorted by key; a repeated key keeps its last value, as `serde_json::Map` does.
    Object(Vec<(Text<'a>, Node<'a>)>),
    /// Items in order.
    Array(Vec<Node<'a>>),
    /// A string.
    String(Text<'a>),
    /// A non-negative integer.
    U64(u64),
    /// A negative integer.
    I64(i64),
    /// Any other number.
    F64(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// A JSON string: borrowed when it had no escapes (its raw bytes are then exactly what serde_json
/// writes for it), decoded otherwise.
#[derive(Debug)]
pub enum Text<'a> {
    /// Unescaped in the source.
    Raw(&'a str),
    /// Decoded from a string with escapes.
    Decoded(String),
}

impl Text<'_> {
    /// The string's value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Raw(s) => s,
            Self::Decoded(s) => s,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            // No escapes in the source means no '"', '\\' or control character: serde_json
            // would write these bytes unchanged.
            Self::Raw(s) => {
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
            }
            Self::Decoded(s) => write_scalar(s.as_str(), out),
        }
    }
}

impl Node<'_> {
    /// Epoch milliseconds from an integer or a numeric string (ENS families differ,
    /// docs/ens-protocol.md §5.5.4).
    pub fn epoch_millis(&self) -> Option<i64> {
        match self {
            Self::U64(n) => i64::try_from(*n).ok(),
            Self::I64(n) => Some(*n),
            Self::String(s) => s.as_str().trim().parse().ok(),
            _ => None,
        }
    }
}

/// Writes the canonical form of an object's (sorted, unique) fields.
pub fn write_fields(fields: &[(Text<'_>, Node<'_>)], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        k.write(out);
        out.push(b':');
        write_node(v, out);
    }
    out.push(b'}');
}

fn write_node(node: &Node<'_>, out: &mut Vec<u8>) {
    match node {
        Node::Object(fields) => write_fields(fields, out),
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(item, out);
            }
            out.push(b']');
        }
        Node::String(s) => s.write(out),
        Node::U64(n) => write_scalar(n, out),
        Node::I64(n) => write_scalar(n, out),
        Node::F64(n) => write_scalar(n, out),
        Node::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Node::Null => out.extend_from_slice(b"null"),
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::Raw(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text::Decoded(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text::Decoded(s))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Node<'de>, E> {
                Ok(Node::Bool(b))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Node<'de>, E> {
                Ok(Node::U64(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Node<'de>, E> {
                Ok(if n >= 0 {
                    Node::U64(n as u64)
                } else {
                    Node::I64(n)
                })
            }
            fn visit_f64<E>(self, n: f64) -> Result<Node<'de>, E> {
                Ok(Node::F64(n))
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Node<'de>, E> {
                Ok(Node::String(Text::Raw(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Node<'de>, E> {
                Ok(Node::String(Text::Decoded(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Node<'de>, E> {
                Ok(Node::String(Text::Decoded(s)))
            }
            fn visit_unit<E>(self) -> Result<Node<'de>, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node<'de>, E> {
                Ok(Node::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
                let mut fields: Vec<(Text<'de>, Node<'de>)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(Node::Object(sorted_unique(fields)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Sorts fields by key (stable) and keeps the last of each repeated key.
fn sorted_unique<'a>(mut fields: Vec<(Text<'a>, Node<'a>)>) -> Vec<(Text<'a>, Node<'a>)> {
    fields.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    if !fields
        .windows(2)
        .any(|w| w[0].0.as_str() == w[1].0.as_str())
    {
        return fields;
    }
    let mut unique: Vec<(Text<'a>, Node<'a>)> = Vec::with_capacity(fields.len());
    for field in fields {
        match unique.last_mut() {
            Some(last) if last.0.as_str() == field.0.as_str() => *last = field,
            _ => unique.push(field),
        }
    }
    unique
}

/// Hex SHA-256 of the canonical form of `event` (the reference implementation).
pub fn event_id(event: &Value) -> String {
    let mut buf = Vec::with_capacity(512);
    write_value(event, &mut buf);
    hex_digest(&buf)
}

/// Lowercase hex SHA-256 of a canonical form: the id. Encoded in one go rather than a character
/// at a time as `hex::encode` does.
pub fn hex_digest(canonical: &[u8]) -> String {
    let mut out = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(canonical), &mut out).expect("64 hex digits for 32 bytes");
    std::str::from_utf8(&out).expect("hex is ASCII").to_owned()
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(k, out);
                out.push(b':');
                write_value(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing JSON into a Vec cannot fail for strings, numbers, booleans and null.
    let _ = serde_json::to_writer(&mut *out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(json: &str) -> (Vec<u8>, Vec<u8>) {
        let mut fast = Vec::new();
        write_node(&serde_json::from_str::<Node>(json).unwrap(), &mut fast);
        let mut reference = Vec::new();
        write_value(
            &serde_json::from_str::<Value>(json).unwrap(),
            &mut reference,
        );
        (fast, reference)
    }

    #[test]
    fn the_borrowed_tree_writes_what_the_reference_writes() {
        for json in [
            r#"{"b":1,"a":{"y":"\u0041","x":[1,2]}}"#,
            r#"{"k":"a\"b\\c\n\u0001\u007f\u00e9/\/","é":"é","\u00e9x":0}"#,
            r#"{"n":[0,-0,-1,1.0,1e3,1E-7,-2.50,18446744073709551615,18446744073709551616,-9223372036854775809,0.1,123456789012345678901234567890]}"#,
            r#"{"dup":1,"a":true,"dup":{"z":null,"z":[]},"b":false}"#,
            r#"{"\u0062":1,"a":2,"b":3}"#,
            r#"[{"x":{}},[],"",null]"#,
            "{ \"spaced\" : [ 1 , { \"b\" : 2 , \"a\" : 1 } ] }",
        ] {
            let (fast, reference) = both(json);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(reference).unwrap(),
                "{json}"
            );
        }
    }

    #[test]
    fn strings_borrow_only_without_escapes() {
        let node: Node = serde_json::from_str(r#"{"plain":"ab","esc":"a\nb"}"#).unwrap();
        let Node::Object(fields) = node else {
            panic!("object")
        };
        let kinds: Vec<(&str, bool)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), matches!(v, Node::String(Text::Raw(_)))))
            .collect();
        assert_eq!(kinds, [("esc", false), ("plain", true)]);
    }

    #[test]
    fn epoch_millis_from_integers_and_numeric_strings() {
        let millis = |json: &str| serde_json::from_str::<Node>(json).unwrap().epoch_millis();
        assert_eq!(millis("1600698608530"), Some(1600698608530));
        assert_eq!(millis("-5"), Some(-5));
        assert_eq!(millis(r#"" 1712000000000 ""#), Some(1712000000000));
        assert_eq!(millis("1.5"), None);
        assert_eq!(millis("18446744073709551615"), None);
        assert_eq!(millis(r#""soon""#), None);
    }
}
