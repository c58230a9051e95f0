//! Top-level JSON surgery without a full parse: what composition and the
//! response-JSON transform need.
//!
//! Key components: [`Entries`] (the members of a top-level object, each key
//! unescaped and each value a [`RawValue`] slice of the input — nested
//! values are validated by serde_json but never built into a tree),
//! [`Doc`] (a body that is an object, an array of values or something
//! else) and the writers that splice raw slices back into one output
//! buffer ([`write_key`], [`write_object`]).
//!
//! Performance notes: parsing a body validates every byte but allocates
//! only the entry list (and a key only when it contains escapes); writing
//! copies raw slices. Numbers, strings and nested values come out byte for
//! byte as the service sent them (no float reformatting, no precision
//! loss). `benches/compose.rs` compares this with building
//! `serde_json::Value` trees.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The members of a top-level JSON object, in document order.
#[derive(Debug, Default)]
pub struct Entries<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

/// A JSON document, split one level deep.
#[derive(Debug)]
pub enum Doc<'a> {
    /// `{...}`: its members.
    Object(Entries<'a>),
    /// `[...]`: its elements.
    Array(Vec<&'a RawValue>),
    /// A string, number, `true`, `false` or `null`.
    Scalar(&'a RawValue),
}

/// Parses `body` one level deep. `Err` when it is not valid JSON.
pub fn parse(body: &[u8]) -> Result<Doc<'_>, serde_json::Error> {
    let raw: &RawValue = serde_json::from_slice(body)?;
    split(raw)
}

/// Splits an already validated value one level deep.
pub fn split(raw: &RawValue) -> Result<Doc<'_>, serde_json::Error> {
    let s = raw.get();
    match s.as_bytes().first() {
        Some(b'{') => Ok(Doc::Object(serde_json::from_str::<Entries<'_>>(s)?)),
        Some(b'[') => Ok(Doc::Array(serde_json::from_str::<Vec<&RawValue>>(s)?)),
        _ => Ok(Doc::Scalar(raw)),
    }
}

/// Validates `body` as one JSON value and returns it without surrounding
/// whitespace.
pub fn validate(body: &[u8]) -> Result<&str, serde_json::Error> {
    let raw: &RawValue = serde_json::from_slice(body)?;
    Ok(raw.get())
}

impl<'a> Entries<'a> {
    /// The value of member `key` (the last one, when repeated).
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Keeps the members whose key is in `keep`.
    pub fn retain_keys(&mut self, keep: &[String]) {
        self.0.retain(|(k, _)| keep.iter().any(|f| f == k));
    }
}

/// Appends `"key":` with `key` escaped as a JSON string.
pub fn write_key(out: &mut Vec<u8>, key: &str) {
    write_str(out, key);
    out.push(b':');
}

/// Appends `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends an object made of `(key, raw JSON value)` pairs.
pub fn write_object<'a, I>(out: &mut Vec<u8>, entries: I)
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    out.push(b'{');
    let mut first = true;
    for (k, v) in entries {
        if !first {
            out.push(b',');
        }
        first = false;
        write_key(out, k);
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'}');
}

/// Removes earlier members whose key repeats later, keeping each key at its
/// first position with its last value.
pub fn dedup_last_wins<V: Copy>(entries: &mut Vec<(Cow<'_, str>, V)>) {
    if entries.len() < 2 {
        return;
    }
    if entries.len() <= 32 {
        let mut i = 0;
        while i < entries.len() {
            if let Some(j) = (i + 1..entries.len())
                .rev()
                .find(|&j| entries[j].0 == entries[i].0)
            {
                entries[i].1 = entries[j].1;
                entries.remove(j);
            } else {
                i += 1;
            }
        }
        return;
    }
    let mut seen: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(entries.len());
    let mut keep = vec![true; entries.len()];
    let mut last: Vec<usize> = (0..entries.len()).collect();
    for (i, (k, _)) in entries.iter().enumerate() {
        match seen.get(k.as_ref()) {
            Some(&first) => {
                last[first] = i;
                keep[i] = false;
            }
            None => {
                seen.insert(k.as_ref(), i);
            }
        }
    }
    let values: Vec<V> = last.iter().map(|&j| entries[j].1).collect();
    drop(seen);
    let mut i = 0;
    entries.retain(|_| {
        let k = keep[i];
        i += 1;
        k
    });
    // Positions of the kept entries in order.
    let mut kept = keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i);
    for e in entries.iter_mut() {
        if let Some(orig) = kept.next() {
            e.1 = values[orig];
        }
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(k) = m.next_key::<Key<'a>>()? {
                    let val: &'de RawValue = m.next_value()?;
                    v.push((k.0, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// An object key, borrowed from the input unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_objects_keeping_raw_values() {
        let body = br#" {"a": 1.50, "b": {"c": [1, 2]}, "d\n": "x"}
"#;
        let Doc::Object(e) = parse(body).unwrap() else {
            panic!("not an object")
        };
        assert_eq!(e.0.len(), 3);
        assert_eq!(e.0[0].0, "a");
        assert_eq!(e.0[0].1.get(), "1.50");
        assert_eq!(e.0[1].1.get(), r#"{"c": [1, 2]}"#);
        assert_eq!(e.0[2].0, "d\n");
        let mut out = Vec::new();
        write_object(&mut out, e.0.iter().map(|(k, v)| (k.as_ref(), v.get())));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"a":1.50,"b":{"c": [1, 2]},"d\n":"x"}"#
        );
    }

    #[test]
    fn invalid_json_is_refused() {
        assert!(parse(b"{\"a\":").is_err());
        assert!(parse(b"{} {}").is_err());
        assert!(parse(b"").is_err());
        assert_eq!(validate(b" [1,2] \n").unwrap(), "[1,2]");
    }

    #[test]
    fn dedup_keeps_first_position_last_value() {
        let mut v: Vec<(Cow<'_, str>, u32)> = vec![
            ("a".into(), 1),
            ("b".into(), 2),
            ("a".into(), 3),
            ("c".into(), 4),
        ];
        dedup_last_wins(&mut v);
        let got: Vec<(&str, u32)> = v.iter().map(|(k, x)| (k.as_ref(), *x)).collect();
        assert_eq!(got, [("a", 3), ("b", 2), ("c", 4)]);
        let mut big: Vec<(Cow<'_, str>, u32)> = (0..40)
            .map(|i| (Cow::Owned(format!("k{}", i % 20)), i))
            .collect();
        dedup_last_wins(&mut big);
        assert_eq!(big.len(), 20);
        assert_eq!(big[0].0, "k0");
        assert_eq!(big[0].1, 20);
        assert_eq!(big[19].1, 39);
    }
}
