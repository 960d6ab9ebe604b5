//! The keys each table of an experiment file accepts, read from the serde derives themselves
//! (the field list serde hands a deserializer for a struct), so that what documents the keys can
//! be checked against what the parser takes.

use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};

/// A deserializer that fails every request, noting the field list a struct asks for first.
struct FieldRecorder<'a> {
    fields: &'a mut &'static [&'static str],
}

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field list recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for FieldRecorder<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Stop> {
        *self.fields = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The keys a settings struct accepts (empty for a type that is not a struct).
pub fn struct_keys<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldRecorder { fields: &mut fields });
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        alpha: f64,
        #[serde(rename = "b")]
        beta: Option<u32>,
    }

    #[derive(serde::Deserialize)]
    #[serde(transparent)]
    #[allow(dead_code)]
    struct Wrapped(Inner);

    #[test]
    fn the_keys_are_the_serialized_field_names_through_transparent_wrappers() {
        assert_eq!(struct_keys::<Inner>(), ["alpha", "b"]);
        assert_eq!(struct_keys::<Wrapped>(), ["alpha", "b"]);
        assert!(struct_keys::<u32>().is_empty());
    }
}
