//! serde over the positioned tree: the raw types deserialize straight from [`MNode`], so the
//! path serde reports (through `serde_path_to_error`) finds the node and its position.

use super::yaml::{MKind, MNode};
use serde::de::value::{Error, MapDeserializer, SeqDeserializer};
use serde::de::{self, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

/// A deserializer over one node.
#[derive(Clone, Copy)]
pub struct De<'a>(pub &'a MNode);

impl<'de> IntoDeserializer<'de, Error> for De<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for De<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.0.kind {
            MKind::Null => v.visit_unit(),
            MKind::Bool(b) => v.visit_bool(*b),
            MKind::Int(i) => v.visit_i64(*i),
            MKind::Float(f) => v.visit_f64(*f),
            MKind::Str(s) => v.visit_borrowed_str(s),
            MKind::Seq(items) => {
                let mut d = SeqDeserializer::new(items.iter().map(De));
                let r = v.visit_seq(&mut d)?;
                d.end()?;
                Ok(r)
            }
            MKind::Map(entries) => {
                let mut d = MapDeserializer::new(entries.iter().map(|(k, n)| (k.as_str(), De(n))));
                let r = v.visit_map(&mut d)?;
                d.end()?;
                Ok(r)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0.kind {
            MKind::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match &self.0.kind {
            MKind::Str(s) => v.visit_enum(s.as_str().into_deserializer()),
            _ => Err(de::Error::invalid_type(unexpected(self.0), &v)),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

fn unexpected(n: &MNode) -> de::Unexpected<'_> {
    match &n.kind {
        MKind::Null => de::Unexpected::Unit,
        MKind::Bool(b) => de::Unexpected::Bool(*b),
        MKind::Int(i) => de::Unexpected::Signed(*i),
        MKind::Float(f) => de::Unexpected::Float(*f),
        MKind::Str(s) => de::Unexpected::Str(s),
        MKind::Seq(_) => de::Unexpected::Seq,
        MKind::Map(_) => de::Unexpected::Map,
    }
}
